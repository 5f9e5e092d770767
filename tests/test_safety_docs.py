"""docs/safety.md and the code agree: the rule table is safety/rules.py's, and every test the
hazard table names exists (or the row says `planned: <issue>`)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from safety.rules import RULES, markdown_table

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "safety.md"
TEST_DIRS = ("tests", "hil_tests")
REF = re.compile(r"`((?:tests|hil_tests)/[\w/]+\.py)::(\w+)`")
PLANNED = "planned:"
# The hazards the issue names: each must have its own row.
ISSUE_HAZARDS = (
    "over-dose",
    "overheating of a protected structure",
    "charring at the tip",
    "uncontrolled emission",
    "loss of temperature monitoring",
    "host crash or hang",
    "link loss",
    "wrong device",
    "operator error",
)


def _section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def hazard_rows() -> list[list[str]]:
    rows = []
    for line in _section("Hazards").splitlines():
        if line.startswith("| ") and not line.startswith("| hazard ") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def defined_tests(path: Path) -> set[str]:
    """Top-level test functions and test classes of one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names.add(node.name)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id.startswith("Test") for t in node.targets):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))  # TestX = Machine.TestCase
    return names




def test_the_rule_table_is_generated_from_safety_rules() -> None:
    assert markdown_table() in DOC.read_text(encoding="utf-8"), "regenerate the rule table from safety.rules.markdown_table()"
    for name in RULES:
        assert f"`{name}`" in DOC.read_text(encoding="utf-8")


def test_the_hazard_table_has_every_hazard_of_the_issue() -> None:
    hazards = [row[0].lower() for row in hazard_rows()]
    for hazard in ISSUE_HAZARDS:
        assert any(h.startswith(hazard) for h in hazards), f"no row for {hazard!r}"


@pytest.mark.parametrize("row", hazard_rows(), ids=lambda row: row[0])
def test_every_hazard_row_names_tests_that_exist(row: list[str]) -> None:
    assert len(row) == 4, f"hazard | cause | mitigation | proved by: {row}"
    proved_by = row[3]
    refs = REF.findall(proved_by)
    assert refs or PLANNED in proved_by, f"{row[0]}: names no test and is not marked planned"
    for rel, name in refs:
        path = ROOT / rel
        assert path.exists(), f"{row[0]}: {rel} does not exist"
        assert name in defined_tests(path), f"{row[0]}: {rel}::{name} does not exist"


def test_every_named_test_lives_in_a_test_directory() -> None:
    for row in hazard_rows():
        for rel, _ in REF.findall(row[3]):
            assert rel.split("/", 1)[0] in TEST_DIRS

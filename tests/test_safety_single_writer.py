"""Nothing but safety/writer.py writes the LS-4's CONTROL, COMMAND, WATCHDOG_TIMEOUT, HEARTBEAT,
POWER_SETPOINT, CH_ENABLE or POWER_LIMIT (holding 0-15).

Static: every .py under controller/, safety/ and protocol/ (the host; sim/ is the device side and
tests/ are tests) is parsed, and every call of write_register(s) outside safety/writer.py must be
provably harmless from its own text: a write to the FT-8 (its unit says so), or to the LS-4's
RAMP_RATE (16-19, site configuration: a slew limit on rises, which never lets more through than
the writer allowed). A write whose address is computed is refused, so the proof cannot be dodged
with a variable. The bus owner's own `write_registers`, which forwards its caller's address
unchanged, is a transport, not a writer: its callers are what is checked. `cycle_write_words` and
the simulator's `write_holding` may not be called from the host at all outside the writer.

Dynamic: a session run through the in-process link records every write that reaches the LS-4 and
whether safety.writer was on the stack; the state-machine test checks the same on every step.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from direct_link import DirectLink, drive
from protocol import ls4 as LS4
from test_safety_writer import Host

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("controller", "safety", "protocol")
WRITER = "safety/writer.py"
WRITE_CALLS = frozenset({"write_registers", "write_register"})
FORBIDDEN_CALLS = frozenset({"cycle_write_words", "write_holding"})
UNIT_KEYWORDS = ("unit", "device_id", "slave")
ALLOWED_LS4_ADDRESSES = range(LS4.REGISTER_MAP["RAMP_RATE"].address, LS4.REGISTER_MAP["RAMP_RATE"].end)  # 16-19
GUARDED_LS4_ADDRESSES = range(0, LS4.REGISTER_MAP["POWER_LIMIT"].end)  # 0-15: the writer's alone


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    call: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.call}: {self.why}"


def _call_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    if isinstance(node.func, ast.Name):
        return node.func.id
    return None


def _arg(node: ast.Call, keyword_names: tuple[str, ...], position: int | None) -> ast.expr | None:
    for kw in node.keywords:
        if kw.arg in keyword_names:
            return kw.value
    if position is not None and len(node.args) > position:
        return node.args[position]
    return None


def _is_ft8_unit(expr: ast.expr | None) -> bool:
    if expr is None:
        return False
    if isinstance(expr, ast.Constant):
        return expr.value == 2
    return "ft8" in ast.unparse(expr).lower()


def _address_allowed(expr: ast.expr | None, values: ast.expr | None) -> bool:
    if isinstance(expr, ast.Constant) and isinstance(expr.value, int):
        count = len(values.elts) if isinstance(values, (ast.List, ast.Tuple)) else 1
        return all(a in ALLOWED_LS4_ADDRESSES for a in range(expr.value, expr.value + count))
    return expr is not None and "RAMP_RATE" in ast.unparse(expr)


class _Scanner(ast.NodeVisitor):
    def __init__(self, path: str) -> None:
        self.path = path
        self.violations: list[Violation] = []
        self._functions: list[ast.FunctionDef | ast.AsyncFunctionDef] = []

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._functions.append(node)
        self.generic_visit(node)
        self._functions.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def _is_forwarder(self, address: ast.expr | None) -> bool:
        """Inside `def write_register(s)(..., address, ...)`, passing its own address parameter on."""
        if not self._functions or not isinstance(address, ast.Name):
            return False
        fn = self._functions[-1]
        params = {a.arg for a in fn.args.args + fn.args.kwonlyargs + fn.args.posonlyargs}
        return fn.name in WRITE_CALLS and address.id in params

    def visit_Call(self, node: ast.Call) -> None:
        name = _call_name(node)
        text = ast.unparse(node)[:80]
        if name in FORBIDDEN_CALLS:
            self.violations.append(Violation(self.path, node.lineno, text, f"{name} is the writer's alone"))
        elif name in WRITE_CALLS:
            address = _arg(node, ("address",), 0)
            values = _arg(node, ("values", "value"), 1)
            unit = _arg(node, UNIT_KEYWORDS, None)
            if not (self._is_forwarder(address) or _is_ft8_unit(unit) or _address_allowed(address, values)):
                self.violations.append(
                    Violation(self.path, node.lineno, text, "writes the LS-4 outside safety/writer.py (only RAMP_RATE 16-19 or FT-8 writes may)")
                )
        self.generic_visit(node)


def scan_source(source: str, path: str) -> list[Violation]:
    if path == WRITER:
        return []
    scanner = _Scanner(path)
    scanner.visit(ast.parse(source, filename=path))
    return scanner.violations


def scan_tree(root: Path = ROOT) -> tuple[list[Violation], int]:
    violations: list[Violation] = []
    files = 0
    for top in SCANNED:
        for file in sorted((root / top).rglob("*.py")):
            rel = file.relative_to(root).as_posix()
            files += 1
            violations += scan_source(file.read_text(encoding="utf-8"), rel)
    return violations, files


# --- static ----------------------------------------------------------------------------------------


def test_nothing_but_the_writer_writes_the_ls4_control_registers() -> None:
    violations, files = scan_tree()
    assert files >= 10, "the scan found the host's sources"
    assert violations == [], "\n".join(str(v) for v in violations)


def test_the_writer_exists_and_makes_these_writes() -> None:
    source = (ROOT / WRITER).read_text()
    assert "write_registers" in source and "cycle_write_words" in source


@pytest.mark.parametrize(
    "source",
    [
        "async def f(link):\n    await link.write_registers(unit=1, address=4, values=[100])",
        "async def f(link):\n    await link.write_registers(unit=1, address=0, values=[3])",
        "async def f(link):\n    await link.write_registers(unit=1, address=1, values=[1])",
        "async def f(link):\n    await link.write_registers(unit=1, address=15, values=[0, 5000])",
        "async def f(link, a):\n    await link.write_registers(unit=1, address=a, values=[0])",
        "async def f(link):\n    await link.write_registers(unit=ls4.UNIT_ID, address=ls4.CYCLE_WRITE_ADDRESS, values=w)",
        "async def f(c):\n    await c.write_register(8, 1, device_id=1)",
        "def f():\n    return ls4.cycle_write_words(1, [0] * 4, [False] * 4)",
        "def f(world):\n    world.ls4.write_holding(0, [3])",
        "async def helper(link, address):\n    await link.write_registers(unit=1, address=address, values=[0])",
    ],
)
def test_the_scanner_flags_ls4_writes(source: str) -> None:
    assert scan_source(source, "controller/daemon.py"), source


@pytest.mark.parametrize(
    "source",
    [
        "async def f(link):\n    await link.write_registers(unit=2, address=0, values=[50])",
        "async def f(link):\n    await link.write_registers(unit=ft8.UNIT_ID, address=0, values=[50])",
        "async def f(link, cfg):\n    await link.write_registers(unit=cfg.ft8.unit_id, address=0, values=[50])",
        "async def f(link):\n    await link.write_registers(unit=1, address=16, values=[5000, 5000, 5000, 5000])",
        "async def f(link):\n    await link.write_registers(unit=1, address=REG['RAMP_RATE'].address, values=r)",
        "async def write_registers(self, *, unit, address, values):\n    await self._submit(lambda c: c.write_registers(address, values, device_id=unit))",
    ],
)
def test_the_scanner_allows_ft8_ramp_rate_and_the_transport(source: str) -> None:
    assert scan_source(source, "controller/daemon.py") == [], source


def test_the_scanner_ignores_the_writer_itself() -> None:
    assert scan_source("async def f(l):\n    await l.write_registers(unit=1, address=0, values=[3])", WRITER) == []


# --- dynamic ----------------------------------------------------------------------------------------


def guarded_writes_not_from_the_writer(link: DirectLink) -> list[str]:
    return [
        f"unit {w.unit} address {w.address} values {list(w.values)}"
        for w in link.writes
        if w.unit == LS4.UNIT_ID
        and any(a in GUARDED_LS4_ADDRESSES for a in range(w.address, w.address + len(w.values)))
        and not w.from_writer
    ]


def test_a_whole_session_writes_the_ls4_only_through_the_writer() -> None:
    h = Host()
    h.start()
    for _ in range(10):
        h.cycle((4000, 3000, 0, 5000))
    h.world.bench(["fibre", "1", "break"])
    for _ in range(5):
        h.cycle((4000, 3000, 0, 5000))
    assert h.sup.latched is not None
    h.world.bench(["fibre", "1", "connect"])
    drive(h.writer.fault_reset())
    h.cycle()
    drive(h.writer.release_control())
    guarded = [w for w in h.link.writes if w.unit == LS4.UNIT_ID and w.address in GUARDED_LS4_ADDRESSES]
    assert len(guarded) > 20
    assert guarded_writes_not_from_the_writer(h.link) == []


def test_the_recorder_sees_a_write_from_elsewhere() -> None:
    h = Host()
    drive(h.link.write_registers(unit=LS4.UNIT_ID, address=4, values=[100]))
    assert guarded_writes_not_from_the_writer(h.link) == ["unit 1 address 4 values [100]"]

"""laserctl report on a real journal file (written with controller.journal): the exports hold what
the journal holds, errors are one line with exit 2 (3 when laserd does not answer), and the
offline path reads the journal without changing it. The full process stack and the browser are
in hil_tests/test_report_hil.py."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from controller import cli, report_data
from controller.config import load_config
from controller.journal import Journal, Sample
from controller.plan import Plan, load_plan
from controller.session_states import State
from sim.tissue.render import png_bytes

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
N_SAMPLES = 40
TIME_SCALE = 2.0

PLAN_TEXT = """# report test plan <b>not html</b>
[session]
patient_id = "RPT-<1>"
operator = "tester"
max_session_energy_j = 1000.0
max_duration_s = 1800
tip_temp_cap_c = 95.0
illuminations = 2
endpoint = "all_fibres_at_budget"

[[fibres]]
channel = 0
mode = "FIXED_POWER"
power_w = 3.0
energy_budget_j = 30.0
label = "applicator A"

[[fibres]]
channel = 1
mode = "FIXED_POWER"
power_w = 2.0
energy_budget_j = 20.0

[[probes]]
channel = 0
role = "tip"
fibre = 0

[[probes]]
channel = 1
role = "tip"
fibre = 1

[[probes]]
channel = 4
role = "margin"

[[probes]]
channel = 5
role = "protected"
max_temp_c = 42.0
max_cem43_min = 5.0
label = "bile duct"
"""


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def plan() -> Plan:
    return load_plan(PLAN_TEXT, limits=load_config(REPO / "examples" / "laserd.toml").limits)


def _sample(i: int) -> Sample:
    e0, e1 = min(60.0, 1.537 * i * TIME_SCALE), min(40.0, 1.0123 * i * TIME_SCALE)
    return Sample(
        illumination=0 if i < N_SAMPLES // 2 else 1,
        setpoint_mw=[3000, 2000, 0, 0],
        output_mw=[2990 + i % 3, 2004, 0, 0],
        energy_j=[e0, e1, 0.0, 0.0],
        temperature_c=[37.0 + i, 37.0 + 0.8 * i, 36.9, None, 37.0 + 0.1 * i, 37.0 + 0.05 * i, None, None],
        cem43_min=[0.5 * i * i, 0.3 * i * i, None, None, 0.02 * i, 0.001 * i, None, None],
        device_time_ms=10_000 + 500 * i,
    )


@pytest.fixture
def journal_path(tmp_path: Path, plan: Plan) -> Path:
    """Session 1: a whole treatment (context, pause, pull-back, a soft limit, a trip-free end) at time
    scale 2; session 2: aborted at once, by a laserd that journaled no context."""
    clock = Clock()
    path = tmp_path / "journal.sqlite"
    with Journal(path, wall=clock) as j:
        j.record_event("daemon_started", "laserd running, control period 100 ms, time scale 2")
        sid = j.create_session(plan, energy_baseline_j=[100.0, 50.0, 0.0, 0.0])
        j.record_event(
            report_data.CONTEXT_KIND,
            "laserhost 0.1.0; LS-4 firmware 2.1 map 1 unit 1; FT-8 firmware 1.3 map 1 unit 2",
            session_id=sid,
            details={
                "software": {"package": "laserhost", "version": "0.1.0", "git_commit": "0123456789abcdef", "git_dirty": False},
                "devices": {
                    "ls4": {"vendor": "OpenAblation", "product": "LS-4", "revision": "2.1", "firmware": "2.1", "firmware_version": 513, "map_version": 1, "unit": 1},
                    "ft8": {"vendor": "OpenAblation", "product": "FT-8", "revision": "1.3", "firmware": "1.3", "firmware_version": 259, "map_version": 1, "unit": 2},
                },
                "time_scale": TIME_SCALE,
                "control_period_ms": 100,
                "limits": {"tip_temp_cap_c": 95.0},
            },
        )
        for state, reason in ((State.ARMED, "operator armed"), (State.EMITTING, "footswitch pressed")):
            clock.t += 0.5
            j.set_state(sid, state, reason)
        for i in range(N_SAMPLES):
            clock.t += 1.0 / TIME_SCALE
            j.record_sample(sid, _sample(i))
            if i == 5:
                j.set_state(sid, State.PAUSED, "footswitch released")
                j.set_state(sid, State.EMITTING, "footswitch pressed again")
            if i == 12:
                j.record_event("safety_soft", "protected probe 5 near its limit", session_id=sid, details={"rule": "protected_near", "channel": 5})
            if i == N_SAMPLES // 2 - 1:
                j.set_state(sid, State.PULLBACK, "illumination 1 of 2 done")
                j.set_state(sid, State.ARMED, "operator confirmed pull-back")
                j.set_state(sid, State.EMITTING, "footswitch pressed")
        clock.t += 0.5
        j.set_state(sid, State.COMPLETE, "endpoint reached")
        j.record_event("daemon_started", "laserd running, control period 100 ms, time scale 1")
        sid2 = j.create_session(plan)
        clock.t += 1.0
        j.set_state(sid2, State.ABORTED, "operator stop")
    return path


def _report(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["report", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_offline_report_exports_match_the_journal(journal_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = hashlib.sha256(journal_path.read_bytes()).hexdigest()
    out = tmp_path / "report"
    code, stdout, _ = _report(capsys, "1", "--journal", str(journal_path), "--out", str(out))
    assert code == 0, stdout
    assert "report.html" in stdout
    assert hashlib.sha256(journal_path.read_bytes()).hexdigest() == before  # read-only: not a byte changed
    for name in ("report.html", "session.json", "cycles.csv", "power_energy.png", "temperatures.png", "cem43.png", "timeline.png"):
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    with Journal(journal_path, read_only=True) as j:
        samples = j.samples(1)
        detail = j.session(1)
    rows = _rows(out / "cycles.csv")
    assert len(rows) == len(samples) == N_SAMPLES
    for row, rec in zip(rows, samples, strict=True):
        s = rec.sample
        for c in range(4):
            assert float(row[f"ch{c}_energy_j"]) == s.energy_j[c]
            assert float(row[f"ch{c}_setpoint_w"]) == pytest.approx(s.setpoint_mw[c] / 1000, abs=1e-9)
            assert float(row[f"ch{c}_output_w"]) == pytest.approx(s.output_mw[c] / 1000, abs=1e-9)
        for p in range(8):
            assert row[f"probe{p}_temp_c"] == ("" if s.temperature_c[p] is None else repr(s.temperature_c[p]))
        assert float(row["t_wall_unix"]) == rec.t_wall
        # treatment time: wall time since the plan was loaded x the time scale laserd ran at
        assert float(row["t_s"]) == pytest.approx((rec.t_wall - detail.session.created_wall) * TIME_SCALE, abs=1e-3)
    assert {r["state"] for r in rows} <= {"EMITTING", "PAUSED", "PULLBACK", "ARMED"}
    assert rows[-1]["illumination"] == "1"

    doc = json.loads((out / "session.json").read_text())
    summary = doc["summary"]
    assert summary["delivered_energy_j"] == list(detail.session.delivered_energy_j)
    assert summary["delivered_energy_total_j"] == pytest.approx(sum(detail.session.delivered_energy_j))
    assert summary["delivered_energy_j"][:2] == [60.0, 40.0]  # the largest figure the samples carried
    assert summary["planned_energy_total_j"] == (30.0 + 20.0) * 2
    assert [f["planned_j"] for f in summary["fibres"]] == [60.0, 40.0]
    assert (summary["pauses"], summary["pullbacks"], summary["illuminations_reached"]) == (1, 1, 2)
    assert len(summary["soft_limits"]) == 1 and summary["safety_trips"] == []
    assert summary["samples"] == N_SAMPLES and summary["events"] == len(detail.events)
    assert [e["id"] for e in doc["events"]] == [e.id for e in detail.events]
    assert doc["plan"]["text"] == PLAN_TEXT and doc["plan"]["sha256_matches_text"] is True
    assert doc["session"]["state"] == "COMPLETE" and doc["session"]["patient_id"] == "RPT-<1>"
    assert doc["versions"]["session_software"]["git_commit"] == "0123456789abcdef"
    assert doc["versions"]["devices"]["ls4"]["firmware"] == "2.1"
    assert doc["versions"]["report_software"]["package"] == "laserhost"
    protected = next(p for p in summary["probes"] if p["channel"] == 5)
    assert protected["max_temp_c"] == pytest.approx(37.0 + 0.05 * (N_SAMPLES - 1))
    assert protected["temp_limit_c"] == 42.0 and protected["cem43_limit_min"] == 5.0
    for name, digest in doc["files_sha256"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest

    page = (out / "report.html").read_text()
    assert "RPT-&lt;1&gt;" in page and "RPT-<1>" not in page  # journal text is escaped
    assert "&lt;b&gt;not html&lt;/b&gt;" in page
    assert "No simulator zone picture (real hardware" in page
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing from the network
    assert re.search(r"<link\b", page) is None
    for key in ("complete_tumour_ablation", "local_tumour_progression", "local_or_distant_recurrence", "overall_survival", "disease_free_survival"):
        assert f'name="efficacy.{key}"' in page
    for key in ("mortality", "bleeding", "infection", "damage_to_surrounding_tissue"):
        assert f'name="safety.{key}"' in page
    assert "IPG788" in page
    audit = page[page.index('<form id="nice-audit"') : page.index("</form>")]
    assert re.findall(r'value="([^"]*)"', audit) == [""] * len(re.findall(r'value="', audit))  # left blank for the clinician
    assert "<option selected" not in audit


def test_session_without_context_says_what_it_knows(journal_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r2"
    code, _, err = _report(capsys, "2", "--journal", str(journal_path), "--out", str(out))
    assert code == 0, err
    doc = json.loads((out / "session.json").read_text())
    assert doc["versions"]["session_software"] is None
    assert "daemon's start-up events" in doc["versions"]["source"]
    assert doc["time"]["time_scale"] == 1.0  # from the daemon start just before session 2
    assert doc["summary"]["samples"] == 0 and doc["session"]["state"] == "ABORTED"
    assert set(doc["files_sha256"]) == {"cycles.csv", "power_energy.png", "temperatures.png", "cem43.png", "timeline.png"}
    assert "No samples were recorded" in (out / "report.html").read_text()


def test_zone_picture_from_a_file(journal_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    zone = tmp_path / "zone-in.png"
    zone.write_bytes(png_bytes(np.full((30, 40, 3), 200, dtype=np.uint8)))
    out = tmp_path / "r"
    code, _, err = _report(capsys, "1", "--journal", str(journal_path), "--out", str(out), "--zone-png", str(zone))
    assert code == 0, err
    assert (out / "zone.png").read_bytes() == zone.read_bytes()
    page = (out / "report.html").read_text()
    assert '<img src="zone.png"' in page and "No simulator zone picture" not in page
    assert json.loads((out / "session.json").read_text())["zone_picture"]["source"] == "file"
    # the same DIR again without a picture: the old one goes, not left to be mistaken for this report's
    code, _, err = _report(capsys, "1", "--journal", str(journal_path), "--out", str(out))
    assert code == 0 and not (out / "zone.png").exists()


def test_pages_put_together_equal_one_read(journal_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Journal(journal_path, read_only=True) as j:
        def fetch(sid: int, part: str, offset: int) -> dict:
            return report_data.read(j, sid, part, offset)

        whole = report_data.read_all(fetch, 1)
        monkeypatch.setattr(report_data, "SAMPLES_PAGE", 7)
        monkeypatch.setattr(report_data, "EVENTS_PAGE", 3)
        paged = report_data.read_all(fetch, 1)
    assert paged == whole
    assert len(whole["samples"]) == N_SAMPLES and whole["samples_total"] == N_SAMPLES


@pytest.mark.parametrize(
    ("setup", "args", "expect"),
    [
        ("journal", ["7"], "no session 7 in the journal (it has sessions 1 to 2)"),
        ("empty", ["1"], "has no sessions yet"),
        ("missing", ["1"], "no journal there"),
        ("garbage", ["1"], "journal:"),
    ],
)
def test_bad_session_or_journal_is_one_line_and_exit_2(journal_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, args: list[str], expect: str) -> None:
    path = {"journal": journal_path, "empty": tmp_path / "empty.sqlite", "missing": tmp_path / "nope.sqlite", "garbage": tmp_path / "garbage.sqlite"}[setup]
    if setup == "empty":
        Journal(path).close()
    if setup == "garbage":
        path.write_bytes(b"not a database at all" * 100)
    out = tmp_path / "out"
    code, _, err = _report(capsys, *args, "--journal", str(path), "--out", str(out))
    assert code == 2
    line = _one_line(err)
    assert line.startswith("laserctl: ") and expect in line
    assert not out.exists()  # the DIR made for it is not left behind
    if setup == "missing":
        assert not path.exists()  # an audit never creates a journal


def test_unwritable_dir_is_one_line_and_exit_2(journal_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for out, expect in ((a_file, "it is a file, not a directory"), (a_file / "sub", "Not a directory")):
        code, _, err = _report(capsys, "1", "--journal", str(journal_path), "--out", str(out))
        assert code == 2
        line = _one_line(err)
        assert line.startswith(f"laserctl: cannot write the report to {out}") and expect in line


def test_no_source_no_daemon_bad_zone(journal_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LASERD_SOCKET", raising=False)
    out = str(tmp_path / "out")
    code, _, err = _report(capsys, "1", "--out", out)
    assert code == 2 and "--journal PATH" in _one_line(err)
    code, _, err = _report(capsys, "1", "--out", out, "--journal", str(journal_path), "--zone-png", str(journal_path))
    assert code == 2 and "not a PNG file" in _one_line(err)
    code, _, err = _report(capsys, "1", "--out", out, "--journal", str(journal_path), "--sim-bench", str(tmp_path / "no-bench.sock"))
    assert code == 2 and "no zone picture from the simulator" in _one_line(err)
    # the real command, through its entry point: laserd not running is exit 3 with the offline hint
    result = subprocess.run(
        [str(BIN / "laserctl"), "--socket", str(tmp_path / "laserd.sock"), "report", "1", "--out", out],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 3
    assert "not running" in _one_line(result.stderr) and "--journal PATH" in result.stderr

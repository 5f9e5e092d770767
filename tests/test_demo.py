"""`make demo` (controller/demo.py): its plan fits the scenario and the site limits, and the whole
demo, run as `make demo` runs it, ends with a report.

The end-to-end test runs the real thing (mosquitto when installed, laser-sim with the 4-fibre
scenario, laserd, laserctl monitor and report): about 70-90 s of wall time at the demo's time scale.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from controller import demo
from controller.config import load_config
from controller.launcher import SimProcess, write_config
from controller.plan import FibreMode, ProbeRole, load_plan

REPO = Path(__file__).resolve().parents[1]
DEMO_WALL_LIMIT_S = 120.0  # the issue: the demo itself, start to report, in under 2 minutes


def test_the_demo_plan_is_the_scenarios_placement(tmp_path: Path) -> None:
    patient = demo.scenario()
    sim = SimProcess(transport="tcp", tmp=tmp_path)
    sim.where = "127.0.0.1:5020"  # write_config only reads the address
    limits = load_config(write_config(tmp_path, sim)).limits
    plan = load_plan(demo.PLAN, limits=limits)  # the site limits the demo runs laserd with
    assert plan.illuminations == patient.illuminations == 4 and patient.pullback_mm > 0.0
    assert sorted(f.channel for f in plan.fibres) == sorted(f.channel for f in patient.fibres)
    assert {f.mode for f in plan.fibres} == {FibreMode.FIXED_POWER}
    roles = {p.channel: p.role for p in patient.probes}
    assert {p.channel: str(p.role) for p in plan.probes} == roles  # every scenario probe, in its role
    for p in plan.probes_with_role(ProbeRole.TIP):
        assert p.fibre == p.channel  # tip probe N guards fibre N
    names = {p.channel: p.name for p in patient.probes}
    assert all(p.label == names[p.channel] for p in plan.probes_with_role(ProbeRole.MARGIN))
    # budgets shortened for the demo, and the output says so
    assert all(f.energy_budget_j <= 200.0 for f in plan.fibres)
    assert "SHORTENED FOR THE DEMO" in demo.PLAN.read_text()
    assert tomllib.loads(demo.PLAN.read_text())["session"]["illuminations"] == 4


def test_without_mosquitto_the_demo_says_so_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    monkeypatch.setattr(demo.os, "access", lambda path, mode: False)
    why = demo.Broker(tmp_path).start()
    assert why is not None and "\n" not in why and "mosquitto" in why


# Trips a loaded machine causes at an accelerated time scale (the safety bounds are in device time;
# a scheduling stall of tens of ms of wall time is hundreds of device ms): not the demo's fault.
TIMING_TRIPS = ("control cycle started", "link lost", "SAMPLE_COUNTER unchanged", "WATCHDOG_EXPIRED")


def test_make_demo_ends_with_a_report(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.demo", "--out", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the demo stops what it started
        try:
            proc.communicate(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # and whatever would not stop
        raise
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    text = done.stdout
    lines = text.strip().splitlines()
    assert lines, done.stderr[-2000:]
    # the acceptance: it ends with a report, whatever became of the session
    report = out / "report" / "report.html"
    assert lines[-1] == f"treatment report: {report}", f"demo exited {done.returncode}:\n{text[-4000:]}\n{done.stderr[-2000:]}"
    assert report.is_file() and (out / "report" / "zone.png").is_file() and (out / "journal.sqlite").is_file()
    assert "SHORTENED FOR THE DEMO" in lines[1]
    ended = next(line for line in lines if line.startswith("== [") and " session 1: " in line)
    if "COMPLETE" not in ended and any(t in ended for t in TIMING_TRIPS):
        pytest.xfail(f"the machine was too loaded for the demo's time scale: {ended}")
    assert done.returncode == 0 and "session 1: COMPLETE" in ended, f"{ended}\n{text[-4000:]}"
    assert text.count("operator: laserctl pullback") == demo.scenario().illuminations - 1
    wall = float(next(line for line in lines if "] done: " in line).split("done: ")[1].split(" s")[0])
    assert wall < DEMO_WALL_LIMIT_S

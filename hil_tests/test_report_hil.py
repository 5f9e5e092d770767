"""laserctl report on a session that really happened: laser-sim (with a tissue scenario) and laserd
as processes over Modbus TCP, the footswitch pressed, released and pressed on the bench, a
pull-back confirmed. Then `laserctl --socket S report` with the simulator's zone picture, opened
in headless Chromium: every picture must load, and a screenshot is taken. The exports are held
to the journal the daemon wrote, and an offline report from that journal must say the same."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.journal import Journal
from controller.launcher import DaemonProcess, SimProcess, wait_until, write_config

BIN = Path(sys.executable).parent
POWER_W = 3.0
BUDGET_J = 9.0  # per fibre and illumination: 3 s of device time at 3 W
CHROMIUM_TIMEOUT_S = 90

SCENARIO = """
name = "report_hil"
description = "two fibres 8 mm apart in a 40 mm cube: small enough to run beside the daemon on one core"

[grid]
size_mm = [40, 40, 40]
spacing_mm = 1.0

[tumour]
center_mm = [0, 0, 0]
radius_mm = 6
margin_mm = 3

[[fibres]]
channel = 0
tip_mm = [-4, 0, -1]
direction = [0, 0, 1]

[[fibres]]
channel = 1
tip_mm = [4, 0, -1]
direction = [0, 0, 1]

[[probes]]
channel = 0
position_mm = [-4, 2, -1]
role = "tip"
name = "tip 0"

[[probes]]
channel = 1
position_mm = [4, 2, -1]
role = "tip"
name = "tip 1"

[[probes]]
channel = 2
position_mm = [9, 0, 0]
role = "margin"
name = "margin"

[[probes]]
channel = 3
position_mm = [0, 15, 0]
role = "protected"
name = "duct"
"""

PLAN = f"""
[session]
patient_id = "HIL-REPORT"
operator = "pytest"
max_session_energy_j = {4 * BUDGET_J + 1}
max_duration_s = 1800
tip_temp_cap_c = 95.0
illuminations = 2
endpoint = "all_fibres_at_budget"

[[fibres]]
channel = 0
mode = "FIXED_POWER"
power_w = {POWER_W}
energy_budget_j = {BUDGET_J}
label = "applicator A"

[[fibres]]
channel = 1
mode = "FIXED_POWER"
power_w = {POWER_W}
energy_budget_j = {BUDGET_J}
label = "applicator B"

[[probes]]
channel = 0
role = "tip"
fibre = 0

[[probes]]
channel = 1
role = "tip"
fibre = 1

[[probes]]
channel = 2
role = "margin"

[[probes]]
channel = 3
role = "protected"
max_temp_c = 44.0
max_cem43_min = 10.0
label = "duct"
"""


def chromium() -> str:
    """The browser, or a skip only where it cannot be installed (not root); `make test` installs it."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    if os.geteuid() == 0:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    pytest.skip("chromium is not installed and installing it needs root: sudo apt-get install chromium")


def run_chromium(browser: str, page: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / f"chromium-profile-{len(list(tmp.glob('chromium-profile-*')))}"
    profile.mkdir()
    cmd = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
        "--hide-scrollbars", f"--user-data-dir={profile}", "--virtual-time-budget=5000", *extra, page.as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[SimProcess, DaemonProcess]]:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    sim = SimProcess(transport="tcp", tmp=tmp_path, scenario=str(scenario)).start()
    daemon = None
    try:
        daemon = DaemonProcess(config=write_config(tmp_path, sim), tmp=tmp_path).start()
        yield sim, daemon
    finally:
        if daemon is not None:
            daemon.stop()
        sim.stop()


def _treat(sim: SimProcess, daemon: DaemonProcess) -> int:
    session_id = daemon.ok("load", plan_text=PLAN)["session_id"]
    daemon.ok("arm")
    sim.bench("footswitch", "press")
    wait_until(lambda: sim.truth()["ls4"]["counter_energy_j"][0] > 2.0, what="some energy")
    sim.bench("footswitch", "release")  # a pause
    wait_until(lambda: daemon.session_state() == "PAUSED", what="session PAUSED")
    sim.bench("footswitch", "press")
    wait_until(lambda: daemon.session_state() == "PULLBACK", timeout_s=60, what="first illumination done")
    sim.bench("footswitch", "release")
    daemon.ok("pullback")
    sim.bench("footswitch", "press")
    wait_until(lambda: daemon.session_state() == "COMPLETE", timeout_s=60, what="session COMPLETE")
    sim.bench("footswitch", "release")
    return session_id


def test_report_of_a_real_session_opens_in_chromium(stack: tuple[SimProcess, DaemonProcess], tmp_path: Path) -> None:
    browser = chromium()
    sim, daemon = stack
    session_id = _treat(sim, daemon)
    wait_until(lambda: daemon.ok("session", id=session_id)["sample_count"] >= 5, what="samples on the record")
    out = tmp_path / "report"
    result = subprocess.run(
        [str(BIN / "laserctl"), "--socket", str(daemon.socket), "report", str(session_id), "--out", str(out), "--sim-bench", sim.bench_path],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    page = out / "report.html"
    assert page.is_file()

    # --- the browser: every picture loads (the page's own check writes it into the DOM) ---------
    dom = run_chromium(browser, page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    imgs = re.findall(r"<img\b[^>]*>", dom.stdout)
    srcs = sorted(re.search(r'src="([^"]+)"', i).group(1) for i in imgs)  # type: ignore[union-attr]
    assert srcs == sorted(["power_energy.png", "temperatures.png", "cem43.png", "timeline.png", "zone.png"])
    assert all('data-loaded="yes"' in i for i in imgs), imgs
    assert 'data-figures="ok"' in dom.stdout and "All 5 pictures loaded." in dom.stdout
    shot = tmp_path / "report-screenshot.png"
    taken = run_chromium(browser, page, tmp_path, f"--screenshot={shot}", "--window-size=1100,2600")
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2600, 1100) and pixels.std() > 0.05  # a page, not a blank
    shutil.copy(shot, out / "screenshot-for-review.png")

    # --- the exports against the journal the daemon wrote ------------------------------------------
    with Journal(tmp_path / "journal.sqlite", read_only=True) as j:
        detail = j.session(session_id)
        samples = j.samples(session_id)
    doc = json.loads((out / "session.json").read_text())
    assert doc["session"]["state"] == "COMPLETE"
    assert doc["summary"]["delivered_energy_j"] == list(detail.session.delivered_energy_j)
    for c in (0, 1):  # each fibre got its budget twice, within a control cycle each time
        assert 2 * BUDGET_J - 1.0 <= doc["summary"]["delivered_energy_j"][c] <= 2 * BUDGET_J + 2 * POWER_W * 0.1
    assert (doc["summary"]["pauses"], doc["summary"]["pullbacks"], doc["summary"]["illuminations_reached"]) == (1, 1, 2)
    assert [e["id"] for e in doc["events"]] == [e.id for e in detail.events]
    versions = doc["versions"]
    assert versions["devices"]["ls4"]["product"] == "LS-4" and versions["devices"]["ls4"]["firmware"] == "2.1"
    assert versions["devices"]["ft8"]["product"] == "FT-8" and versions["devices"]["ft8"]["firmware"] == "1.3"
    assert versions["session_software"]["package"] == "laserhost" and versions["session_software"]["version"]
    assert doc["context"]["time_scale"] == daemon.time_scale
    assert doc["zone_picture"]["source"] == "simulator bench" and doc["zone_picture"]["sim_time_s"] > 0
    with (out / "cycles.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(samples)
    last = samples[-1].sample
    for c in range(4):
        assert float(rows[-1][f"ch{c}_energy_j"]) == last.energy_j[c]
    assert 0.6 * POWER_W < max(float(r["ch0_output_w"]) for r in rows) <= 1.1 * POWER_W  # W, not mW

    # --- offline: the same record from the journal file, read-only, says the same -----------------
    offline = tmp_path / "offline"
    result = subprocess.run(
        [str(BIN / "laserctl"), "report", str(session_id), "--out", str(offline), "--journal", str(tmp_path / "journal.sqlite")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    off = json.loads((offline / "session.json").read_text())
    for key in ("session", "plan", "summary", "events", "context"):
        assert off[key] == doc[key], key
    assert (offline / "cycles.csv").read_bytes() == (out / "cycles.csv").read_bytes()
    assert "No simulator zone picture" in (offline / "report.html").read_text()

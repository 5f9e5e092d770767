"""laserd against the devices, as separate processes over Modbus TCP and RTU (socat pty pair).

Ground truth comes from the bench (what the LS-4 really emitted); the daemon's side from
laserctl and its journal. The target is the HIL env's (hil_tests/hil_env.py): tests that need the
footswitch or the ground truth take `bench` and skip where there is none.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from controller.launcher import DaemonProcess, fixed_plan, wait_until
from hil_env import Bench, Target
from hil_summary import Row

BUDGET_J = 30.0
POWER_W = 3.0
# one 100 ms control cycle at the plan's power: the most a budget may be overrun
ONE_CYCLE_J = POWER_W * 0.1


def _emitting(daemon: DaemonProcess, bench: Bench, plan: str) -> int:
    session_id = daemon.ok("load", plan_text=plan)["session_id"]
    daemon.ok("arm")
    bench("footswitch", "press")
    wait_until(lambda: daemon.session_state() == "EMITTING", what="session EMITTING")
    return session_id


def test_connects_and_identifies_both_devices(daemon: DaemonProcess, target: Target) -> None:
    status = daemon.status()
    assert status["devices"]["ls4"] == {"product": "LS-4", "firmware": "2.1", "map_version": 1, "unit": target.env.ls4_unit}
    assert status["devices"]["ft8"] == {"product": "FT-8", "firmware": "1.3", "map_version": 1, "unit": target.env.ft8_unit}
    wait_until(lambda: daemon.status()["ls4"] is not None, what="a first LS-4 reading")
    assert daemon.status()["ls4"]["device_state"] == "READY"  # host control taken, not armed
    if target.bench is not None:  # and as the device itself has it, where a bench can tell
        assert target.bench.truth()["ls4"]["state"] == "READY"


@pytest.mark.parametrize(("firmware", "expected"), [(("2", "2.1"), "register map version 2"), (("1", "2.3"), "firmware 2.3")])
def test_a_device_it_does_not_know_is_refused(bench: Bench, target: Target, tmp_path: Path, firmware, expected: str) -> None:
    bench("ls4", "firmware", *firmware)
    daemon = target.daemon(tmp_path).start(wait_ready=False)
    assert daemon.wait() == 3
    assert expected in daemon.log_text()
    assert bench.truth()["ls4"]["state"] == "STANDBY"  # never driven


def test_a_session_from_load_to_complete_at_fixed_power(hil_row: Row, bench: Bench, daemon: DaemonProcess, target: Target) -> None:
    hil_row.set(scenario="default FIXED_POWER")
    before = bench.truth()["ls4"]
    session_id = _emitting(daemon, bench, fixed_plan(power_w=POWER_W, budget_j=BUDGET_J))
    wait_until(lambda: daemon.session_state() == "COMPLETE", timeout_s=60, what="session COMPLETE")
    truth = bench.truth()["ls4"]
    for c in (0, 1):
        assert BUDGET_J - 1.0 <= truth["counter_energy_j"][c] <= BUDGET_J + ONE_CYCLE_J
    assert truth["true_output_mw"] == [0.0] * 4
    wait_until(lambda: bench.truth()["ls4"]["state"] == "READY", what="LS-4 disarmed")
    record = daemon.ok("session", id=session_id)
    hil_row.set(end_state=record["state"])
    hil_row.energy_error(record["delivered_energy_j"], [t - b for t, b in zip(truth["true_tip_energy_j"], before["true_tip_energy_j"])])
    assert record["state"] == "COMPLETE" and record["sample_count"] >= 5
    kinds = [(e["from"], e["to"]) for e in record["events"] if e["kind"] == "state"]
    assert kinds == [("LOADED", "ARMED"), ("ARMED", "EMITTING"), ("EMITTING", "COMPLETE")]


def test_pause_and_resume_by_footswitch(bench: Bench, daemon: DaemonProcess) -> None:
    _emitting(daemon, bench, fixed_plan(power_w=POWER_W, budget_j=BUDGET_J))
    wait_until(lambda: bench.truth()["ls4"]["counter_energy_j"][0] > 5.0, what="some energy")
    bench("footswitch", "release")
    wait_until(lambda: daemon.session_state() == "PAUSED", what="session PAUSED")
    paused = bench.truth()["ls4"]
    assert paused["true_output_mw"] == [0.0] * 4 and paused["state"] == "ARMED"
    bench("footswitch", "press")
    wait_until(lambda: daemon.session_state() in ("EMITTING", "COMPLETE"), what="session emitting again")
    wait_until(lambda: daemon.session_state() == "COMPLETE", timeout_s=60, what="session COMPLETE")
    for c in (0, 1):
        assert bench.truth()["ls4"]["counter_energy_j"][c] <= BUDGET_J + ONE_CYCLE_J


def test_operator_stop_ends_emission_and_aborts(hil_row: Row, bench: Bench, daemon: DaemonProcess) -> None:
    hil_row.set(scenario="operator stop")
    before = bench.truth()["ls4"]
    session_id = _emitting(daemon, bench, fixed_plan(power_w=POWER_W, budget_j=BUDGET_J))
    wait_until(lambda: bench.truth()["ls4"]["true_output_mw"][0] > 0, what="light")
    stop_at = bench.device_time_s(time.monotonic())
    daemon.ok("stop")
    truth = bench.truth()
    assert truth["ls4"]["true_output_mw"] == [0.0] * 4 and truth["ls4"]["state"] == "READY"
    record = daemon.ok("session", id=session_id)
    assert record["state"] == "ABORTED"
    hil_row.set(end_state=record["state"], time_to_safe_s=truth["emission_stopped_s"] - stop_at)
    hil_row.energy_error(record["delivered_energy_j"], [t - b for t, b in zip(truth["ls4"]["true_tip_energy_j"], before["true_tip_energy_j"])])


def test_pull_back_between_illuminations_needs_the_operator(bench: Bench, daemon: DaemonProcess) -> None:
    _emitting(daemon, bench, fixed_plan(power_w=POWER_W, budget_j=BUDGET_J, illuminations=2))
    wait_until(lambda: daemon.session_state() == "PULLBACK", timeout_s=60, what="first illumination done")
    wait_until(lambda: bench.truth()["ls4"]["state"] == "READY", what="LS-4 disarmed for the pull-back")
    first = bench.truth()["ls4"]["counter_energy_j"][:2]
    assert daemon.ctl("arm")["ok"] is False  # only a confirmed pull-back re-arms
    daemon.ok("pullback")
    assert daemon.session_state() == "ARMED"
    assert bench.truth()["ls4"]["true_output_mw"] == [0.0] * 4  # the footswitch held down does not restart emission
    bench("footswitch", "release")
    bench("footswitch", "press")
    wait_until(lambda: daemon.session_state() == "COMPLETE", timeout_s=60, what="second illumination done")
    total = bench.truth()["ls4"]["counter_energy_j"]
    for c in (0, 1):
        assert BUDGET_J - 1.0 <= total[c] - first[c] <= BUDGET_J + ONE_CYCLE_J


def test_kill_9_then_restart_recovers_the_session_as_interrupted(hil_row: Row, bench: Bench, daemon: DaemonProcess, target: Target, tmp_path: Path) -> None:
    hil_row.set(scenario="kill -9 while emitting")
    before = bench.truth()["ls4"]
    session_id = _emitting(daemon, bench, fixed_plan(power_w=POWER_W, budget_j=200.0))
    wait_until(lambda: bench.truth()["ls4"]["counter_energy_j"][0] > 10.0, what="some energy")
    killed_at = bench.device_time_s(time.monotonic())
    daemon.signal(signal.SIGKILL)
    daemon.wait()
    # nobody feeds the LS-4 watchdog now: the device stops emission by itself
    wait_until(lambda: bench.truth()["ls4"]["fault"] == "WATCHDOG_EXPIRED", what="the LS-4 watchdog to trip")
    truth = bench.truth()
    assert truth["ls4"]["true_output_mw"] == [0.0] * 4
    restarted = target.daemon(tmp_path, config=daemon.config).start()
    try:
        record = restarted.ok("session", id=session_id)
        assert record["state"] == "INTERRUPTED" and record["interrupted"] is True
        for c in (0, 1):
            assert record["delivered_energy_j"][c] == pytest.approx(truth["ls4"]["counter_energy_j"][c], abs=0.01)
        status = restarted.status()
        assert status["session_state"] == "IDLE"  # nothing resumes by itself
        assert bench.truth()["ls4"]["true_output_mw"] == [0.0] * 4
        hil_row.set(end_state=record["state"], time_to_safe_s=truth["emission_stopped_s"] - killed_at)
        hil_row.energy_error(record["delivered_energy_j"], [t - b for t, b in zip(truth["ls4"]["true_tip_energy_j"], before["true_tip_energy_j"])])
    finally:
        restarted.stop()


def test_sigterm_stops_emission_and_releases_the_laser(hil_row: Row, bench: Bench, daemon: DaemonProcess, target: Target) -> None:
    hil_row.set(scenario="SIGTERM while emitting")
    session_id = _emitting(daemon, bench, fixed_plan(power_w=POWER_W, budget_j=200.0))
    wait_until(lambda: bench.truth()["ls4"]["true_output_mw"][0] > 0, what="light")
    term_at = bench.device_time_s(time.monotonic())
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    truth = bench.truth()
    assert truth["ls4"]["true_output_mw"] == [0.0] * 4
    assert truth["ls4"]["state"] == "STANDBY" and truth["ls4"]["fault"] == "NONE"  # disarmed before release: no fault 8
    restarted = target.daemon(daemon.tmp, config=daemon.config).start()
    try:
        record = restarted.ok("session", id=session_id)
        assert record["state"] == "ABORTED"
        hil_row.set(end_state=record["state"], time_to_safe_s=truth["emission_stopped_s"] - term_at)
    finally:
        restarted.stop()


def test_a_plan_whose_probe_does_not_read_is_refused(bench: Bench, daemon: DaemonProcess) -> None:
    bench("probe", 1, "disconnect")
    wait_until(lambda: daemon.status()["ft8"]["temperature_c"][1] is None, what="probe 1 invalid")
    reply = daemon.ctl("load", plan_text=fixed_plan())
    assert reply["ok"] is False and "probe channel(s) 1" in reply["error"]
    assert daemon.status()["session_state"] == "IDLE"

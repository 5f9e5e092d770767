"""Faults during a treatment, injected on the simulator's bench: the daemon trips, emission stops,
the session ends FAULTED, the journal has the trip, and the ack waits for the cause to go.

Ground truth (did the light really stop?) from the bench; the daemon's side from laserctl. Every
test here needs the bench (it injects the fault), so they skip on real hardware without one.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from controller.launcher import DaemonProcess, fixed_plan, wait_until
from hil_env import Bench
from hil_summary import Row


@dataclass(frozen=True)
class Fault:
    name: str
    inject: tuple[tuple[str, ...], ...]
    undo: tuple[tuple[str, ...], ...]
    rules: frozenset[str]  # the safety rules that may be the latched cause
    # the LS-4 stays in FAULT while its cause is present, and the ack waits for it; a probe's cause
    # no longer matters once the session has ended (no channel may emit without a plan)
    ack_waits: bool = True


FAULTS = [
    Fault("estop", (("estop", "press"),), (("estop", "release"),), frozenset({"ls4_fault", "ls4_unexpected_state"})),
    Fault("interlock", (("interlock", "open"),), (("interlock", "close"),), frozenset({"ls4_fault", "ls4_unexpected_state"})),
    Fault("key-off", (("key", "off"),), (("key", "on"),), frozenset({"ls4_fault", "ls4_unexpected_state"})),
    Fault("fibre-break", (("fibre", "1", "break"),), (("fibre", "1", "connect"),), frozenset({"ls4_fault", "ls4_unexpected_state", "power_mismatch"})),
    Fault("selftest", (("ls4", "selftest", "fail"),), (("ls4", "selftest", "ok"),), frozenset({"ls4_fault", "ls4_unexpected_state"})),
    Fault("power-drift", (("power", "0", "drift", "-40"),), (("power", "0", "drift", "0"),), frozenset({"power_mismatch"}), ack_waits=False),
    Fault("monitor-error", (("monitor", "1", "error", "40"),), (("monitor", "1", "error", "0"),), frozenset({"power_mismatch", "energy_crosscheck"}), ack_waits=False),
    Fault("tip-probe-lost", (("probe", "0", "disconnect"),), (("probe", "0", "connect"),), frozenset({"probe_invalid"}), ack_waits=False),
    Fault("thermometer-hung", (("ft8", "hang"),), (("ft8", "ok"),), frozenset({"probe_stale"}), ack_waits=False),
    Fault("tip-overheat", (("probe", "1", "force", "120"),), (("probe", "1", "force", "release"),), frozenset({"tip_temp_cap", "probe_implausible"}), ack_waits=False),
]


def _trip_events(daemon: DaemonProcess, session_id: int) -> list[dict]:
    return [e for e in daemon.ok("session", id=session_id)["events"] if e["kind"] == "safety_trip"]


def _delivered(truth_before: dict, truth_after: dict) -> list[float]:
    return [a - b for a, b in zip(truth_after["ls4"]["true_tip_energy_j"], truth_before["ls4"]["true_tip_energy_j"])]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_fault_during_emission_trips_and_stops_the_light(hil_row: Row, bench: Bench, daemon: DaemonProcess, fault: Fault) -> None:
    hil_row.set(scenario=f"fault {fault.name}")
    before = bench.truth()
    session_id = daemon.ok("load", plan_text=fixed_plan(power_w=3.0, budget_j=500.0))["session_id"]
    daemon.ok("arm")
    bench("footswitch", "press")
    wait_until(lambda: bench.truth()["ls4"]["counter_energy_j"][0] > 3.0, what="emission under way")
    injected = [bench(*action) for action in fault.inject][0]
    wait_until(lambda: daemon.status()["trip"] is not None, what=f"a trip after {fault.name}")
    wait_until(lambda: bench.truth()["ls4"]["true_output_mw"] == [0.0] * 4, what="emission stopped (ground truth)")
    wait_until(lambda: daemon.ok("session", id=session_id)["state"] == "FAULTED", what="session FAULTED")
    stopped = bench.truth()
    record = daemon.ok("session", id=session_id)
    hil_row.set(end_state=record["state"], time_to_safe_s=stopped["emission_stopped_s"] - injected["time_s"])
    hil_row.energy_error(record["delivered_energy_j"], _delivered(before, stopped))
    trips = _trip_events(daemon, session_id)
    assert trips, "the trip is in the journal"
    assert any(rule in daemon.log_text() for rule in fault.rules), f"none of {sorted(fault.rules)} in the log"
    status = daemon.status()
    # the ack waits for the cause to go ...
    if fault.ack_waits:
        assert daemon.ctl("ack")["ok"] is False
    for action in fault.undo:
        bench(*action)
    bench("footswitch", "release")
    wait_until(lambda: daemon.ctl("ack")["ok"], timeout_s=30, what="the ack to be accepted once the cause is gone")
    wait_until(lambda: daemon.status()["trip"] is None, what="the latch to clear")
    assert status["session_state"] == "FAULTED"
    wait_until(lambda: bench.truth()["ls4"]["state"] == "READY", what="LS-4 back in READY")
    # and a new session can be loaded once its probes read again: nothing resumes by itself
    assert daemon.status()["session_state"] == "FAULTED"
    wait_until(lambda: None not in daemon.status()["ft8"]["temperature_c"][:2], what="the plan's probes reading again")
    assert daemon.ok("load", plan_text=fixed_plan())["session_id"] == session_id + 1


def test_link_lost_trips_and_the_device_watchdog_stops_the_light(hil_row: Row, bench: Bench, daemon: DaemonProcess) -> None:
    hil_row.set(scenario="link lost (bus silent 5 s)")
    daemon.ok("load", plan_text=fixed_plan(power_w=3.0, budget_j=500.0))
    daemon.ok("arm")
    bench("footswitch", "press")
    wait_until(lambda: bench.truth()["ls4"]["counter_energy_j"][0] > 3.0, what="emission under way")
    injected = bench("reboot", "all", 5)  # the bus goes silent for 5 device seconds; the LS-4 forgets everything
    wait_until(lambda: daemon.status()["trip"] is not None, what="link-loss trip")
    wait_until(lambda: bench.truth()["ls4"]["true_output_mw"] == [0.0] * 4, what="emission stopped")
    hil_row.set(time_to_safe_s=bench.truth()["emission_stopped_s"] - injected["time_s"])
    wait_until(lambda: all(link["up"] for link in daemon.status()["links"].values()), timeout_s=30, what="the link back")
    assert daemon.status()["session_state"] == "FAULTED"
    hil_row.set(end_state="FAULTED")

"""`laserctl monitor`'s frame is a pure function of the payloads it received: freshness (age and
sequence gaps), alarms, fibres against budgets and probes against limits. (Against a live laserd
over a real broker: hil_tests/test_telemetry_hil.py.)"""

from __future__ import annotations

import argparse
import dataclasses
import io
import socket
from typing import Any

import pytest

from controller import cli
from controller.cycle_stats import CycleStats
from controller.monitor import EXIT_NO_BROKER, EXIT_USAGE, View, alarms, main, options_from_args, parse_broker, render
from controller.telemetry import Identity, ProbeView, SessionView, event_payload, session_payload, status_payload, telemetry_payload
from protocol import ft8 as FT8
from protocol import ls4 as LS4
from protocol.ft8 import FT8Snapshot
from protocol.ls4 import DeviceState, FaultCode, LS4Snapshot
from safety.types import Finding, Severity

RUN_A = Identity(device_id="ls4-a", run_id="a" * 16)
RUN_B = Identity(device_id="ls4-a", run_id="b" * 16)
OTHER = Identity(device_id="ls4-z", run_id="c" * 16)

SESSION = SessionView(
    session_id=3,
    state="EMITTING",
    open=True,
    illumination=0,
    illuminations=1,
    plan_sha256="f" * 64,
    max_session_energy_j=301.0,
    session_energy_j=(75.0, 30.0, 0.0, 0.0),
    illumination_energy_j=(75.0, 30.0, 0.0, 0.0),
    budgets_j=(150.0, 150.0, None, None),
    fibres_done=frozenset(),
    probes=(
        ProbeView(channel=0, role="tip", max_temp_c=95.0, max_cem43_min=None, lethal_cem43_min=None),
        ProbeView(channel=5, role="protected", max_temp_c=42.0, max_cem43_min=5.0, lethal_cem43_min=None),
    ),
    cem43_min={0: 80.0, 5: 6.5},
    end_reason=None,
)


def telemetry(seq: int, *, ident: Identity = RUN_A, session: SessionView | None = SESSION, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "ident": ident,
        "seq": seq,
        "t_wall_s": 1.7e9 + seq,
        "t_host_s": float(seq),
        "time_scale": 1.0,
        "daemon_state": "running",
        "ls4": dataclasses.replace(LS4Snapshot.from_words([0] * LS4.INPUT_COUNT), device_state=DeviceState.EMITTING, fault_channel=None, output_power_mw=(3000, 2980, 0, 0)),
        "ft8": dataclasses.replace(FT8Snapshot.from_words([0] * FT8.INPUT_COUNT), temperature_c=(60.0, 37.0, 37.0, 37.0, 37.0, 43.1, 37.0, None)),
        "setpoint_mw": (3000, 3000, 0, 0),
        "session": session,
        "trip": None,
        "links": {"main": (True, {})},
        "cycle": CycleStats(period_s=0.1).as_dict(),
        "queues": {"telemetry_dropped": 0, "telemetry_queued": 0, "events_dropped": 0, "events_queued": 0},
    }
    values.update(overrides)
    return telemetry_payload(**values)


def feed(view: View, payloads: list[tuple[str, Any]], *, at_s: float = 0.0) -> View:
    for kind, payload in payloads:
        view = view.apply(kind=kind, payload=payload, received_s=at_s)
    return view


def online(ident: Identity = RUN_A, state: str = "online", reason: str = "connected") -> dict[str, Any]:
    return status_payload(ident=ident, state=state, reason=reason, t_wall_s=1.7e9, telemetry_hz=5.0, command_topic_enabled=False, telemetry_dropped=0, events_dropped=0)


def test_sequence_gaps_count_missing_messages_and_a_new_run_starts_over() -> None:
    view = feed(View(), [("telemetry", telemetry(s)) for s in (0, 1, 2, 5, 6, 9)])
    assert (view.seq_gaps, view.seq_missed, view.telemetry_count) == (2, 4, 6)
    view = feed(view, [("telemetry", telemetry(6)), ("telemetry", telemetry(3))])  # duplicates and late ones are not news
    assert view.telemetry["seq"] == 9 and view.ignored == 2
    view = feed(view, [("telemetry", telemetry(0, ident=RUN_B)), ("telemetry", telemetry(1, ident=RUN_B))])
    assert (view.seq_gaps, view.seq_missed, view.run_id) == (0, 0, "b" * 16)


def test_the_console_follows_one_device_and_ignores_what_it_cannot_read() -> None:
    view = feed(View(), [("telemetry", telemetry(0)), ("telemetry", telemetry(0, ident=OTHER)), ("telemetry", {"schema": "laserhost.telemetry/2"}), ("status", None), ("command", {"command": "stop"})])
    assert view.device_id == "ls4-a" and view.telemetry_count == 1 and view.ignored == 4


def test_a_frame_shows_fibres_against_budget_probes_against_limits_and_freshness() -> None:
    view = feed(View(), [("status", online()), ("telemetry", telemetry(0)), ("telemetry", telemetry(2))], at_s=100.0)
    frame = render(view, now_s=100.4)
    assert "laser ls4-a   broker link online   laserd running" in frame
    assert "session #3 EMITTING   illumination 1/1   energy 105.0 / 301 J" in frame
    assert "ch0      3.00    3.00       75.0 / 150 J [#####.....]  50%" in frame
    assert "ch2      0.00    0.00      not in plan" in frame
    assert "p0    tip          60.00     95.0      80.00       -" in frame
    assert "p5    protected    43.10     42.0       6.50     5.0  !!" in frame
    assert "p7    -             ----" in frame
    assert "feed  last message 0.4 s ago   seq 2   seq gaps 1 (1 missed)" in frame
    assert "probe p5 (protected) at 43.1 degC >= limit 42.0 degC" in frame
    assert "probe p5 dose 6.5 >= limit 5.0 CEM43 min" in frame


def test_a_tip_probe_dose_of_1e15_minutes_keeps_the_probe_row_aligned() -> None:
    session = dataclasses.replace(SESSION, cem43_min={0: 3.2e15, 5: 6.5})
    frame = render(feed(View(), [("status", online()), ("telemetry", telemetry(0, session=session))], at_s=100.0), now_s=100.1)
    rows = {line[:6].strip(): line for line in frame.splitlines() if line.startswith(("probe ", "p0 ", "p5 "))}
    assert "p0    tip          60.00     95.0   3.20e+15       -" in frame
    assert len(rows["p0"].rstrip()) == len(rows["probe"].rstrip())  # the limit column stays under its heading


def test_alarms_trip_fault_link_offline_stale_and_lost_events() -> None:
    trip = Finding(rule="tip_temp_cap", severity=Severity.HARD, message="tip probe 0 at 96 degC", channel=0)
    ls4 = dataclasses.replace(LS4Snapshot.from_words([0] * LS4.INPUT_COUNT), device_state=DeviceState.FAULT, fault_code=FaultCode.ESTOP, fault_channel=None)
    t = telemetry(0, session=None, trip=trip, ls4=ls4, links={"main": (False, {})}, queues={"telemetry_dropped": 4, "telemetry_queued": 0, "events_dropped": 2, "events_queued": 0})
    view = feed(View(), [("status", online(state="offline", reason="connection lost")), ("telemetry", t)], at_s=10.0)
    found = alarms(view, now_s=20.0)
    assert found == [
        "laserd OFFLINE (connection lost)",
        "FEED STALE: no telemetry for 10.0 s",
        "TRIP tip_temp_cap: tip probe 0 at 96 degC",
        "LS-4 FAULT ESTOP",
        "bus main DOWN",
        "2 events dropped at laserd (broker was away)",
    ]
    assert alarms(view, now_s=10.5)[1] == "TRIP tip_temp_cap: tip probe 0 at 96 degC"  # fresh: 0.5 s < 3 periods of 5 Hz


def test_events_are_listed_and_trips_stay_among_the_alarms() -> None:
    def event(seq: int, kind: str, message: str, details: dict[str, Any]) -> dict[str, Any]:
        return event_payload(ident=RUN_A, event_seq=seq, t_wall_s=1.7e9, kind=kind, message=message, session_id=3, details=details)

    payloads = [("event", event(0, "trip", "LS-4 fault ESTOP", {"rule": "ls4_fault", "channel": None, "value": None, "limit": None}))]
    payloads += [("event", event(n, "session_state", f"change {n}", {"from": "ARMED", "to": "EMITTING", "event": "ARM", "reason": "x"})) for n in range(1, 9)]
    view = feed(View(), payloads)
    frame = render(view, now_s=0.0)
    assert "change 8" in frame and "change 2" not in frame  # the latest six
    assert "trip: LS-4 fault ESTOP" in frame  # still among the alarms


def test_after_the_session_the_retained_summary_supplies_the_energy() -> None:
    ended = dataclasses.replace(SESSION, state="COMPLETE", open=False, end_reason="endpoint reached")
    summary = session_payload(ident=RUN_A, t_wall_s=1.7e9, view=ended)
    view = feed(View(), [("session", summary), ("telemetry", telemetry(0, session=ended))])
    frame = render(view, now_s=0.0)
    assert "session #3 COMPLETE" in frame and "energy 105.0 / 301 J" in frame
    assert "ch0      3.00    3.00       75.0 / 150 J" in frame


def _args(*words: str) -> argparse.Namespace:
    return cli._parser().parse_args(["monitor", *words])


def test_command_line_options_are_checked_in_one_line() -> None:
    assert parse_broker("broker.local:8883") == ("broker.local", 8883) and parse_broker("[::1]:1883") == ("::1", 1883)
    for words, message in [
        (("--broker", "nohost"), "is not HOST:PORT"),
        (("--broker", "h:70000"), "is not HOST:PORT"),
        (("--prefix", "laser/x"), "must end with /"),
        (("--frames", "0"), "--frames must be at least 1"),
        (("--ca-file", "/x"), "need --tls"),
        (("--password-file", "/x"), "needs --username"),
    ]:
        with pytest.raises(ValueError, match=message):
            options_from_args(_args(*words))
    out, err = io.StringIO(), io.StringIO()
    assert main(_args("--broker", "nohost"), out=out, err=err) == EXIT_USAGE
    assert err.getvalue().count("\n") == 1


def test_no_broker_is_one_line_and_exit_3_never_a_hang() -> None:
    with socket.socket() as s:  # a free port: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out, err = io.StringIO(), io.StringIO()
    assert main(_args("--broker", f"127.0.0.1:{port}", "--once"), out=out, err=err) == EXIT_NO_BROKER
    assert err.getvalue() == f"laserctl: mqtt: broker 127.0.0.1:{port} unreachable: connection refused\n"
    assert main(_args("--broker", f"127.0.0.1:{port}"), out=out, err=err) == EXIT_NO_BROKER  # live mode too

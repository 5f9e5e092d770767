"""laserd's MQTT telemetry end to end: laser-sim, laserd and a real mosquitto as processes, and a
subscriber that validates every payload it sees against protocol/schemas.

Ground truth (what the LS-4 really emitted) from the bench; the daemon's side from laserctl and
from the MQTT feed itself. Tests that need the footswitch take `bench` (skipped without one).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.launcher import DaemonProcess, fixed_plan, laserctl, wait_until
from hil_env import ANY, Bench, Target
from hil_summary import Row
from mosquitto_broker import Broker, Collector, validate_all

DEVICE = "ls4-hil"
PREFIX = f"laser/{DEVICE}/"
POWER_W = 3.0

pytestmark = pytest.mark.parametrize("target", [ANY], indirect=True)  # MQTT does not care how the bus is wired


def mqtt_section(broker: Broker, *, queue_size: int = 1000, command_topic: bool = False, telemetry_hz: float = 5.0) -> str:
    return f"""
[mqtt]
enabled = true
host = "127.0.0.1"
port = {broker.port}
device_id = "{DEVICE}"
telemetry_hz = {telemetry_hz}
queue_size = {queue_size}
command_topic_enabled = {"true" if command_topic else "false"}
"""


Start = Callable[..., DaemonProcess]


@pytest.fixture
def feed(mosquitto: Broker) -> Iterator[Collector]:
    """Subscribed before laserd starts, so it sees everything from the first `online`."""
    collector = Collector(mosquitto, [PREFIX + "#"]).start()
    yield collector
    collector.stop()
    validate_all(collector)  # every payload of every test, against its schema


@pytest.fixture
def start(target: Target, mosquitto: Broker, tmp_path: Path) -> Iterator[Start]:
    daemons: list[DaemonProcess] = []

    def _start(**mqtt: object) -> DaemonProcess:
        config = target.write_config(tmp_path)
        config.write_text(config.read_text() + mqtt_section(mosquitto, **mqtt))  # type: ignore[arg-type]
        daemons.append(target.daemon(tmp_path, config=config).start())
        return daemons[-1]

    yield _start
    for d in daemons:
        d.stop()


def _emitting(daemon: DaemonProcess, bench: Bench, plan: str) -> int:
    session_id = daemon.ok("load", plan_text=plan)["session_id"]
    daemon.ok("arm")
    bench("footswitch", "press")
    wait_until(lambda: daemon.session_state() == "EMITTING", what="session EMITTING")
    return session_id


def _events(feed: Collector, kind: str) -> list[dict]:
    return [p for p in feed.payloads("event") if p["kind"] == kind]


def _transitions(feed: Collector, session_id: int) -> list[tuple[str, str]]:
    return [(p["details"]["from"], p["details"]["to"]) for p in _events(feed, "session_state") if p["session_id"] == session_id]


def test_telemetry_flows_at_the_configured_rate_with_consecutive_sequence_numbers(start: Start, feed: Collector, target: Target) -> None:
    daemon = start(telemetry_hz=5.0)
    wait_until(lambda: len(feed.on("telemetry")) >= 16, what="16 telemetry messages")
    received = feed.on("telemetry")
    payloads = [m.json() for m in received]
    assert {m.qos for m in received} == {0} and not any(m.retain for m in received)
    seqs = [p["seq"] for p in payloads]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap, no repeat
    assert len({p["run_id"] for p in payloads}) == 1
    # 5 Hz of wall time (not scaled by --time-scale): 15 intervals in ~3 s
    span_s = received[15].at_s - received[0].at_s
    assert 2.4 <= span_s <= 3.6, span_s
    last = payloads[-1]
    assert last["daemon_state"] == "running" and last["time_scale"] == target.time_scale
    assert last["ls4"]["device_state"] == "READY" and last["session"]["state"] == "IDLE"
    assert all(p["temp_c"] is not None for p in last["probes"])
    assert last["links"]["main"]["up"] is True and last["cycle"]["count"] > payloads[0]["cycle"]["count"]
    status = daemon.status()["mqtt"]
    assert status["connected"] is True and status["error"] is None and status["telemetry_dropped"] == 0


def test_session_events_arrive_at_qos_1_and_the_session_summary_is_retained(bench: Bench, start: Start, feed: Collector, mosquitto: Broker) -> None:
    daemon = start()
    first = _emitting(daemon, bench, fixed_plan(power_w=POWER_W, budget_j=10.0))
    wait_until(lambda: daemon.session_state() == "COMPLETE", timeout_s=60, what="session COMPLETE")
    wait_until(lambda: ("EMITTING", "COMPLETE") in _transitions(feed, first), what="the COMPLETE event")
    assert _transitions(feed, first) == [("IDLE", "LOADED"), ("LOADED", "ARMED"), ("ARMED", "EMITTING"), ("EMITTING", "COMPLETE")]
    # a trip: the e-stop during emission, then the operator's ack once it is released
    bench("footswitch", "release")
    second = _emitting(daemon, bench, fixed_plan(power_w=POWER_W, budget_j=500.0))
    bench("estop", "press")
    wait_until(lambda: _events(feed, "trip"), what="a trip event")
    wait_until(lambda: ("EMITTING", "FAULTED") in _transitions(feed, second), what="the FAULTED event")
    wait_until(lambda: any(p["details"]["fault_code"] == "ESTOP" for p in _events(feed, "fault")), what="the LS-4 fault event")
    bench("estop", "release")
    bench("footswitch", "release")
    wait_until(lambda: daemon.ctl("ack")["ok"], timeout_s=30, what="the ack")
    wait_until(lambda: _events(feed, "ack"), what="an ack event")
    events = feed.on("event")
    assert {m.qos for m in events} == {1}
    assert [m.json()["event_seq"] for m in events] == list(range(len(events)))  # in order, none missing
    trip = _events(feed, "trip")[0]
    assert trip["session_id"] == second and trip["details"]["rule"] in ("ls4_fault", "ls4_unexpected_state")
    # the retained summary is what a console connecting now is shown
    late = Collector(mosquitto, [PREFIX + "session"]).start()
    try:
        wait_until(lambda: late.on("session"), what="the retained session summary")
        summary = late.on("session")[0]
        assert summary.retain and summary.json()["session_id"] == second and summary.json()["state"] == "FAULTED"
        assert "patient_id" not in summary.json()
    finally:
        late.stop()
    completed = [p for p in feed.payloads("session") if p["session_id"] == first and p["state"] == "COMPLETE"][0]
    truth = bench.truth()["ls4"]["counter_energy_j"]
    assert completed["session_energy_j"][0] == pytest.approx(10.0, abs=1.0)
    assert truth[0] >= completed["session_energy_j"][0] - 0.5


def test_status_online_then_offline_on_sigterm_and_the_last_will_after_kill_9(start: Start, feed: Collector, mosquitto: Broker) -> None:
    def states() -> list[tuple[str, str]]:
        return [(p["state"], p["reason"]) for p in feed.payloads("status")]

    daemon = start()
    wait_until(lambda: ("online", "connected") in states(), what="online")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    wait_until(lambda: states()[-1] == ("offline", "clean stop"), what="offline on a clean stop")
    assert _events(feed, "daemon")[-1]["details"] == {"state": "stopping"}
    daemon = start()
    wait_until(lambda: states()[-1] == ("online", "connected"), what="online again")
    daemon.signal(signal.SIGKILL)
    daemon.wait()
    wait_until(lambda: states()[-1] == ("offline", "connection lost"), what="the last will")
    runs = [p["run_id"] for p in feed.payloads("status")]
    assert runs[0] == runs[1] != runs[2] == runs[3]  # the will carries the run it was registered by
    late = Collector(mosquitto, [PREFIX + "status"]).start()
    try:
        wait_until(lambda: late.on("status"), what="the retained status")
        assert late.on("status")[0].retain and late.payloads("status")[0]["reason"] == "connection lost"
    finally:
        late.stop()


def test_broker_killed_mid_session_the_session_completes_and_the_daemon_reconnects(hil_row: Row, bench: Bench, start: Start, feed: Collector, mosquitto: Broker) -> None:
    hil_row.set(scenario="broker killed mid-session")
    budget_j = 30.0
    daemon = start(queue_size=10)
    before = bench.truth()["ls4"]
    session_id = _emitting(daemon, bench, fixed_plan(power_w=POWER_W, budget_j=budget_j))
    mosquitto.kill()
    wait_until(lambda: daemon.status()["mqtt"]["connected"] is False, what="the loss noticed")
    wait_until(lambda: daemon.status()["mqtt"]["telemetry_dropped"] > 0, what="the queue full: oldest telemetry dropped")
    wait_until(lambda: daemon.session_state() == "COMPLETE", timeout_s=60, what="session COMPLETE without a broker")
    truth = bench.truth()["ls4"]
    for c in (0, 1):
        assert budget_j - 1.0 <= truth["counter_energy_j"][c] <= budget_j + POWER_W * 0.1
    assert truth["true_output_mw"] == [0.0] * 4
    record = daemon.ok("session", id=session_id)
    hil_row.set(end_state=record["state"])
    hil_row.energy_error(record["delivered_energy_j"], [t - b for t, b in zip(truth["true_tip_energy_j"], before["true_tip_energy_j"])])
    status = daemon.status()["mqtt"]
    assert status["events_dropped"] == 0 and status["events_queued"] >= 1 and status["error"].startswith("mqtt: broker 127.0.0.1:")
    mosquitto.start()
    wait_until(lambda: daemon.status()["mqtt"]["connected"], timeout_s=20, what="laserd back on the broker")
    late = Collector(mosquitto, [PREFIX + "session", PREFIX + "status"]).start()
    try:
        wait_until(lambda: late.on("session") and late.on("status"), what="retained session and status")
        summary = late.payloads("session")[-1]
        assert summary["session_id"] == session_id and summary["state"] == "COMPLETE"
        assert late.payloads("status")[-1]["state"] == "online" and late.payloads("status")[-1]["telemetry_dropped"] > 0
    finally:
        late.stop()
    wait_until(lambda: daemon.status()["mqtt"]["events_queued"] == 0, what="the queued events delivered")
    # telemetry resumes, and shows the gap the dropped messages left
    wait_until(lambda: feed.payloads("telemetry") and feed.payloads("telemetry")[-1]["session"]["state"] == "COMPLETE", timeout_s=20, what="telemetry again")
    seqs = [p["seq"] for p in feed.payloads("telemetry")]
    assert any(b - a > 1 for a, b in zip(seqs, seqs[1:]))


def test_the_command_topic_stop_works_when_enabled(bench: Bench, start: Start, feed: Collector) -> None:
    daemon = start(command_topic=True)
    session_id = _emitting(daemon, bench, fixed_plan(power_w=POWER_W, budget_j=500.0))
    wait_until(lambda: bench.truth()["ls4"]["true_output_mw"][0] > 0, what="light")
    feed.publish(PREFIX + "command", json.dumps({"command": "stop"}))
    wait_until(lambda: daemon.session_state() == "ABORTED", what="session ABORTED by the MQTT stop")
    truth = bench.truth()["ls4"]
    assert truth["true_output_mw"] == [0.0] * 4 and truth["state"] == "READY"
    wait_until(lambda: ("EMITTING", "ABORTED") in _transitions(feed, session_id), what="the ABORTED event")
    accepted = _events(feed, "command")
    assert accepted and accepted[0]["details"]["accepted"] is True
    assert "event=mqtt-command command=stop" in daemon.log_text()
    assert daemon.status()["mqtt"]["commands_accepted"] == 1
    assert "mqtt_command" in [e["kind"] for e in daemon.ok("session", id=session_id)["events"]]  # on the session's record


def test_the_command_topic_is_ignored_when_disabled(bench: Bench, start: Start, feed: Collector) -> None:
    daemon = start(command_topic=False)
    _emitting(daemon, bench, fixed_plan(power_w=POWER_W, budget_j=500.0))
    feed.publish(PREFIX + "command", json.dumps({"command": "stop"}))
    # barrier: five more telemetry messages through the same broker after the stop was accepted by it
    seen = len(feed.on("telemetry"))
    wait_until(lambda: len(feed.on("telemetry")) >= seen + 5, what="five more telemetry messages")
    assert feed.payloads("telemetry")[-1]["session"]["state"] == "EMITTING"
    assert daemon.session_state() == "EMITTING" and bench.truth()["ls4"]["true_output_mw"][0] > 0
    status = daemon.status()["mqtt"]
    assert status["commands_accepted"] == 0 and status["commands_refused"] == 0
    assert not _events(feed, "command")


NOT_STOP = [
    {"command": "arm"},
    {"command": "load", "plan_text": fixed_plan()},
    {"command": "ack"},
    {"command": "pullback"},
    {"command": "disarm"},
    {"command": "status"},
    {"cmd": "arm"},  # the operator socket's own format
    {"command": "set_limit", "max_channel_power_w": 10.0},
    {"max_channel_power_w": 10.0},
    {"command": "stop", "then": "arm"},
    {"command": ["stop"]},
    {"command": "STOP"},
    {"command": "stop "},
    {"command": None},
    {},
]
GARBAGE = [b"", b"arm", b"null", b"[]", b'"stop"', b"\xff\xfe\x00", b'{"command": "arm", "command": "stop"}', b'{"command": NaN}', b"{" * 5000]


def test_nothing_over_mqtt_can_arm_load_ack_or_raise_a_limit(bench: Bench, start: Start, feed: Collector) -> None:
    daemon = start(command_topic=True)
    session_id = daemon.ok("load", plan_text=fixed_plan(power_w=POWER_W, budget_j=30.0))["session_id"]
    bench("footswitch", "press")  # held down: anything that armed the LS-4 would start the light at once
    messages = [json.dumps(m).encode() for m in NOT_STOP] + GARBAGE
    for payload in messages:
        feed.publish(PREFIX + "command", payload)
    wait_until(lambda: daemon.status()["mqtt"]["commands_refused"] == len(messages), what="every message refused")
    status = daemon.status()
    assert status["session_state"] == "LOADED" and status["session_id"] == session_id and status["trip"] is None
    assert status["mqtt"]["commands_accepted"] == 0
    truth = bench.truth()
    assert truth["ls4"]["state"] == "READY" and truth["ls4"]["true_output_mw"] == [0.0] * 4
    assert truth["emission_started_s"] is None  # never, not even for a cycle
    refusals = _events(feed, "command")
    assert refusals and not any(p["details"]["accepted"] for p in refusals)
    # rate limited: reported at most once a second, the rest counted into the next report
    assert sum(1 + p["details"]["suppressed"] for p in refusals) <= len(messages)
    assert "event=mqtt-command-refused" in daemon.log_text()
    # and the operator can still do everything on the socket (the LS-4 wants a fresh press once armed)
    daemon.ok("arm")
    bench("footswitch", "release")
    bench("footswitch", "press")
    wait_until(lambda: bench.truth()["ls4"]["true_output_mw"][0] > 0, what="light, from the operator's arm and the footswitch")
    daemon.ok("stop")


def test_laserctl_monitor_shows_one_frame_from_the_live_feed(bench: Bench, start: Start, feed: Collector, mosquitto: Broker) -> None:
    daemon = start()
    _emitting(daemon, bench, fixed_plan(power_w=POWER_W, budget_j=500.0))
    wait_until(lambda: feed.payloads("telemetry") and feed.payloads("telemetry")[-1]["session"]["state"] == "EMITTING", what="telemetry EMITTING")
    result = laserctl(daemon.socket, "monitor", "--broker", mosquitto.address, "--prefix", PREFIX, "--once")
    assert result.returncode == 0, result.stderr
    frame = result.stdout
    assert DEVICE in frame and "EMITTING" in frame and "online" in frame
    assert "ch0" in frame and "/ 500 J" in frame and "p0" in frame and "tip" in frame
    assert "seq gaps 0" in frame
    daemon.ok("stop")

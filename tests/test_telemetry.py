"""MQTT telemetry without a broker: payloads against protocol/schemas, the queues' drop policy, the
telemetry rate, the command topic's parser against its schema, error lines, and the daemon-side
feed with real sessions. (With real mosquitto processes: hil_tests/test_telemetry*.py.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import ssl
from pathlib import Path
from typing import Any

import aiomqtt
import jsonschema
import pytest
from aiomqtt.exceptions import MqttCodeError, MqttConnectError
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from controller.config import load_config, parse_config
from controller.cycle_stats import CycleStats
from controller.journal import Journal
from controller.plan import load_plan
from controller.safety_limits import plan_limits
from controller.session_states import Event, State
from controller.telemetry import (
    SCHEMA_EVENT,
    BrokerError,
    BrokerSettings,
    CommandRefused,
    Identity,
    ObservedSession,
    ProbeView,
    PublisherSettings,
    SessionView,
    TelemetryFeed,
    TelemetryPublisher,
    Topics,
    _RefusalReporter,
    cycle_percentiles,
    describe_error,
    encode,
    event_payload,
    parse_command,
    read_password,
    schema_file,
    session_payload,
    status_payload,
    telemetry_payload,
)
from protocol import ft8 as FT8
from protocol import ls4 as LS4
from protocol.ft8 import FT8Snapshot
from protocol.ls4 import DeviceState, FaultCode, Interlocks, LS4Snapshot
from safety.types import Finding, Severity
from safety.supervisor import SafetySupervisor

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
KINDS = ("status", "telemetry", "event", "session", "command")
IDENT = Identity(device_id="ls4-test", run_id="0123456789abcdef")


def _validator(kind: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(schema_file(kind).read_text()), format_checker=jsonschema.FormatChecker())


VALIDATORS = {kind: _validator(kind) for kind in KINDS}


def valid(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Validate the payload as it goes on the wire (encoded, decoded)."""
    wire = json.loads(encode(payload))
    VALIDATORS[kind].validate(wire)
    return wire


def ls4_snapshot(**fields: Any) -> LS4Snapshot:
    return dataclasses.replace(LS4Snapshot.from_words([0] * LS4.INPUT_COUNT), **{"fault_channel": None, **fields})


def ft8_snapshot(**fields: Any) -> FT8Snapshot:
    return dataclasses.replace(FT8Snapshot.from_words([0] * FT8.INPUT_COUNT), **fields)


def _settings(**overrides: Any) -> PublisherSettings:
    values: dict[str, Any] = {
        "broker": BrokerSettings(host="127.0.0.1", port=1),
        "device_id": IDENT.device_id,
        "topics": Topics("laser/ls4-test/"),
        "telemetry_hz": 5.0,
        "queue_size": 10,
    }
    values.update(overrides)
    return PublisherSettings(**values)


# ----- schemas ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_schema_is_a_valid_draft_2020_12_schema(kind: str) -> None:
    jsonschema.Draft202012Validator.check_schema(json.loads(schema_file(kind).read_text()))


def test_the_docs_name_every_topic_schema_and_payload_field() -> None:
    doc = (ROOT / "docs" / "telemetry.md").read_text()
    for kind in KINDS:
        schema = json.loads(schema_file(kind).read_text())
        assert f"protocol/schemas/{kind}.v1.json" in doc
        if kind != "command":
            assert schema["properties"]["schema"]["const"] in doc
        fields = set(schema["properties"])
        for definition in schema.get("$defs", {}).values():
            fields |= set(definition.get("properties", {}))
        for prop in schema["properties"].values():
            for sub in [prop, *prop.get("oneOf", [])]:
                fields |= set(sub.get("properties", {}))
        for clause in schema.get("allOf", []):
            fields |= set(clause["then"]["properties"]["details"].get("properties", {}))
        missing = sorted(f for f in fields if f"`{f}`" not in doc)
        assert not missing, f"docs/telemetry.md does not describe {kind} fields {missing}"


# ----- payloads ---------------------------------------------------------------------------------


def test_status_and_event_payloads_are_valid() -> None:
    for state, reason in (("online", "connected"), ("offline", "clean stop"), ("offline", "connection lost")):
        valid("status", status_payload(ident=IDENT, state=state, reason=reason, t_wall_s=1.7e9, telemetry_hz=5.0, command_topic_enabled=False, telemetry_dropped=3, events_dropped=0))
    examples = [
        ("session_state", {"from": "ARMED", "to": "EMITTING", "event": "FOOTSWITCH_PRESSED", "reason": "footswitch pressed"}),
        ("trip", {"rule": "tip_temp_cap", "channel": 0, "value": 96.1, "limit": 95.0}),
        ("finding", {"rule": "power_clamp", "channel": None, "value": None, "limit": None}),
        ("fault", {"device": "LS-4", "fault_code": "ESTOP", "fault_channel": None, "device_state": "FAULT"}),
        ("link", {"bus": "main", "up": False}),
        ("ack", {"what": "trip", "rule": "ls4_fault"}),
        ("command", {"accepted": False, "command": None, "reason": "not UTF-8 JSON", "suppressed": 4}),
        ("events_dropped", {"count": 3, "total": 7}),
        ("daemon", {"state": "started"}),
    ]
    for seq, (kind, details) in enumerate(examples):
        valid("event", event_payload(ident=IDENT, event_seq=seq, t_wall_s=1.7e9, kind=kind, message="x\ny", session_id=1, details=details))
    with pytest.raises(jsonschema.ValidationError):  # the details of a kind are checked, not just "an object"
        valid("event", event_payload(ident=IDENT, event_seq=0, t_wall_s=1.0, kind="trip", message="x", session_id=None, details={"rule": "x"}))


def _view(**overrides: Any) -> SessionView:
    values: dict[str, Any] = {
        "session_id": 7,
        "state": "EMITTING",
        "open": True,
        "illumination": 0,
        "illuminations": 2,
        "plan_sha256": "a" * 64,
        "max_session_energy_j": 1000.0,
        "session_energy_j": (12.5, 12.4, 0.0, 0.0),
        "illumination_energy_j": (12.5, 12.4, 0.0, 0.0),
        "budgets_j": (150.0, 150.0, None, None),
        "fibres_done": frozenset({1}),
        "probes": (
            ProbeView(channel=0, role="tip", max_temp_c=95.0, max_cem43_min=None, lethal_cem43_min=None),
            ProbeView(channel=4, role="margin", max_temp_c=None, max_cem43_min=None, lethal_cem43_min=240.0),
            ProbeView(channel=5, role="protected", max_temp_c=42.0, max_cem43_min=5.0, lethal_cem43_min=None),
        ),
        "cem43_min": {0: 30.2, 4: 1.5, 5: 0.01},
        "end_reason": None,
    }
    values.update(overrides)
    return SessionView(**values)


def _telemetry(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "ident": IDENT,
        "seq": 0,
        "t_wall_s": 1.7e9,
        "t_host_s": 12.0,
        "time_scale": 1.0,
        "daemon_state": "running",
        "ls4": ls4_snapshot(device_state=DeviceState.EMITTING, interlocks=Interlocks.KEY_ON | Interlocks.FOOTSWITCH_PRESSED, output_power_mw=(3000, 2990, 0, 0), energy_mj=(12500, 12400, 0, 0)),
        "ft8": ft8_snapshot(temperature_c=(60.5, 59.0, 37.0, None, 41.0, 38.2, 37.0, 37.0)),
        "setpoint_mw": (3000, 3000, 0, 0),
        "session": _view(),
        "trip": None,
        "links": {"main": (True, {"requests": 10, "ok": 10, "timeouts": 0, "crc_errors": 0, "exception_responses": 0, "connection_errors": 0, "reconnects": 0, "consecutive_failures": 0})},
        "cycle": CycleStats(period_s=0.1).as_dict(),
        "queues": {"telemetry_dropped": 0, "telemetry_queued": 1, "events_dropped": 0, "events_queued": 0},
    }
    values.update(overrides)
    return telemetry_payload(**values)


def test_telemetry_payload_is_valid_and_carries_what_the_console_shows() -> None:
    wire = valid("telemetry", _telemetry())
    ch0, ch2 = wire["channels"][0], wire["channels"][2]
    assert ch0 == {"channel": 0, "in_plan": True, "setpoint_mw": 3000, "output_mw": 3000, "energy_j": 12.5, "budget_j": 150.0, "done": False, "counter_energy_j": 12.5}
    assert ch2["in_plan"] is False and ch2["budget_j"] is None and wire["channels"][1]["done"] is True
    probes = {p["channel"]: p for p in wire["probes"]}
    assert probes[0]["role"] == "tip" and probes[0]["max_temp_c"] == 95.0 and probes[0]["cem43_min"] == 30.2
    assert probes[5]["max_temp_c"] == 42.0 and probes[5]["max_cem43_min"] == 5.0
    assert probes[4]["lethal_cem43_min"] == 240.0 and probes[3]["temp_c"] is None and probes[3]["role"] is None
    assert wire["ls4"]["interlocks"] == ["KEY_ON", "FOOTSWITCH_PRESSED"]
    assert wire["session"] == {"id": 7, "state": "EMITTING", "illumination": 0, "illuminations": 2, "session_energy_j": 24.9, "max_session_energy_j": 1000.0}


def test_telemetry_without_readings_session_or_after_the_session_is_valid() -> None:
    idle = valid("telemetry", _telemetry(ls4=None, ft8=None, session=None, setpoint_mw=(0, 0, 0, 0)))
    assert idle["session"]["state"] == "IDLE" and idle["ls4"] is None and all(p["temp_c"] is None for p in idle["probes"])
    ended = valid("telemetry", _telemetry(session=_view(state="COMPLETE", open=False, end_reason="endpoint reached")))
    assert ended["session"]["session_energy_j"] is None and ended["channels"][0]["energy_j"] is None  # the books are closed
    trip = Finding(rule="tip_temp_cap", severity=Severity.HARD, message="tip probe 0 at 96.0 degC", channel=0, value=96.0, limit=95.0)
    tripped = valid("telemetry", _telemetry(trip=trip, ls4=ls4_snapshot(device_state=DeviceState.FAULT, fault_code=FaultCode.ESTOP)))
    assert tripped["trip"]["rule"] == "tip_temp_cap" and tripped["ls4"]["fault_code"] == "ESTOP"


@settings(max_examples=50, deadline=None)
@given(
    output=st.lists(st.integers(0, 11000), min_size=4, max_size=4),
    energy=st.lists(st.integers(0, 2**32 - 1), min_size=4, max_size=4),
    temps=st.lists(st.none() | st.floats(-50, 170, allow_nan=False).map(lambda t: round(t, 2)), min_size=8, max_size=8),
    seq=st.integers(0, 2**40),
    state=st.sampled_from(list(DeviceState)),
    fault=st.sampled_from(list(FaultCode)),
    fault_channel=st.none() | st.integers(0, 3),
    interlocks=st.integers(0, 63).map(Interlocks),
)
def test_any_reading_makes_a_valid_telemetry_payload(output, energy, temps, seq, state, fault, fault_channel, interlocks) -> None:
    ls4 = ls4_snapshot(output_power_mw=tuple(output), energy_mj=tuple(energy), device_state=state, fault_code=fault, fault_channel=fault_channel, interlocks=interlocks)
    valid("telemetry", _telemetry(seq=seq, ls4=ls4, ft8=ft8_snapshot(temperature_c=tuple(temps))))


def test_session_payload_is_valid_and_holds_no_patient_identifier() -> None:
    idle = valid("session", session_payload(ident=IDENT, t_wall_s=1.7e9, view=None))
    assert idle["state"] == "IDLE" and idle["session_id"] is None
    wire = valid("session", session_payload(ident=IDENT, t_wall_s=1.7e9, view=_view()))
    assert wire["cem43_min"] == {"0": 30.2, "4": 1.5, "5": 0.01} and wire["fibres_done"] == [1]
    assert "patient_id" not in wire and "operator" not in wire


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 500), st.floats(0, 500)), max_size=300))
def test_cycle_percentiles_are_the_cycle_statistics_own(samples: list[tuple[float, float]]) -> None:
    stats = CycleStats(period_s=0.1)
    for late_ms, took_ms in samples:
        stats.record(started_late_ms=late_ms, took_wall_ms=took_ms, ended_s=0.0, missed=False)
    expected = stats.as_dict()
    assert cycle_percentiles(stats) == {k: expected[k] for k in cycle_percentiles(stats)}


def test_non_finite_numbers_become_null_instead_of_wedging_the_queue() -> None:
    assert json.loads(encode({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}})) == {"a": None, "b": [1.0, None], "c": {"d": None}}


# ----- the command topic ------------------------------------------------------------------------


def test_exactly_stop_is_accepted() -> None:
    assert parse_command(b'{"command": "stop"}', retained=False) == "stop"
    assert parse_command(b' {"command":"stop"}\n', retained=False) == "stop"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"command": "arm"}', 'command "arm" refused'),
        (b'{"command": "stop", "x": 1}', "exactly one key"),
        (b'{"command": "stop", "command": "stop"}', "duplicate keys"),
        (b'{"command": "arm", "command": "stop"}', "duplicate keys"),
        (b'{"command": NaN}', "NaN is not JSON"),
        (b'["stop"]', "a JSON list, not an object"),
        (b"\xff", "not UTF-8 JSON"),
        (b"", "not UTF-8 JSON"),
        (b'{"command": "' + b"x" * 2000 + b'"}', "bytes: a command is at most"),
        (b"[" * 100_000, "bytes"),
    ],
)
def test_anything_else_is_refused_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(CommandRefused, match=re.escape(reason)):
        parse_command(payload, retained=False)


def test_a_retained_stop_is_refused() -> None:
    with pytest.raises(CommandRefused, match="retained"):
        parse_command(b'{"command": "stop"}', retained=True)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8) | st.sampled_from(["stop", "arm", "command"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["command", "stop", "cmd", "schema"]) | st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(document=json_values | st.fixed_dictionaries({"command": json_values}) | st.fixed_dictionaries({"command": st.sampled_from(["stop", "Stop", "stop\x00"])}))
def test_the_parser_agrees_with_the_command_schema(document: Any) -> None:
    schema_says = VALIDATORS["command"].is_valid(document)
    try:
        parse_command(json.dumps(document).encode(), retained=False)
        parser_says = True
    except CommandRefused:
        parser_says = False
    assert parser_says == schema_says, document


def test_refusal_reports_are_rate_limited_and_count_what_they_skipped() -> None:
    reporter = _RefusalReporter(period_s=1.0)
    assert reporter.due(10.0) == 0
    assert [reporter.due(10.0 + i * 0.1) for i in range(1, 5)] == [None] * 4
    assert reporter.due(11.0) == 4 and reporter.due(12.5) == 0


# ----- the publisher's queues (no broker needed: they are memory) ------------------------------


def test_telemetry_queue_drops_the_oldest_and_counts() -> None:
    pub = TelemetryPublisher(settings=_settings(queue_size=10), ident=IDENT)
    for seq in range(25):
        pub.telemetry({"seq": seq})
    assert pub.queues() == {"telemetry_dropped": 15, "telemetry_queued": 10, "events_dropped": 0, "events_queued": 0}
    assert [json.loads(p)["seq"] for p in pub._telemetry] == list(range(15, 25))


def test_events_are_kept_up_to_their_bound_then_each_loss_is_counted_logged_and_journaled(caplog: pytest.LogCaptureFixture) -> None:
    journal: list[tuple[str, str, dict[str, Any]]] = []
    pub = TelemetryPublisher(settings=_settings(event_queue_max=100), ident=IDENT, on_journal=lambda *r: journal.append(r))
    for n in range(100):
        pub.event(kind="daemon", message=str(n), details={"state": "started"})
    assert pub.queues()["events_dropped"] == 0 and not journal
    for n in range(5):
        pub.event(kind="daemon", message=str(n), details={"state": "started"})
    assert pub.queues()["events_dropped"] == 5 and pub.status()["events_dropped"] == 5
    assert [k for k, _, _ in journal] == ["mqtt_events_dropped"] and "event=mqtt-events-dropped" in caplog.text
    assert [e["event_seq"] for e in pub._events][:2] == [5, 6]  # the oldest went
    for e in list(pub._events)[:3]:
        valid("event", e)


def test_a_journal_that_fails_does_not_stop_the_publisher(caplog: pytest.LogCaptureFixture) -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("disk full")

    pub = TelemetryPublisher(settings=_settings(event_queue_max=1), ident=IDENT, on_journal=broken)
    pub.event(kind="daemon", message="a", details={"state": "started"})
    pub.event(kind="daemon", message="b", details={"state": "started"})
    assert pub.queues()["events_dropped"] == 1 and "mqtt-journal-failed" in caplog.text


async def test_start_and_stop_with_no_broker_return_at_once_and_say_what_never_left(caplog: pytest.LogCaptureFixture) -> None:
    journal: list[tuple[str, str, dict[str, Any]]] = []
    pub = TelemetryPublisher(settings=_settings(), ident=IDENT, on_journal=lambda *r: journal.append(r))
    await pub.start()
    pub.event(kind="daemon", message="laserd stopping", details={"state": "stopping"})
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await pub.stop()
    assert loop.time() - started < 1.0 and not pub.connected
    assert journal == [("mqtt_events_undelivered", "1 MQTT events not delivered: the broker was unavailable when laserd stopped", {"count": 1})]
    assert "event=mqtt-events-undelivered count=1" in caplog.text


# ----- errors -----------------------------------------------------------------------------------


def test_connection_errors_are_one_line_an_operator_can_act_on() -> None:
    b = "10.0.0.1:8883"
    not_authorised = MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=135))
    assert describe_error(not_authorised, broker=b) == "mqtt: not authorised by broker 10.0.0.1:8883 (Not authorized)"
    assert describe_error(MqttConnectError(4), broker=b).startswith("mqtt: not authorised by broker 10.0.0.1:8883")
    assert describe_error(aiomqtt.MqttError("[Errno 111] Connection refused"), broker=b) == "mqtt: broker 10.0.0.1:8883 unreachable: connection refused"
    assert describe_error(aiomqtt.MqttError("Operation timed out"), broker=b) == "mqtt: broker 10.0.0.1:8883 did not answer within 5 s"
    tls = aiomqtt.MqttError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed\ncertificate (_ssl.c:1006)")
    assert describe_error(tls, broker=b) == "mqtt: TLS with broker 10.0.0.1:8883 failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate (_ssl.c:1006)"
    assert describe_error(MqttCodeError(7, "Unexpected disconnection"), broker=b).startswith("mqtt: connection to broker 10.0.0.1:8883 lost")
    assert describe_error(ssl.SSLError("bad"), broker=b).startswith("mqtt: TLS with broker")
    assert describe_error(aiomqtt.MqttError("Disconnected during message iteration"), broker=b) == "mqtt: connection to broker 10.0.0.1:8883 lost"


def test_the_password_is_the_first_line_of_its_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    assert read_password(tmp_path / "pw") == "s3cret"
    with pytest.raises(BrokerError, match=r"^mqtt: cannot read password_file .*missing: No such file"):
        read_password(tmp_path / "missing")


# ----- from the config ------------------------------------------------------------------------


def test_disabled_mqtt_makes_no_feed_and_enabled_follows_the_config(tmp_path: Path) -> None:
    text = (EXAMPLES / "laserd.toml").read_text()
    assert TelemetryFeed.from_config(parse_config(text, base_dir=EXAMPLES).mqtt, time_scale=1.0) is None
    (tmp_path / "pw").write_text("x")
    enabled = text.replace("enabled = false", 'enabled = true\nusername = "laserd"\npassword_file = "pw"\ncommand_topic_enabled = true\nqueue_size = 50')
    feed = TelemetryFeed.from_config(parse_config(enabled, base_dir=tmp_path).mqtt, time_scale=4.0)
    assert feed is not None
    s = feed.publisher.settings
    assert s.topics.telemetry == "laser/ls4-sim/telemetry" and s.queue_size == 50 and s.command_topic_enabled
    assert s.broker.password_file == tmp_path / "pw" and s.broker.address == "127.0.0.1:1883"
    assert re.fullmatch(r"[0-9a-f]{16}", feed.publisher.ident.run_id)


# ----- the daemon's side ----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_telemetry_is_due_at_its_rate_in_wall_time_without_bursts() -> None:
    clock = Clock()
    feed = TelemetryFeed(publisher=TelemetryPublisher(settings=_settings(telemetry_hz=4.0), ident=IDENT), monotonic=clock)
    due = []
    for _ in range(80):  # 10 s of 8 Hz control cycles (binary-exact times)
        due.append(feed.due())
        clock.now_s += 0.125
    assert sum(due) == 40 and due[:4] == [True, False, True, False]
    clock.now_s += 5.0  # a stall: one message, then the period from now, not 20 to catch up
    assert feed.due() and not feed.due()
    clock.now_s += 0.25
    assert feed.due()


@pytest.fixture
def live_session(tmp_path: Path):
    config = load_config(EXAMPLES / "laserd.toml")
    plan = load_plan(EXAMPLES / "plan-fixed.toml", limits=config.limits)
    journal = Journal(tmp_path / "journal.sqlite")
    supervisor = SafetySupervisor(limits=plan_limits(config, plan))
    ls4 = ls4_snapshot(device_state=DeviceState.READY)
    supervisor.begin_session(ls4=ls4, limits=plan_limits(config, plan), now_s=0.0)
    session_id = journal.create_session(plan, energy_baseline_j=(0.0,) * 4)
    changes: list[tuple[State, Event, str]] = []
    session = ObservedSession(session_id=session_id, plan=plan, journal=journal, safety=supervisor, on_change=lambda s, before, event, reason: changes.append((before, event, reason)))
    yield session, changes
    journal.close()


def test_every_session_transition_is_observed_and_published(live_session) -> None:
    session, changes = live_session
    feed = TelemetryFeed(publisher=TelemetryPublisher(settings=_settings(), ident=IDENT))
    session.on_change = lambda s, before, event, reason: (changes.append((before, event, reason)), feed.session_changed(s, before=before, event=event, reason=reason))
    session.apply(Event.ARM, "operator armed")
    session.apply(Event.ABORT, "operator stop")
    assert changes == [(State.LOADED, Event.ARM, "operator armed"), (State.ARMED, Event.ABORT, "operator stop")]
    events = [valid("event", e) for e in feed.publisher._events]
    assert [(e["details"]["from"], e["details"]["to"]) for e in events] == [("LOADED", "ARMED"), ("ARMED", "ABORTED")]
    assert all(e["schema"] == SCHEMA_EVENT and e["session_id"] == session.session_id for e in events)
    summary = valid("session", feed.publisher._session)  # the retained summary: the latest
    assert summary["state"] == "ABORTED" and summary["end_reason"] == "operator stop" and summary["budgets_j"] == [150.0, 150.0, None, None]


def test_the_feed_builds_valid_telemetry_from_a_real_session_and_reports_changes(live_session) -> None:
    session, _ = live_session
    clock = Clock()
    feed = TelemetryFeed(publisher=TelemetryPublisher(settings=_settings(), ident=IDENT), time_scale=4.0, monotonic=clock)

    class Link:
        def __init__(self, up: bool) -> None:
            self.up = up
            self.counters = type("C", (), {"as_dict": lambda self: {"requests": 1, "ok": 1, "timeouts": 0, "crc_errors": 0, "exception_responses": 0, "connection_errors": 0, "reconnects": 0, "consecutive_failures": 0}})()

    ft8 = ft8_snapshot(temperature_c=(50.0, 49.0, 37.0, 37.0, 39.0, 38.0, 37.0, 37.0))
    args = {"now_s": 1.0, "daemon_state": "running", "ft8": ft8, "setpoint_mw": (3000, 3000, 0, 0), "session": session, "trip": None, "stats": CycleStats(period_s=0.1)}
    feed.cycle(ls4=ls4_snapshot(device_state=DeviceState.READY), links={"main": Link(True)}, **args)
    clock.now_s += 0.1
    feed.cycle(ls4=ls4_snapshot(device_state=DeviceState.FAULT, fault_code=FaultCode.ESTOP), links={"main": Link(False)}, **args)  # not due: events only
    clock.now_s += 0.2
    feed.cycle(ls4=ls4_snapshot(device_state=DeviceState.READY), links={"main": Link(True)}, **args)
    telemetry = [valid("telemetry", json.loads(t)) for t in feed.publisher._telemetry]
    assert [t["seq"] for t in telemetry] == [0, 1] and telemetry[0]["time_scale"] == 4.0
    probes = {p["channel"]: p for p in telemetry[0]["probes"]}
    assert probes[0]["role"] == "tip" and probes[4]["role"] == "margin" and probes[5]["role"] == "protected" and probes[5]["max_temp_c"] == 42.0
    kinds = [(e["kind"], e["message"]) for e in (valid("event", e) for e in feed.publisher._events)]
    assert kinds == [
        ("fault", "LS-4 fault ESTOP (device FAULT)"),
        ("link", "bus main DOWN"),
        ("fault", "LS-4 fault cleared (device READY)"),
        ("link", "bus main up"),
    ]


def test_a_telemetry_bug_is_logged_never_raised_into_the_control_cycle(caplog: pytest.LogCaptureFixture) -> None:
    feed = TelemetryFeed(publisher=TelemetryPublisher(settings=_settings(), ident=IDENT))
    feed.cycle(now_s=0.0, daemon_state="running", ls4=None, ft8=None, setpoint_mw=(), session=None, trip=None, stats=CycleStats(period_s=0.1), links={})  # type: ignore[arg-type]
    feed.finding(None, session_id=None)  # type: ignore[arg-type]
    feed.session_changed(None, before=State.IDLE, event=Event.LOAD, reason="x")  # type: ignore[arg-type]
    assert feed.failures == 3 and "event=telemetry-failed" in caplog.text

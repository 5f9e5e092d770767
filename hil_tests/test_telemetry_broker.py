"""The MQTT publisher against real mosquitto processes: plain, TLS with a password file, down,
stalled, restarting. Every payload a subscriber sees is validated against protocol/schemas.

These run the publisher in-process (no simulator, no daemon); hil_tests/test_telemetry_hil.py runs
the whole laserd.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.telemetry import (
    BrokerSettings,
    Identity,
    PublisherSettings,
    TelemetryPublisher,
    Topics,
    session_payload,
)
from mosquitto_broker import PASSWORD, USERNAME, Broker, Collector, TlsFiles, free_port, validate, validate_all

DEVICE = "bench-1"
PREFIX = f"laser/{DEVICE}/"
ALL = [PREFIX + "#"]
WAIT_S = 10.0


async def until(condition: Callable[[], Any], *, what: str, timeout_s: float = WAIT_S) -> Any:
    """Poll `condition` on the event loop (the publisher runs meanwhile) until truthy."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.01)
    return value


def _settings(server: Broker, **overrides: Any) -> PublisherSettings:
    values: dict[str, Any] = {
        "broker": BrokerSettings(host="127.0.0.1", port=server.port),
        "device_id": DEVICE,
        "topics": Topics(PREFIX),
        "telemetry_hz": 5.0,
        "queue_size": 10,
        "backoff_min_s": 0.05,  # a restarted broker is found again quickly in tests
        "backoff_max_s": 0.5,
    }
    values.update(overrides)
    return PublisherSettings(**values)


def _telemetry(seq: int) -> dict[str, Any]:
    """A telemetry-topic payload the publisher treats as opaque (schema-valid ones come from the daemon tests)."""
    return {"seq": seq}


class Journal:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, kind: str, message: str, details: dict[str, Any]) -> None:
        self.records.append((kind, message, details))

    def kinds(self) -> list[str]:
        return [k for k, _, _ in self.records]


@pytest.fixture
def collector(mosquitto: Broker):
    c = Collector(mosquitto, ALL).start()
    yield c
    c.stop()


async def test_online_events_session_and_telemetry_with_the_right_qos_and_retain(mosquitto: Broker, collector: Collector) -> None:
    pub = TelemetryPublisher(settings=_settings(mosquitto), ident=Identity.new(DEVICE))
    pub.session(session_payload(ident=pub.ident, t_wall_s=time.time(), view=None))
    pub.event(kind="daemon", message="laserd started", details={"state": "started"})
    await pub.start()
    try:
        await until(lambda: pub.connected, what="connected")
        for seq in range(3):
            pub.telemetry(_telemetry(seq))
        await until(lambda: len(collector.on("telemetry")) == 3, what="three telemetry messages")
        status = collector.on("status")[0]
        assert status.qos == 1 and status.json()["state"] == "online"
        event = collector.on("event")[0]
        assert event.qos == 1 and event.json()["kind"] == "daemon" and event.json()["event_seq"] == 0
        assert [m.qos for m in collector.on("telemetry")] == [0, 0, 0]
        assert [m.json()["seq"] for m in collector.on("telemetry")] == [0, 1, 2]
        session = collector.on("session")[0]
        assert session.qos == 1 and session.json()["state"] == "IDLE"
        for m in collector.messages:
            if not m.topic.endswith("telemetry"):
                validate(m.topic.rsplit("/", 1)[-1], m.json())
    finally:
        await pub.stop()
    await until(lambda: collector.on("status")[-1].json()["state"] == "offline", what="offline")
    assert collector.on("status")[-1].json()["reason"] == "clean stop"
    # retained: a subscriber arriving later still learns both
    late = Collector(mosquitto, [PREFIX + "status", PREFIX + "session"]).start()
    try:
        await until(lambda: len(late.messages) == 2, what="retained status and session")
        assert all(m.retain for m in late.messages)
        assert late.payloads("status")[0]["state"] == "offline"
        validate_all(late)
    finally:
        late.stop()


async def test_tls_with_a_password_file(mosquitto_tls: Broker, tls_files: TlsFiles, tmp_path: Path) -> None:
    password_file = tmp_path / "mqtt-password"
    password_file.write_text(PASSWORD + "\n")  # the trailing newline is not part of the password
    broker = BrokerSettings(host="127.0.0.1", port=mosquitto_tls.port, tls=True, ca_file=tls_files.ca_cert, username=USERNAME, password_file=password_file)
    sub = Collector(mosquitto_tls, ALL, ca_file=tls_files.ca_cert, username=USERNAME, password=PASSWORD).start()
    pub = TelemetryPublisher(settings=_settings(mosquitto_tls, broker=broker), ident=Identity.new(DEVICE))
    await pub.start()
    try:
        await until(lambda: pub.connected, what="connected over TLS")
        pub.event(kind="daemon", message="laserd started", details={"state": "started"})
        await until(lambda: sub.on("event"), what="an event over TLS")
        assert pub.error is None and pub.status()["tls"] is True
        assert validate_all(sub) >= 2
    finally:
        await pub.stop()
        sub.stop()


async def test_a_wrong_password_is_one_clear_line_and_never_a_hang(mosquitto_tls: Broker, tls_files: TlsFiles, tmp_path: Path) -> None:
    password_file = tmp_path / "wrong"
    password_file.write_text("not the password\n")
    broker = BrokerSettings(host="127.0.0.1", port=mosquitto_tls.port, tls=True, ca_file=tls_files.ca_cert, username=USERNAME, password_file=password_file)
    pub = TelemetryPublisher(settings=_settings(mosquitto_tls, broker=broker), ident=Identity.new(DEVICE))
    started = time.monotonic()
    await pub.start()
    assert time.monotonic() - started < 0.1  # start does not wait for the broker
    await until(lambda: pub.error, what="an error")
    assert pub.error == f"mqtt: not authorised by broker 127.0.0.1:{mosquitto_tls.port} (Not authorized)"
    assert pub.status()["error"] == pub.error and not pub.connected
    before = time.perf_counter()
    for seq in range(100):
        pub.telemetry(_telemetry(seq))
        pub.event(kind="daemon", message="x", details={"state": "started"})
    assert time.perf_counter() - before < 0.05  # the feeding side never waits
    started = time.monotonic()
    await pub.stop()
    assert time.monotonic() - started < 1.0


async def test_a_broker_we_cannot_verify_is_a_tls_error(mosquitto_tls: Broker, tls_files: TlsFiles, tmp_path: Path) -> None:
    password_file = tmp_path / "pw"
    password_file.write_text(PASSWORD)
    broker = BrokerSettings(host="127.0.0.1", port=mosquitto_tls.port, tls=True, ca_file=tls_files.other_ca_cert, username=USERNAME, password_file=password_file)
    pub = TelemetryPublisher(settings=_settings(mosquitto_tls, broker=broker), ident=Identity.new(DEVICE))
    await pub.start()
    try:
        await until(lambda: pub.error, what="an error")
        assert pub.error.startswith(f"mqtt: TLS with broker 127.0.0.1:{mosquitto_tls.port} failed:")
        assert "certificate verify failed" in pub.error and "\n" not in pub.error
    finally:
        await pub.stop()


async def test_broker_down_drops_the_oldest_telemetry_keeps_every_event_then_delivers(tmp_path: Path) -> None:
    broker = Broker(tmp=tmp_path / "late")
    broker.port = free_port()  # configured, not started yet
    pub = TelemetryPublisher(settings=_settings(broker, queue_size=10), ident=Identity.new(DEVICE))
    await pub.start()
    try:
        await until(lambda: pub.error, what="broker unreachable")
        assert pub.error == f"mqtt: broker 127.0.0.1:{broker.port} unreachable: connection refused"
        for seq in range(25):
            pub.telemetry(_telemetry(seq))
        for n in range(5):
            pub.event(kind="daemon", message=f"event {n}", details={"state": "started"})
        assert pub.queues() == {"telemetry_dropped": 15, "telemetry_queued": 10, "events_dropped": 0, "events_queued": 5}
        broker.start()
        sub = Collector(broker, ALL).start()
        try:
            await until(lambda: pub.connected, what="reconnected")
            await until(lambda: len(sub.on("telemetry")) == 10, what="the ten newest telemetry messages")
            assert [p["event_seq"] for p in sub.payloads("event")] == [0, 1, 2, 3, 4]
            assert [p["seq"] for p in sub.payloads("telemetry")] == list(range(15, 25))
            online = sub.payloads("status")[-1]
            assert online["state"] == "online" and online["telemetry_dropped"] == 15
            validate("status", online)
        finally:
            sub.stop()
    finally:
        await pub.stop()
        broker.stop()


async def test_event_overflow_is_counted_logged_journaled_and_announced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broker = Broker(tmp=tmp_path / "late")
    broker.port = free_port()
    journal = Journal()
    pub = TelemetryPublisher(settings=_settings(broker, event_queue_max=5), ident=Identity.new(DEVICE), on_journal=journal)
    await pub.start()
    try:
        for n in range(8):
            pub.event(kind="daemon", message=f"event {n}", details={"state": "started"})
        assert pub.queues()["events_dropped"] == 3 and pub.status()["events_dropped"] == 3
        assert journal.kinds() == ["mqtt_events_dropped"]  # once per episode, not once per event
        assert "event=mqtt-events-dropped" in caplog.text
        broker.start()
        sub = Collector(broker, ALL).start()
        try:
            await until(lambda: any(p["kind"] == "events_dropped" for p in sub.payloads("event")), what="the events_dropped event")
            events = sub.payloads("event")
            assert [p["event_seq"] for p in events[:5]] == [3, 4, 5, 6, 7]  # the oldest went
            dropped = events[-1]
            assert dropped["details"] == {"count": 3, "total": 3}
            assert journal.kinds() == ["mqtt_events_dropped", "mqtt_events_dropped"]
            assert sub.payloads("status")[-1]["events_dropped"] == 3
            validate_all(sub)
        finally:
            sub.stop()
    finally:
        await pub.stop()
        broker.stop()


async def test_a_stalled_broker_never_blocks_the_feeding_side_nor_the_stop(mosquitto: Broker, collector: Collector) -> None:
    pub = TelemetryPublisher(settings=_settings(mosquitto), ident=Identity.new(DEVICE))
    await pub.start()
    await until(lambda: pub.connected, what="connected")
    mosquitto.pause()
    try:
        worst_s = 0.0
        for seq in range(200):
            before = time.perf_counter()
            pub.telemetry(_telemetry(seq))
            pub.event(kind="daemon", message="x", details={"state": "started"})
            worst_s = max(worst_s, time.perf_counter() - before)
            await asyncio.sleep(0.005)  # pacing, not synchronisation: let the publisher try meanwhile
        assert worst_s < 0.005
        assert pub.queues()["telemetry_dropped"] >= 150
        started = time.monotonic()
        await pub.stop()
        assert time.monotonic() - started < 5.0  # STOP_TIMEOUT_S + the forced cancel
    finally:
        mosquitto.resume()


async def test_a_restarted_broker_is_found_again_and_told_online(mosquitto: Broker, collector: Collector) -> None:
    pub = TelemetryPublisher(settings=_settings(mosquitto), ident=Identity.new(DEVICE))
    await pub.start()
    try:
        await until(lambda: pub.connected, what="connected")
        mosquitto.kill()
        await until(lambda: not pub.connected, what="the loss noticed")
        assert pub.error is not None and pub.error.startswith("mqtt: ")
        mosquitto.start()
        await until(lambda: pub.connected, what="reconnected")
        assert pub.counters.connects == 2
        await until(lambda: len([p for p in collector.payloads("status") if p["state"] == "online"]) == 2, what="online again")
    finally:
        await pub.stop()


async def test_the_command_topic_acts_on_a_live_stop_only_never_a_retained_one(mosquitto: Broker, collector: Collector) -> None:
    # left on the broker by someone: it would be replayed at every reconnect and stop a later session
    collector.publish(PREFIX + "command", b'{"command": "stop"}', retain=True)
    stops: list[str] = []

    async def on_stop() -> str:
        stops.append("stop")
        return "emission stopped"

    journal = Journal()
    pub = TelemetryPublisher(settings=_settings(mosquitto, command_topic_enabled=True), ident=Identity.new(DEVICE), on_stop_command=on_stop, on_journal=journal)
    await pub.start()
    try:
        await until(lambda: pub.counters.commands_refused == 1, what="the retained stop refused")
        assert not stops and journal.records[0][0] == "mqtt_command_refused" and "retained" in journal.records[0][1]
        collector.publish(PREFIX + "command", b'{"command": "arm"}')
        collector.publish(PREFIX + "command", b'{"command": "stop"}')
        await until(lambda: stops, what="the live stop")
        assert stops == ["stop"] and pub.counters.commands_refused == 2 and pub.counters.commands_accepted == 1
        await until(lambda: [p["details"]["accepted"] for p in collector.payloads("event") if p["kind"] == "command"][-1:] == [True], what="the accepted-command event")
        validate_all(collector)
    finally:
        await pub.stop()


async def test_without_the_command_topic_nothing_is_subscribed(mosquitto: Broker, collector: Collector) -> None:
    stops: list[str] = []

    async def on_stop() -> str:
        stops.append("stop")
        return ""

    pub = TelemetryPublisher(settings=_settings(mosquitto, command_topic_enabled=False), ident=Identity.new(DEVICE), on_stop_command=on_stop)
    await pub.start()
    try:
        await until(lambda: pub.connected, what="connected")
        collector.publish(PREFIX + "command", b'{"command": "stop"}')
        pub.telemetry(_telemetry(0))  # barrier: a round trip through the same broker after the stop
        await until(lambda: collector.on("telemetry"), what="the telemetry round trip")
        assert not stops and pub.counters.commands_refused == 0 and pub.counters.commands_accepted == 0
    finally:
        await pub.stop()

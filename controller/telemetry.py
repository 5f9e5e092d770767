"""MQTT telemetry to the monitoring console: outbound only, and never in the control cycle's way.

Two halves:

* `TelemetryFeed`, the daemon's side. The control cycle, the safety layer's finding callback,
  session state changes and acks call its *synchronous* methods, which only build a payload (at
  `telemetry_hz` per wall-clock second for telemetry) and put it into memory. Nothing there waits
  on the network, and nothing there raises: a telemetry bug is logged, never a safety trip.
* `TelemetryPublisher`, a task on the daemon's event loop that owns the broker connection
  (aiomqtt): reconnects with a bounded, jittered backoff, publishes `status` (retained, with an
  `offline` last will), `event` (QoS 1), `session` (retained) and `telemetry` (QoS 0).

Queues. Telemetry is a deque of `mqtt.queue_size`: when full the oldest is dropped and counted
(the console sees a gap in `seq`). Events have their own deque, published before any telemetry and
removed only once the broker has acknowledged them (at least once; `event_seq` lets a consumer
drop a duplicate). It is bounded only so that days without a broker cannot exhaust memory
(`EVENT_QUEUE_MAX`); overflow drops the oldest event, and is counted, logged, journaled, shown in
`status` and `laserctl status`, and announced by an `events_dropped` event once the broker is back.

Inbound. With `mqtt.command_topic_enabled` the publisher subscribes to `<prefix>command` and
accepts exactly `{"command": "stop"}` (protocol/schemas/command.v1.json), live (not retained),
which runs the daemon's operator stop: always safe. Anything else is refused, logged and
journaled (rate limited). Nothing received over MQTT can arm, load, ack or change a limit.

Payloads, topics and rules: docs/telemetry.md; schemas: protocol/schemas/*.v1.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import secrets
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiomqtt
from aiomqtt.exceptions import MqttCodeError, MqttConnectError

from protocol import ft8 as FT8
from protocol import ls4 as LS4
from protocol.ft8 import FT8Snapshot
from protocol.ls4 import LS4Snapshot
from safety.types import Finding, Severity

from .cycle_stats import percentile
from .plan import ProbeRole
from .session import TreatmentSession
from .session_states import Event, State

if TYPE_CHECKING:
    from .config import MqttConfig
    from .cycle_stats import CycleStats
    from .modbus_link import BusLink

log = logging.getLogger("laserd.telemetry")
# aiomqtt and paho log through this one: paho writes a debug line per packet (5 a second and more),
# which `logging.level = "debug"` would otherwise pour into the journal.
mqtt_log = logging.getLogger("laserd.telemetry.mqtt")
mqtt_log.setLevel(logging.WARNING)

SCHEMA_STATUS: Final = "laserhost.status/1"
SCHEMA_TELEMETRY: Final = "laserhost.telemetry/1"
SCHEMA_EVENT: Final = "laserhost.event/1"
SCHEMA_SESSION: Final = "laserhost.session/1"

BACKOFF_MIN_S: Final = 0.5
BACKOFF_MAX_S: Final = 10.0
# Many laser systems reconnecting to one restarted broker should not arrive in lockstep.
BACKOFF_JITTER_FRACTION: Final = 0.2
# The broker publishes the last will this long (x1.5) after a host vanishes without closing the
# connection; a killed process closes it at once.
KEEPALIVE_S: Final = 10
OPERATION_TIMEOUT_S: Final = 5.0  # CONNACK, PUBACK, SUBACK, graceful DISCONNECT
STOP_TIMEOUT_S: Final = 3.0  # the daemon's stop waits at most this long for the last events and `offline`
EVENT_QUEUE_MAX: Final = 10_000  # ~ a day of a busy session's events; memory, not policy
MAX_QUEUED_OUTGOING: Final = 100  # paho's own queue: we publish one at a time, this is a backstop
MAX_QUEUED_INCOMING: Final = 100  # a flood on the command topic is discarded by aiomqtt beyond this
COMMAND_MAX_BYTES: Final = 1024
REFUSAL_REPORT_PERIOD_S: Final = 1.0  # refused commands: at most one journal record/event per second
FAILURE_LOG_EVERY: Final = 30  # an unchanged connect error is logged again every this many attempts
# The cycle-time percentiles sort two 2000-value windows (~0.2 ms, on the event loop): refreshed at
# most this often; the counts in the same object are always current.
CYCLE_PERCENTILES_REFRESH_S: Final = 1.0
MQTT_AUTH_REFUSED_CODES: Final = frozenset({4, 5, 134, 135})  # 3.1.1: bad user/password, not authorised; 5.0: the same


# ----- errors ---------------------------------------------------------------------------------


class TelemetryError(Exception):
    """Base of this module's errors; `str(e)` is one line."""


class BrokerError(TelemetryError):
    """The broker cannot be used: unreachable, refused us, TLS failed, a credential unreadable."""


class CommandRefused(TelemetryError):
    """A message on the command topic that is not the one accepted command."""


# ----- settings -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerSettings:
    """How to reach the broker: shared by the publisher and `laserctl monitor`."""

    host: str
    port: int
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str  # ends with "/"

    @property
    def status(self) -> str:
        return self.prefix + "status"

    @property
    def telemetry(self) -> str:
        return self.prefix + "telemetry"

    @property
    def event(self) -> str:
        return self.prefix + "event"

    @property
    def session(self) -> str:
        return self.prefix + "session"

    @property
    def command(self) -> str:
        return self.prefix + "command"


@dataclass(frozen=True, slots=True, kw_only=True)
class PublisherSettings:
    broker: BrokerSettings
    device_id: str
    topics: Topics
    telemetry_hz: float
    queue_size: int  # telemetry messages kept while the broker is away
    command_topic_enabled: bool = False
    event_queue_max: int = EVENT_QUEUE_MAX
    backoff_min_s: float = BACKOFF_MIN_S
    backoff_max_s: float = BACKOFF_MAX_S

    @classmethod
    def from_config(cls, mqtt: MqttConfig) -> PublisherSettings:
        assert mqtt.host is not None and mqtt.device_id is not None and mqtt.topic_prefix is not None  # config.py: required when enabled
        return cls(
            broker=BrokerSettings(
                host=mqtt.host,
                port=mqtt.port,
                tls=mqtt.tls,
                ca_file=mqtt.tls_ca_file,
                cert_file=mqtt.tls_cert_file,
                key_file=mqtt.tls_key_file,
                username=mqtt.username,
                password_file=mqtt.password_file,
            ),
            device_id=mqtt.device_id,
            topics=Topics(mqtt.topic_prefix),
            telemetry_hz=mqtt.telemetry_hz,
            queue_size=mqtt.queue_size,
            command_topic_enabled=mqtt.command_topic_enabled,
        )


@dataclass(frozen=True, slots=True)
class Identity:
    device_id: str
    run_id: str  # 16 hex digits, new at every daemon start: `seq` and `event_seq` restart with it

    @classmethod
    def new(cls, device_id: str) -> Identity:
        return cls(device_id=device_id, run_id=secrets.token_hex(8))


# ----- connecting -------------------------------------------------------------------------------


def read_password(path: Path) -> str:
    """The first line of the password file (a trailing newline is not part of the password)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise BrokerError(f"mqtt: cannot read password_file {path}: {getattr(err, 'strerror', None) or err}") from None
    return text.splitlines()[0] if text else ""


def tls_context(broker: BrokerSettings) -> ssl.SSLContext:
    """Verify the broker (its CA, or the system's) and its host name; a client certificate if given."""
    try:
        context = ssl.create_default_context(cafile=str(broker.ca_file) if broker.ca_file else None)
        if broker.cert_file is not None:
            context.load_cert_chain(str(broker.cert_file), str(broker.key_file) if broker.key_file else None)
    except (OSError, ssl.SSLError) as err:
        raise BrokerError(f"mqtt: TLS set-up failed: {' '.join(str(err).split())}") from None
    return context


async def client_options(broker: BrokerSettings) -> dict[str, Any]:
    """aiomqtt.Client keyword arguments. Files are read at every connect, so a rotated password or
    certificate applies on the next reconnect; the TLS context is built off the event loop (loading
    CA bundles takes milliseconds the control cycle should not lose)."""
    options: dict[str, Any] = {"hostname": broker.host, "port": broker.port, "keepalive": KEEPALIVE_S, "timeout": OPERATION_TIMEOUT_S}
    if broker.username is not None:
        options["username"] = broker.username
        options["password"] = read_password(broker.password_file) if broker.password_file is not None else None
    if broker.tls:
        options["tls_context"] = await asyncio.to_thread(tls_context, broker)
    return options


def describe_error(err: BaseException, *, broker: str) -> str:
    """One line an operator can act on, e.g. `mqtt: not authorised by broker 127.0.0.1:8883 (Not authorized)`."""
    if isinstance(err, BrokerError):
        return str(err)
    if isinstance(err, MqttConnectError):
        code = getattr(err.rc, "value", err.rc)
        reason = " ".join(str(err.rc if err.rc is not None else err).split())
        if code in MQTT_AUTH_REFUSED_CODES:
            return f"mqtt: not authorised by broker {broker} ({reason})"
        return f"mqtt: broker {broker} refused the connection ({reason})"
    text = " ".join(str(err).split()) or type(err).__name__
    low = text.lower()
    if isinstance(err, ssl.SSLError) or "ssl" in low or "certificate" in low:
        return f"mqtt: TLS with broker {broker} failed: {text}"
    if "timed out" in low:
        return f"mqtt: broker {broker} did not answer within {OPERATION_TIMEOUT_S:g} s"
    if "connection refused" in low:
        return f"mqtt: broker {broker} unreachable: connection refused"
    if isinstance(err, MqttCodeError):
        return f"mqtt: connection to broker {broker} lost: {text}"
    if "disconnected" in low:
        return f"mqtt: connection to broker {broker} lost"
    return f"mqtt: broker {broker}: {text}"


# ----- the command topic ----------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise CommandRefused("duplicate keys: which one counts would be a guess")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise CommandRefused(f"{name} is not JSON")


def parse_command(payload: bytes, *, retained: bool) -> str:
    """The command in a command-topic message, or CommandRefused with a one-line reason.

    Exactly `{"command": "stop"}`, as protocol/schemas/command.v1.json says (a test holds the two
    together; the daemon does not depend on a JSON Schema library). A retained message is refused:
    the broker would replay it at every reconnect and stop a later session nobody meant to stop.
    """
    if retained:
        raise CommandRefused("retained message: commands must be sent live, never replayed by the broker")
    if len(payload) > COMMAND_MAX_BYTES:
        raise CommandRefused(f"{len(payload)} bytes: a command is at most {COMMAND_MAX_BYTES}")
    try:
        document = json.loads(payload.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CommandRefused("not UTF-8 JSON") from None
    if not isinstance(document, dict):
        raise CommandRefused(f"a JSON {type(document).__name__}, not an object")
    if set(document) != {"command"}:
        raise CommandRefused(f"keys {sorted(document)[:5]}: exactly one key, \"command\", is allowed")
    command = document["command"]
    if not isinstance(command, str) or command != "stop":
        shown = json.dumps(command)[:40]
        raise CommandRefused(f"command {shown} refused: only \"stop\" is accepted over MQTT")
    return command


@dataclass
class _RefusalReporter:
    """At most one report per period; the refusals in between are counted into the next one, so a
    flood on the command topic cannot turn into a flood of journal writes on the event loop."""

    period_s: float = REFUSAL_REPORT_PERIOD_S
    last_s: float | None = None
    suppressed: int = 0

    def due(self, now_s: float) -> int | None:
        """The number suppressed since the last report if this one is to be reported, else None."""
        if self.last_s is not None and now_s - self.last_s < self.period_s:
            self.suppressed += 1
            return None
        self.last_s = now_s
        count, self.suppressed = self.suppressed, 0
        return count


# ----- payloads (pure) --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeView:
    channel: int
    role: str
    max_temp_c: float | None
    max_cem43_min: float | None
    lethal_cem43_min: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionView:
    """What telemetry shows of a session, read from it and the safety layer's books at one moment."""

    session_id: int
    state: str
    open: bool
    illumination: int
    illuminations: int
    plan_sha256: str
    max_session_energy_j: float
    session_energy_j: tuple[float, ...]  # per channel, whole session
    illumination_energy_j: tuple[float, ...]  # per channel, this illumination
    budgets_j: tuple[float | None, ...]  # per channel
    fibres_done: frozenset[int]
    probes: tuple[ProbeView, ...]  # the plan's probes
    cem43_min: Mapping[int, float]  # per planned probe
    end_reason: str | None

    @classmethod
    def of(cls, session: TreatmentSession) -> SessionView:
        plan, safety = session.plan, session.safety
        fibres = {f.channel: f for f in plan.fibres}
        probes = []
        for p in plan.probes:
            tip = p.role is ProbeRole.TIP
            probes.append(
                ProbeView(
                    channel=p.channel,
                    role=str(p.role),
                    max_temp_c=plan.tip_temp_cap_c if tip else p.max_temp_c,
                    max_cem43_min=p.max_cem43_min,
                    lethal_cem43_min=p.lethal_cem43_min,
                )
            )
        return cls(
            session_id=session.session_id,
            state=str(session.state),
            open=session.open,
            illumination=session.illumination,
            illuminations=plan.illuminations,
            plan_sha256=plan.sha256,
            max_session_energy_j=plan.max_session_energy_j,
            session_energy_j=tuple(safety.delivered_j),
            illumination_energy_j=tuple(safety.fibre_energy_j),
            budgets_j=tuple(fibres[c].energy_budget_j if c in fibres else None for c in range(LS4.CHANNEL_COUNT)),
            fibres_done=frozenset(c for c in fibres if c in safety.fibres_stopped),
            probes=tuple(probes),
            cem43_min={p.channel: safety.cem43_min(p.channel) for p in plan.probes},
            end_reason=session.end_reason,
        )


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def status_payload(
    *, ident: Identity, state: str, reason: str, t_wall_s: float, telemetry_hz: float, command_topic_enabled: bool, telemetry_dropped: int, events_dropped: int
) -> dict[str, Any]:
    return {
        "schema": SCHEMA_STATUS,
        "device_id": ident.device_id,
        "run_id": ident.run_id,
        "state": state,
        "reason": reason,
        "t_wall_s": round(t_wall_s, 3),
        "telemetry_hz": telemetry_hz,
        "command_topic_enabled": command_topic_enabled,
        "telemetry_dropped": telemetry_dropped,
        "events_dropped": events_dropped,
    }


def event_payload(
    *, ident: Identity, event_seq: int, t_wall_s: float, kind: str, message: str, session_id: int | None, details: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "schema": SCHEMA_EVENT,
        "device_id": ident.device_id,
        "run_id": ident.run_id,
        "event_seq": event_seq,
        "t_wall_s": round(t_wall_s, 3),
        "kind": kind,
        "message": " ".join(message.split()),
        "session_id": session_id,
        "details": dict(details),
    }


def session_payload(*, ident: Identity, t_wall_s: float, view: SessionView | None) -> dict[str, Any]:
    """The retained session summary. Deliberately without patient_id: identifiers stay in the journal."""
    payload: dict[str, Any] = {
        "schema": SCHEMA_SESSION,
        "device_id": ident.device_id,
        "run_id": ident.run_id,
        "t_wall_s": round(t_wall_s, 3),
        "session_id": None,
        "state": str(State.IDLE),
        "illumination": None,
        "illuminations": None,
        "plan_sha256": None,
        "session_energy_j": None,
        "illumination_energy_j": None,
        "budgets_j": None,
        "fibres_done": None,
        "cem43_min": None,
        "end_reason": None,
    }
    if view is not None:
        payload.update(
            session_id=view.session_id,
            state=view.state,
            illumination=view.illumination,
            illuminations=view.illuminations,
            plan_sha256=view.plan_sha256,
            session_energy_j=[round(e, 3) for e in view.session_energy_j],
            illumination_energy_j=[round(e, 3) for e in view.illumination_energy_j],
            budgets_j=list(view.budgets_j),
            fibres_done=sorted(view.fibres_done),
            cem43_min={str(c): round(v, 3) for c, v in sorted(view.cem43_min.items())},
            end_reason=view.end_reason,
        )
    return payload


def telemetry_payload(
    *,
    ident: Identity,
    seq: int,
    t_wall_s: float,
    t_host_s: float,
    time_scale: float,
    daemon_state: str,
    ls4: LS4Snapshot | None,
    ft8: FT8Snapshot | None,
    setpoint_mw: Sequence[int],
    session: SessionView | None,
    trip: Finding | None,
    links: Mapping[str, tuple[bool, Mapping[str, int]]],
    cycle: Mapping[str, Any],
    queues: Mapping[str, int],
) -> dict[str, Any]:
    """One telemetry message: a pure function of one cycle's values (units in every name)."""
    is_open = session is not None and session.open
    channels = []
    for c in range(LS4.CHANNEL_COUNT):
        budget = session.budgets_j[c] if session is not None else None
        channels.append(
            {
                "channel": c,
                "in_plan": budget is not None,
                "setpoint_mw": int(setpoint_mw[c]),
                "output_mw": None if ls4 is None else int(ls4.output_power_mw[c]),
                "energy_j": _r(session.illumination_energy_j[c]) if is_open and session is not None else None,
                "budget_j": budget,
                "done": session is not None and c in session.fibres_done,
                "counter_energy_j": None if ls4 is None else round(ls4.energy_mj[c] / 1000.0, 3),
            }
        )
    planned = {p.channel: p for p in session.probes} if session is not None else {}
    probes = []
    for p in range(FT8.CHANNEL_COUNT):
        view = planned.get(p)
        probes.append(
            {
                "channel": p,
                "temp_c": None if ft8 is None else ft8.temperature_c[p],
                "cem43_min": _r(session.cem43_min.get(p)) if session is not None and view is not None else None,
                "role": view.role if view is not None else None,
                "max_temp_c": view.max_temp_c if view is not None else None,
                "max_cem43_min": view.max_cem43_min if view is not None else None,
                "lethal_cem43_min": view.lethal_cem43_min if view is not None else None,
            }
        )
    return {
        "schema": SCHEMA_TELEMETRY,
        "device_id": ident.device_id,
        "run_id": ident.run_id,
        "seq": seq,
        "t_wall_s": round(t_wall_s, 3),
        "t_host_s": round(t_host_s, 3),
        "time_scale": time_scale,
        "daemon_state": daemon_state,
        "session": {
            "id": session.session_id if session is not None else None,
            "state": session.state if session is not None else str(State.IDLE),
            "illumination": session.illumination if session is not None else None,
            "illuminations": session.illuminations if session is not None else None,
            "session_energy_j": round(sum(session.session_energy_j), 3) if is_open and session is not None else None,
            "max_session_energy_j": session.max_session_energy_j if session is not None else None,
        },
        "trip": None if trip is None else {"rule": trip.rule, "message": trip.message, "channel": trip.channel},
        "ls4": None
        if ls4 is None
        else {
            "device_state": ls4.device_state.name,
            "fault_code": ls4.fault_code.name,
            "fault_channel": ls4.fault_channel,
            "interlocks": [f.name for f in LS4.Interlocks if f in ls4.interlocks],
        },
        "channels": channels,
        "probes": probes,
        "links": {name: {"up": up, **counters} for name, (up, counters) in links.items()},
        "cycle": dict(cycle),
        "mqtt": dict(queues),
    }


def cycle_percentiles(stats: CycleStats) -> dict[str, float]:
    """CycleStats.as_dict()'s percentiles, sorting each window once instead of once per figure
    (a test holds the two equal)."""
    cycles, jitter = sorted(stats.cycle_wall_ms), sorted(stats.jitter_ms)
    return {
        "cycle_ms_p50": round(percentile(cycles, 0.50), 3),  # percentile's own sort of a sorted list is linear
        "cycle_ms_p99": round(percentile(cycles, 0.99), 3),
        "cycle_ms_max": round(cycles[-1] if cycles else 0.0, 3),
        "jitter_ms_p50": round(percentile(jitter, 0.50), 3),
        "jitter_ms_p99": round(percentile(jitter, 0.99), 3),
        "jitter_ms_max": round(jitter[-1] if jitter else 0.0, 3),
    }


def _finite(value: Any) -> Any:
    """NaN and infinities are not JSON: null instead (a poisoned payload must not wedge the queue)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def encode(payload: Mapping[str, Any]) -> bytes:
    try:
        text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(payload), separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")


# ----- the publisher ----------------------------------------------------------------------------


@dataclass
class PublisherCounters:
    connects: int = 0
    connect_failures: int = 0
    telemetry_published: int = 0
    telemetry_dropped: int = 0
    events_published: int = 0
    events_dropped: int = 0
    commands_accepted: int = 0
    commands_refused: int = 0


CommandHandler = Callable[[], Awaitable[str]]
JournalHook = Callable[[str, str, dict[str, Any]], None]


class TelemetryPublisher:
    """The broker connection. Create, `await start()` inside the event loop, `await stop()`.

    `telemetry`, `event` and `session` are synchronous and only touch memory: safe to call from
    the control cycle. `on_stop_command` runs when a valid stop arrives on the command topic;
    `on_journal(kind, message, details)` records what must be on the record (refused commands,
    lost events).
    """

    def __init__(
        self,
        *,
        settings: PublisherSettings,
        ident: Identity,
        on_stop_command: CommandHandler | None = None,
        on_journal: JournalHook | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.ident = ident
        self.counters = PublisherCounters()
        self.connected = False
        self.error: str | None = None  # the current problem, one line; None while connected
        self._on_stop_command = on_stop_command
        self._on_journal = on_journal
        self._wall = wall_clock
        # encoded when queued: 2.4 kB a message instead of 6.7 kB of dicts (queue_size may be 100 000)
        self._telemetry: deque[bytes] = deque()
        self._events: deque[dict[str, Any]] = deque()
        self._session: dict[str, Any] | None = None
        self._session_dirty = False
        self._event_seq = 0
        self._events_dropped_unreported = 0
        self._refusals = _RefusalReporter()
        self._wake: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._command_tasks: set[asyncio.Task[None]] = set()

    # --- from the control cycle: synchronous, memory only -------------------------------------

    def telemetry(self, payload: Mapping[str, Any]) -> None:
        if len(self._telemetry) >= self.settings.queue_size:
            self._telemetry.popleft()
            self.counters.telemetry_dropped += 1
        self._telemetry.append(encode(payload))
        self._poke()

    def event(self, *, kind: str, message: str, session_id: int | None = None, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return self._event(kind=kind, message=message, session_id=session_id, details=details, bounded=True)

    def _event(self, *, kind: str, message: str, session_id: int | None, details: Mapping[str, Any] | None, bounded: bool) -> dict[str, Any]:
        payload = event_payload(
            ident=self.ident, event_seq=self._event_seq, t_wall_s=self._wall(), kind=kind, message=message, session_id=session_id, details=details or {}
        )
        self._event_seq += 1
        if bounded and len(self._events) >= self.settings.event_queue_max:
            self._events.popleft()
            self._event_dropped()
        self._events.append(payload)
        self._poke()
        return payload

    def session(self, payload: dict[str, Any]) -> None:
        """The retained summary: only the latest matters (the events carry every transition)."""
        self._session = payload
        self._session_dirty = True
        self._poke()

    def queues(self) -> dict[str, int]:
        return {
            "telemetry_dropped": self.counters.telemetry_dropped,
            "telemetry_queued": len(self._telemetry),
            "events_dropped": self.counters.events_dropped,
            "events_queued": len(self._events),
        }

    def status(self) -> dict[str, Any]:
        """For `laserctl status` (key `mqtt`)."""
        return {
            "enabled": True,
            "broker": self.settings.broker.address,
            "tls": self.settings.broker.tls,
            "connected": self.connected,
            "error": self.error,
            "topic_prefix": self.settings.topics.prefix,
            "command_topic_enabled": self.settings.command_topic_enabled,
            **self.queues(),
            **{k: v for k, v in self.counters.__dict__.items() if k not in ("telemetry_dropped", "events_dropped")},
        }

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _event_dropped(self) -> None:
        self.counters.events_dropped += 1
        self._events_dropped_unreported += 1
        if self._events_dropped_unreported == 1:
            message = f"MQTT event queue full ({self.settings.event_queue_max}): dropping the oldest events until the broker is back"
            log.error("event=mqtt-events-dropped queue_max=%d", self.settings.event_queue_max)
            self._journal("mqtt_events_dropped", message, {"queue_max": self.settings.event_queue_max})
        elif self._events_dropped_unreported % 1000 == 0:
            log.error("event=mqtt-events-dropped count=%d", self._events_dropped_unreported)

    def _journal(self, kind: str, message: str, details: dict[str, Any]) -> None:
        if self._on_journal is None:
            return
        try:
            self._on_journal(kind, message, details)
        except Exception:  # noqa: BLE001 - the journal's own errors are the daemon's to report
            log.exception("event=mqtt-journal-failed kind=%s", kind)

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="mqtt-publisher")

    async def stop(self, *, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Flush the events, say `offline` (retained), disconnect cleanly; at most ~`timeout_s`."""
        if self._task is None or self._stopping is None:
            return
        self._stopping.set()
        self._poke()
        done, _ = await asyncio.wait({self._task}, timeout=timeout_s)
        if not done:
            log.warning("event=mqtt-stop-timeout timeout_s=%g events_queued=%d", timeout_s, len(self._events))
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=1.0)
        if self._command_tasks:
            await asyncio.wait(set(self._command_tasks), timeout=1.0)
        self._task = None
        self.connected = False
        if self._events:  # not silently: they are in the journal already, and this says they never left
            count = len(self._events)
            log.warning("event=mqtt-events-undelivered count=%d broker=%s", count, self.settings.broker.address)
            self._journal("mqtt_events_undelivered", f"{count} MQTT events not delivered: the broker was unavailable when laserd stopped", {"count": count})

    # --- the connection ---------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._stopping is not None
        backoff_s = self.settings.backoff_min_s
        attempt = 0
        while not self._stopping.is_set():
            attempt += 1
            connected_at: float | None = None
            try:
                options = await client_options(self.settings.broker)
                client = aiomqtt.Client(
                    **options,
                    identifier=f"laserd-{self.ident.device_id}",
                    clean_session=True,
                    will=aiomqtt.Will(self.settings.topics.status, encode(self._status("offline", "connection lost")), qos=1, retain=True),
                    max_queued_outgoing_messages=MAX_QUEUED_OUTGOING,
                    max_queued_incoming_messages=MAX_QUEUED_INCOMING,
                    logger=mqtt_log,
                )
                async with client:
                    connected_at = time.monotonic()
                    self._connected(attempt)
                    attempt = 0
                    await self._serve(client)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - whatever it was, retry later: telemetry must not end for good
                self._failed(self._describe(err), attempt=attempt, was_connected=connected_at is not None)
            finally:
                self.connected = False
            if self._stopping.is_set():
                break
            if connected_at is not None and time.monotonic() - connected_at >= self.settings.backoff_max_s:
                backoff_s = self.settings.backoff_min_s  # it was a working connection: retry soon
            delay_s = backoff_s * random.uniform(1.0 - BACKOFF_JITTER_FRACTION, 1.0 + BACKOFF_JITTER_FRACTION)
            backoff_s = min(backoff_s * 2.0, self.settings.backoff_max_s)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay_s)

    def _describe(self, err: Exception) -> str:
        if not isinstance(err, aiomqtt.MqttError | TelemetryError | OSError):
            log.error("event=mqtt-publisher-error error=%r", err, exc_info=err)  # a bug: its traceback matters
            return f"mqtt: internal error: {type(err).__name__}: {err}"
        try:
            return describe_error(err, broker=self.settings.broker.address)
        except Exception:  # noqa: BLE001 - describing must never be what stops the retries
            return f"mqtt: broker {self.settings.broker.address}: {type(err).__name__}"

    def _status(self, state: str, reason: str) -> dict[str, Any]:
        return status_payload(
            ident=self.ident,
            state=state,
            reason=reason,
            t_wall_s=self._wall(),
            telemetry_hz=self.settings.telemetry_hz,
            command_topic_enabled=self.settings.command_topic_enabled,
            telemetry_dropped=self.counters.telemetry_dropped,
            events_dropped=self.counters.events_dropped,
        )

    def _connected(self, attempts: int) -> None:
        self.connected = True
        self.error = None
        self.counters.connects += 1
        log.info("event=mqtt-connected broker=%s attempts=%d prefix=%s", self.settings.broker.address, attempts, self.settings.topics.prefix)
        if self._events_dropped_unreported:
            count, self._events_dropped_unreported = self._events_dropped_unreported, 0
            message = f"{count} MQTT events were dropped while the broker was away (event queue full)"
            self._journal("mqtt_events_dropped", message, {"count": count, "total": self.counters.events_dropped})
            # past the bound by one: the notice of a loss must not cause another
            self._event(kind="events_dropped", message=message, session_id=None, details={"count": count, "total": self.counters.events_dropped}, bounded=False)
        # the broker may have restarted without persistence: the retained summary goes again
        self._session_dirty = self._session is not None

    def _failed(self, message: str, *, attempt: int, was_connected: bool) -> None:
        if was_connected:
            log.warning("event=mqtt-disconnected broker=%s error=%s", self.settings.broker.address, message)
        else:
            self.counters.connect_failures += 1
            if message != self.error or attempt % FAILURE_LOG_EVERY == 0:
                log.warning("event=mqtt-unavailable broker=%s attempt=%d error=%s", self.settings.broker.address, attempt, message)
        self.error = message

    async def _serve(self, client: aiomqtt.Client) -> None:
        """One connection: `online`, then events before the session summary before telemetry."""
        assert self._wake is not None and self._stopping is not None
        topics = self.settings.topics
        await client.publish(topics.status, encode(self._status("online", "connected")), qos=1, retain=True)
        reader = asyncio.create_task(self._read(client), name="mqtt-reader")
        try:
            if self.settings.command_topic_enabled:
                await client.subscribe(topics.command, qos=1)
            while True:
                if self._events:
                    await self._publish_head(client, self._events, topics.event, qos=1)
                    self.counters.events_published += 1
                elif self._session_dirty and self._session is not None:
                    session = self._session
                    await client.publish(topics.session, encode(session), qos=1, retain=True)
                    self._session_dirty = self._session is not session
                elif self._stopping.is_set():
                    break
                elif self._telemetry:
                    await self._publish_head(client, self._telemetry, topics.telemetry, qos=0)
                    self.counters.telemetry_published += 1
                else:
                    await self._idle(reader)
            await client.publish(topics.status, encode(self._status("offline", "clean stop")), qos=1, retain=True)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _publish_head(self, client: aiomqtt.Client, queue: deque[Any], topic: str, *, qos: int) -> None:
        """Publish the oldest item and remove it only once sent (QoS 1: acknowledged)."""
        item = queue[0]
        await client.publish(topic, item if isinstance(item, bytes) else encode(item), qos=qos)
        if queue and queue[0] is item:  # it may have been dropped (queue full) while we waited
            queue.popleft()

    async def _idle(self, reader: asyncio.Task[None]) -> None:
        assert self._wake is not None
        self._wake.clear()
        waiter = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if reader.done():
            reader.result()  # the connection's error, if any
            raise aiomqtt.MqttError("the broker closed the connection")

    async def _read(self, client: aiomqtt.Client) -> None:
        """Incoming messages; also how a dropped connection is noticed while nothing is published."""
        async for message in client.messages:
            if not self.settings.command_topic_enabled:
                continue  # never subscribed: nothing should arrive, and nothing is acted on
            payload = message.payload if isinstance(message.payload, bytes | bytearray) else str(message.payload or "").encode()
            self._command(bytes(payload), retained=bool(message.retain))

    def _command(self, payload: bytes, *, retained: bool) -> None:
        try:
            command = parse_command(payload, retained=retained)
        except CommandRefused as refusal:
            self._refuse(str(refusal))
            return
        self.counters.commands_accepted += 1
        log.warning("event=mqtt-command command=%s", command)
        self.event(kind="command", message=f"{command} requested over MQTT", details={"accepted": True, "command": command, "reason": "accepted", "suppressed": 0})
        if self._on_stop_command is not None:
            # its own task: a dropped connection must not cancel a stop half-way
            task = asyncio.create_task(self._run_stop(), name="mqtt-stop-command")
            self._command_tasks.add(task)
            task.add_done_callback(self._command_tasks.discard)

    async def _run_stop(self) -> None:
        assert self._on_stop_command is not None
        try:
            result = await self._on_stop_command()
        except Exception as err:  # noqa: BLE001 - reported like a refusal; the operator still has laserctl
            log.exception("event=mqtt-command-failed command=stop")
            result = f"stop failed: {type(err).__name__}: {err}"
        log.warning("event=mqtt-command-done command=stop result=%s", result)

    def _refuse(self, reason: str) -> None:
        self.counters.commands_refused += 1
        suppressed = self._refusals.due(time.monotonic())
        if suppressed is None:
            return
        message = f"MQTT command refused: {reason}" + (f" ({suppressed} more refused since the last report)" if suppressed else "")
        log.warning("event=mqtt-command-refused reason=%s suppressed=%d", reason, suppressed)
        self._journal("mqtt_command_refused", message, {"reason": reason, "suppressed": suppressed})
        self.event(kind="command", message=message, details={"accepted": False, "command": None, "reason": reason, "suppressed": suppressed})


# ----- the daemon's side ------------------------------------------------------------------------


@dataclass
class ObservedSession(TreatmentSession):
    """A TreatmentSession that reports every state change: all of them go through `apply`, and
    session.py has no hook of its own. `on_change(session, before, event, reason)` must not raise."""

    on_change: Callable[[TreatmentSession, State, Event, str], None] | None = None

    def apply(self, event: Event, reason: str, *, details: dict[str, Any] | None = None) -> State:
        before = self.state
        new = super().apply(event, reason, details=details)
        if self.on_change is not None:
            self.on_change(self, before, Event(event), reason)
        return new


class TelemetryFeed:
    """What laserd calls. Every method is synchronous, returns at once and never raises.

    Telemetry rate: `telemetry_hz` per *wall-clock* second, not scaled by --time-scale: the
    console is watched in wall time and the broker's load should not depend on how fast a test
    runs the clock. At most one message per control cycle.
    """

    def __init__(self, *, publisher: TelemetryPublisher, time_scale: float = 1.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.publisher = publisher
        self.time_scale = time_scale
        self.failures = 0
        self._period_s = 1.0 / publisher.settings.telemetry_hz
        self._monotonic = monotonic
        self._next_due_s: float | None = None
        self._seq = 0
        self._ls4_fault: tuple[str, int | None] | None = None
        self._links_up: dict[str, bool] = {}
        self._percentiles: dict[str, float] | None = None
        self._percentiles_at_s = 0.0

    @classmethod
    def from_config(
        cls, mqtt: MqttConfig, *, time_scale: float, on_stop_command: CommandHandler | None = None, on_journal: JournalHook | None = None
    ) -> TelemetryFeed | None:
        """None when `[mqtt]` is not enabled."""
        if not mqtt.enabled:
            return None
        settings = PublisherSettings.from_config(mqtt)
        publisher = TelemetryPublisher(
            settings=settings,
            ident=Identity.new(settings.device_id),
            on_stop_command=on_stop_command if mqtt.command_topic_enabled else None,
            on_journal=on_journal,
        )
        return cls(publisher=publisher, time_scale=time_scale)

    async def start(self) -> None:
        self.publisher.session(session_payload(ident=self.publisher.ident, t_wall_s=time.time(), view=None))
        self.publisher.event(kind="daemon", message="laserd started", details={"state": "started"})
        await self.publisher.start()

    async def stop(self) -> None:
        self.publisher.event(kind="daemon", message="laserd stopping", details={"state": "stopping"})
        await self.publisher.stop()

    def status(self) -> dict[str, Any]:
        return self.publisher.status()

    def _failed(self, what: str) -> None:
        self.failures += 1
        if self.failures == 1 or self.failures % 100 == 0:
            log.exception("event=telemetry-failed what=%s failures=%d", what, self.failures)

    # --- the control cycle ------------------------------------------------------------------

    def due(self) -> bool:
        """Whether a telemetry message is due now (advances the schedule when it is)."""
        now = self._monotonic()
        if self._next_due_s is not None and now < self._next_due_s:
            return False
        late = self._next_due_s is None or now - self._next_due_s >= self._period_s
        # no burst to catch up after a stall: one message, then the period from now
        self._next_due_s = now + self._period_s if late else self._next_due_s + self._period_s
        return True

    def cycle(
        self,
        *,
        now_s: float,
        daemon_state: str,
        ls4: LS4Snapshot | None,
        ft8: FT8Snapshot | None,
        setpoint_mw: Sequence[int],
        session: TreatmentSession | None,
        trip: Finding | None,
        stats: CycleStats,
        links: Mapping[str, BusLink],
    ) -> None:
        try:
            session_id = session.session_id if session is not None and session.open else None
            self._watch(ls4=ls4, links=links, session_id=session_id)
            if not self.due():
                return
            payload = telemetry_payload(
                ident=self.publisher.ident,
                seq=self._seq,
                t_wall_s=time.time(),
                t_host_s=now_s,
                time_scale=self.time_scale,
                daemon_state=daemon_state,
                ls4=ls4,
                ft8=ft8,
                setpoint_mw=setpoint_mw,
                session=SessionView.of(session) if session is not None else None,
                trip=trip,
                links={name: (link.up, link.counters.as_dict()) for name, link in links.items()},
                cycle=self._cycle(stats),
                queues=self.publisher.queues(),
            )
            self._seq += 1
            self.publisher.telemetry(payload)
        except Exception:  # noqa: BLE001 - telemetry must never become a safety trip
            self._failed("cycle")

    def _cycle(self, stats: CycleStats) -> dict[str, Any]:
        now = self._monotonic()
        if self._percentiles is None or now - self._percentiles_at_s >= CYCLE_PERCENTILES_REFRESH_S:
            self._percentiles, self._percentiles_at_s = cycle_percentiles(stats), now
        return {"period_ms": round(stats.period_s * 1000.0, 3), "count": stats.count, "deadline_misses": stats.deadline_misses, **self._percentiles}

    def _watch(self, *, ls4: LS4Snapshot | None, links: Mapping[str, BusLink], session_id: int | None) -> None:
        """Events for what the cycle sees change: the LS-4's fault, and each bus going up or down."""
        if ls4 is not None:
            fault = (ls4.fault_code.name, ls4.fault_channel)
            if fault != self._ls4_fault and (self._ls4_fault is not None or fault[0] != "NONE"):
                what = "cleared" if fault[0] == "NONE" else fault[0] + (f" on channel {fault[1]}" if fault[1] is not None else "")
                self.publisher.event(
                    kind="fault",
                    message=f"LS-4 fault {what} (device {ls4.device_state.name})",
                    session_id=session_id,
                    details={"device": "LS-4", "fault_code": fault[0], "fault_channel": fault[1], "device_state": ls4.device_state.name},
                )
            self._ls4_fault = fault
        for name, link in links.items():
            up = link.up
            if name in self._links_up and self._links_up[name] != up:
                self.publisher.event(kind="link", message=f"bus {name} {'up' if up else 'DOWN'}", session_id=session_id, details={"bus": name, "up": up})
            self._links_up[name] = up

    # --- events -------------------------------------------------------------------------------

    def finding(self, finding: Finding, *, session_id: int | None) -> None:
        try:
            hard = finding.severity is Severity.HARD
            self.publisher.event(
                kind="trip" if hard else "finding",
                message=finding.message,
                session_id=session_id,
                details={"rule": finding.rule, "channel": finding.channel, "value": finding.value, "limit": finding.limit},
            )
        except Exception:  # noqa: BLE001
            self._failed("finding")

    def session_changed(self, session: TreatmentSession, *, before: State, event: Event, reason: str) -> None:
        try:
            self.publisher.event(
                kind="session_state",
                message=f"session {session.session_id}: {before} -> {session.state}: {reason}",
                session_id=session.session_id,
                details={"from": str(before), "to": str(session.state), "event": str(event), "reason": reason},
            )
            self.publisher.session(session_payload(ident=self.publisher.ident, t_wall_s=time.time(), view=SessionView.of(session)))
        except Exception:  # noqa: BLE001
            self._failed("session")

    def ack(self, message: str, *, what: str, rule: str | None, session_id: int | None) -> None:
        try:
            self.publisher.event(kind="ack", message=message, session_id=session_id, details={"what": what, "rule": rule})
        except Exception:  # noqa: BLE001
            self._failed("ack")


def schema_file(kind: str) -> Path:
    """The JSON Schema of a payload kind: status, telemetry, event, session, command."""
    import protocol

    return Path(protocol.__file__).resolve().parent / "schemas" / f"{kind}.v1.json"

"""`laserctl monitor`: a live terminal console fed only by laserd's MQTT telemetry (docs/telemetry.md).

It shows state, per-fibre power and energy against budget, probe temperatures and doses against
their limits, alarms, the latest events, and how fresh the feed is: the age of the last message
and the gaps in its sequence numbers. It subscribes and never publishes: a console cannot command
the laser.

The frame is a pure function of the payloads received (`View.apply` then `render`), so tests feed
it real MQTT messages and read the text.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, TextIO

import aiomqtt

from .telemetry import (
    BACKOFF_MAX_S,
    BACKOFF_MIN_S,
    SCHEMA_EVENT,
    SCHEMA_SESSION,
    SCHEMA_STATUS,
    SCHEMA_TELEMETRY,
    BrokerError,
    BrokerSettings,
    TelemetryError,
    client_options,
    describe_error,
)

DEFAULT_BROKER: Final = "127.0.0.1:1883"
DEFAULT_PREFIX: Final = "laser/+/"  # any device: the console follows the first one it hears from
DEFAULT_TIMEOUT_S: Final = 10.0
REFRESH_HZ: Final = 4.0
EVENTS_SHOWN: Final = 6
STALE_PERIODS: Final = 3.0  # the feed is stale after this many telemetry periods without a message
STALE_MIN_S: Final = 1.0
BAR_CELLS: Final = 10
DOSE_FIXED_BELOW_MIN: Final = 1e6  # larger doses in the CEM43 column in exponent notation (same width)
KINDS: Final = {"status": SCHEMA_STATUS, "telemetry": SCHEMA_TELEMETRY, "event": SCHEMA_EVENT, "session": SCHEMA_SESSION}
ALARM_EVENT_KINDS: Final = frozenset({"trip", "fault", "events_dropped"})
EXIT_OK: Final = 0
EXIT_NO_FEED: Final = 1
EXIT_USAGE: Final = 2
EXIT_NO_BROKER: Final = 3


class MonitorError(TelemetryError):
    """The console cannot show anything: no broker, or no telemetry in time. One line."""


# ----- what the console knows (pure) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class View:
    device_id: str | None = None
    run_id: str | None = None  # of the telemetry followed; a new one (laserd restarted) restarts the seq count
    status: Mapping[str, Any] | None = None
    telemetry: Mapping[str, Any] | None = None
    session: Mapping[str, Any] | None = None
    events: tuple[Mapping[str, Any], ...] = ()  # the latest EVENTS_SHOWN
    alarm_events: tuple[Mapping[str, Any], ...] = ()  # the latest trips, faults and losses
    received_s: float | None = None  # monotonic time the last telemetry arrived
    telemetry_count: int = 0
    seq_gaps: int = 0
    seq_missed: int = 0
    ignored: int = 0  # other devices, unknown schemas, not JSON
    connection_error: str | None = None

    def apply(self, *, kind: str, payload: Any, received_s: float) -> View:
        """The view after one message on `<prefix><kind>`."""
        if kind not in KINDS or not isinstance(payload, Mapping) or payload.get("schema") != KINDS[kind]:
            return replace(self, ignored=self.ignored + 1)
        device = payload.get("device_id")
        if self.device_id is not None and device != self.device_id:
            return replace(self, ignored=self.ignored + 1)
        view = replace(self, device_id=device)
        if kind == "status":
            return replace(view, status=payload)
        if kind == "session":
            return replace(view, session=payload)
        if kind == "event":
            events = (view.events + (payload,))[-EVENTS_SHOWN:]
            alarms = view.alarm_events
            if payload.get("kind") in ALARM_EVENT_KINDS or (payload.get("kind") == "command" and not payload.get("details", {}).get("accepted")):
                alarms = (alarms + (payload,))[-EVENTS_SHOWN:]
            return replace(view, events=events, alarm_events=alarms)
        return view._telemetry(payload, received_s)

    def _telemetry(self, payload: Mapping[str, Any], received_s: float) -> View:
        seq = payload.get("seq")
        gaps, missed = self.seq_gaps, self.seq_missed
        previous = self.telemetry
        if payload.get("run_id") != self.run_id:
            gaps, missed = 0, 0  # a new laserd run counts from 0 again
        elif previous is not None and isinstance(seq, int) and isinstance(previous.get("seq"), int):
            if seq <= previous["seq"]:
                return replace(self, ignored=self.ignored + 1)  # a duplicate or a late one: not newer
            if seq > previous["seq"] + 1:
                gaps += 1
                missed += seq - previous["seq"] - 1
        return replace(
            self,
            run_id=payload.get("run_id"),
            telemetry=payload,
            received_s=received_s,
            telemetry_count=self.telemetry_count + 1,
            seq_gaps=gaps,
            seq_missed=missed,
        )

    def age_s(self, now_s: float) -> float | None:
        return None if self.received_s is None else max(0.0, now_s - self.received_s)

    def stale_after_s(self) -> float:
        hz = (self.status or {}).get("telemetry_hz") or 5.0
        return max(STALE_MIN_S, STALE_PERIODS / float(hz))


# ----- the frame (pure) -------------------------------------------------------------------------


def _num(value: Any, fmt: str, missing: str = "-") -> str:
    return missing if value is None else format(value, fmt)


def _dose(value: float | None) -> str:
    """A CEM43 column entry: beside a tip the dose reaches 1e15 min and more, which fixed-point would
    print 18 digits wide and shift the row."""
    if value is None:
        return " " * 10 + "-"
    return format(value, "11.2f" if value < DOSE_FIXED_BELOW_MIN else "11.2e")


def _bar(fraction: float) -> str:
    filled = max(0, min(BAR_CELLS, round(fraction * BAR_CELLS)))
    return "[" + "#" * filled + "." * (BAR_CELLS - filled) + "]"


def _clock(t_wall_s: Any) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t_wall_s)) if isinstance(t_wall_s, int | float) else "--:--:--"


def alarms(view: View, *, now_s: float) -> list[str]:
    """What needs someone's eyes now, most serious first."""
    out: list[str] = []
    t = view.telemetry or {}
    if view.connection_error:
        out.append(f"NO BROKER: {view.connection_error}")
    if view.status is not None and view.status.get("state") == "offline":
        out.append(f"laserd OFFLINE ({view.status.get('reason')})")
    age = view.age_s(now_s)
    if age is not None and age > view.stale_after_s():
        out.append(f"FEED STALE: no telemetry for {age:.1f} s")
    if t.get("trip"):
        out.append(f"TRIP {t['trip'].get('rule')}: {t['trip'].get('message')}")
    ls4 = t.get("ls4") or {}
    if ls4.get("fault_code") not in (None, "NONE"):
        out.append(f"LS-4 FAULT {ls4['fault_code']}" + (f" on ch{ls4['fault_channel']}" if ls4.get("fault_channel") is not None else ""))
    for name, link in (t.get("links") or {}).items():
        if not link.get("up"):
            out.append(f"bus {name} DOWN")
    for p in t.get("probes") or []:
        if p.get("temp_c") is not None and p.get("max_temp_c") is not None and p["temp_c"] >= p["max_temp_c"]:
            out.append(f"probe p{p['channel']} ({p.get('role')}) at {p['temp_c']:.1f} degC >= limit {p['max_temp_c']:.1f} degC")
        if p.get("cem43_min") is not None and p.get("max_cem43_min") is not None and p["cem43_min"] >= p["max_cem43_min"]:
            out.append(f"probe p{p['channel']} dose {p['cem43_min']:.1f} >= limit {p['max_cem43_min']:.1f} CEM43 min")
    mqtt = t.get("mqtt") or {}
    if mqtt.get("events_dropped"):
        out.append(f"{mqtt['events_dropped']} events dropped at laserd (broker was away)")
    return out


def render(view: View, *, now_s: float) -> str:
    """One frame of plain text (no terminal control codes)."""
    t = view.telemetry or {}
    status = view.status or {}
    session = t.get("session") or {}
    # once a session has ended the safety layer's books are closed and telemetry carries no energy:
    # the retained summary, taken at the transition, still has it
    summary = view.session if view.session is not None and view.session.get("session_id") == session.get("id") else None
    ended = session.get("id") is not None and session.get("session_energy_j") is None and summary is not None
    if ended and summary is not None and summary.get("session_energy_j") is not None:
        session = {**session, "session_energy_j": round(sum(summary["session_energy_j"]), 3)}
    lines = [
        f"laser {view.device_id or '?'}   broker link {status.get('state', '?')}   laserd {t.get('daemon_state', '?')}"
        + (f"   time x{t['time_scale']:g}" if t.get("time_scale") not in (None, 1, 1.0) else ""),
    ]
    if session.get("id") is not None:
        lines.append(
            f"session #{session['id']} {session.get('state')}   illumination {int(session.get('illumination') or 0) + 1}/{session.get('illuminations')}"
            f"   energy {_num(session.get('session_energy_j'), '.1f')} / {_num(session.get('max_session_energy_j'), '.0f')} J"
        )
    else:
        lines.append(f"session {session.get('state', 'IDLE')}")
    ls4 = t.get("ls4")
    lines.append(
        "LS-4 no reading" if not ls4 else f"LS-4 {ls4['device_state']}   fault {ls4['fault_code']}   interlocks {' '.join(ls4.get('interlocks') or []) or 'none'}"
    )
    lines.append(f"{'fibre':<6}{'set W':>7}{'out W':>8}   {'energy / budget':<22}")
    for ch in t.get("channels") or []:
        budget, energy = ch.get("budget_j"), ch.get("energy_j")
        if energy is None and ended and summary is not None and summary.get("illumination_energy_j") is not None:
            energy = summary["illumination_energy_j"][ch["channel"]]
        row = f"ch{ch['channel']:<4}{ch['setpoint_mw'] / 1000:>7.2f}{_num(None if ch.get('output_mw') is None else ch['output_mw'] / 1000, '8.2f', '       -')}   "
        if budget is not None:
            fraction = (energy or 0.0) / budget
            row += f"{_num(energy, '8.1f', '       -')} / {budget:.0f} J {_bar(fraction)} {fraction * 100:3.0f}%" + ("  done" if ch.get("done") else "")
        else:
            row += "   not in plan"
        lines.append(row)
    lines.append(f"{'probe':<6}{'role':<10}{'temp C':>8}{'limit C':>9}{'CEM43 min':>11}{'limit':>8}")
    for p in t.get("probes") or []:
        over = p.get("temp_c") is not None and p.get("max_temp_c") is not None and p["temp_c"] >= p["max_temp_c"]
        dose_limit = p.get("max_cem43_min") if p.get("max_cem43_min") is not None else p.get("lethal_cem43_min")
        lines.append(
            f"p{p['channel']:<5}{p.get('role') or '-':<10}{_num(p.get('temp_c'), '8.2f', '    ----')}{_num(p.get('max_temp_c'), '9.1f', '        -')}"
            f"{_dose(p.get('cem43_min'))}{_num(dose_limit, '8.1f', '       -')}"
            + (" lethal" if p.get("lethal_cem43_min") is not None and p.get("max_cem43_min") is None else "")
            + ("  !!" if over else "")
        )
    active = alarms(view, now_s=now_s)
    lines.append("ALARMS" + ("" if active or view.alarm_events else " none"))
    lines += [f"  ! {a}" for a in active]
    lines += [f"  {_clock(e.get('t_wall_s'))} {e.get('kind')}: {e.get('message')}" for e in view.alarm_events]
    lines.append("events")
    lines += [f"  {_clock(e.get('t_wall_s'))} {e.get('kind'):<14} {e.get('message')}" for e in view.events] or ["  none yet"]
    age = view.age_s(now_s)
    mqtt = t.get("mqtt") or {}
    lines.append(
        f"feed  last message {'never' if age is None else f'{age:.1f} s ago'}   seq {t.get('seq', '-')}   seq gaps {view.seq_gaps} ({view.seq_missed} missed)"
        f"   dropped at laserd {mqtt.get('telemetry_dropped', 0)}"
        + (f"   ignored {view.ignored}" if view.ignored else "")
    )
    return "\n".join(lines) + "\n"


# ----- the subscriber ---------------------------------------------------------------------------


def parse_broker(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"--broker {text!r} is not HOST:PORT")
    return host, int(port)


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorOptions:
    broker: BrokerSettings
    prefix: str
    once: bool = False
    frames: int | None = None  # print this many frames (one per telemetry message), then exit
    timeout_s: float = DEFAULT_TIMEOUT_S  # --once / --frames: give up without telemetry this long
    refresh_hz: float = REFRESH_HZ


def _kind(topic: str) -> str:
    return topic.rsplit("/", 1)[-1]


def _decode(payload: Any) -> Any:
    try:
        return json.loads(payload)
    except (TypeError, ValueError):
        return None


async def _subscribe(client: aiomqtt.Client, prefix: str) -> None:
    for kind in KINDS:
        await client.subscribe(prefix + kind, qos=1)


async def run_frames(options: MonitorOptions, *, out: TextIO) -> int:
    """--once / --frames N: one plain frame per telemetry message, then exit."""
    wanted = 1 if options.once else max(1, options.frames or 1)
    view, printed = View(), 0
    try:
        async with aiomqtt.Client(**await client_options(options.broker)) as client:
            await _subscribe(client, options.prefix)
            async with asyncio.timeout(options.timeout_s):
                async for message in client.messages:
                    kind = _kind(str(message.topic))
                    before = view.telemetry_count
                    view = view.apply(kind=kind, payload=_decode(message.payload), received_s=time.monotonic())
                    if view.telemetry_count > before:
                        out.write(render(view, now_s=time.monotonic()) + ("\n" if printed + 1 < wanted else ""))
                        out.flush()
                        printed += 1
                        if printed >= wanted:
                            return EXIT_OK
    except TimeoutError:
        status = f" (last status: {view.status.get('state')}, {view.status.get('reason')})" if view.status else ""
        raise MonitorError(f"no telemetry on {options.prefix}telemetry within {options.timeout_s:g} s{status}") from None
    except (aiomqtt.MqttError, OSError) as err:
        raise BrokerError(describe_error(err, broker=options.broker.address)) from None
    return EXIT_OK


async def run_live(options: MonitorOptions, *, out: TextIO) -> int:
    """Redraw at `refresh_hz` until interrupted; reconnect with backoff if the broker goes away.
    A broker that cannot be reached at all at start is an error, not an empty screen."""
    state = {"view": View()}
    ansi = out.isatty()
    connected_once = asyncio.Event()

    async def receive() -> None:
        backoff_s = BACKOFF_MIN_S
        while True:
            try:
                async with aiomqtt.Client(**await client_options(options.broker)) as client:
                    await _subscribe(client, options.prefix)
                    state["view"] = replace(state["view"], connection_error=None)
                    connected_once.set()
                    backoff_s = BACKOFF_MIN_S
                    async for message in client.messages:
                        state["view"] = state["view"].apply(kind=_kind(str(message.topic)), payload=_decode(message.payload), received_s=time.monotonic())
            except (aiomqtt.MqttError, OSError, BrokerError) as err:
                described = str(err) if isinstance(err, BrokerError) else describe_error(err, broker=options.broker.address)
                if not connected_once.is_set():
                    raise BrokerError(described) from None
                state["view"] = replace(state["view"], connection_error=described)
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2.0, BACKOFF_MAX_S)

    receiver = asyncio.create_task(receive())
    try:
        while True:
            if receiver.done():
                receiver.result()
            if connected_once.is_set():
                frame = render(state["view"], now_s=time.monotonic())
                out.write(("\x1b[H\x1b[2J" if ansi else "") + frame + ("" if ansi else "\n"))
                out.flush()
            await asyncio.sleep(1.0 / options.refresh_hz)
    finally:
        receiver.cancel()


# ----- laserctl monitor -------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    """The `monitor` subcommand of laserctl."""
    p = sub.add_parser("monitor", help="live console from laserd's MQTT telemetry (needs no socket; cannot command anything)")
    p.add_argument("--broker", default=DEFAULT_BROKER, metavar="HOST:PORT", help=f"MQTT broker (default {DEFAULT_BROKER})")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"topic prefix, ending with / (default {DEFAULT_PREFIX}: the first device heard)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--once", action="store_true", help="print one frame after the first telemetry message, then exit")
    how.add_argument("--frames", type=int, metavar="N", help="print N frames (one per telemetry message), then exit")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S", help="--once/--frames: fail after S seconds without telemetry")
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--ca-file", type=Path, help="CA bundle to verify the broker (default: the system's)")
    p.add_argument("--cert-file", type=Path, help="client certificate (with --key-file)")
    p.add_argument("--key-file", type=Path)
    p.add_argument("--username")
    p.add_argument("--password-file", type=Path, help="file holding the broker password")


def options_from_args(args: argparse.Namespace) -> MonitorOptions:
    host, port = parse_broker(args.broker)
    if not args.prefix.endswith("/") or "#" in args.prefix:
        raise ValueError(f"--prefix {args.prefix!r} must end with / and hold no #")
    if args.frames is not None and args.frames < 1:
        raise ValueError("--frames must be at least 1")
    if (args.cert_file is None) != (args.key_file is None):
        raise ValueError("--cert-file and --key-file go together")
    if not args.tls and (args.ca_file or args.cert_file):
        raise ValueError("--ca-file and --cert-file need --tls")
    if args.password_file is not None and args.username is None:
        raise ValueError("--password-file needs --username")
    broker = BrokerSettings(
        host=host,
        port=port,
        tls=args.tls,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        username=args.username,
        password_file=args.password_file,
    )
    return MonitorOptions(broker=broker, prefix=args.prefix, once=args.once, frames=args.frames, timeout_s=args.timeout)


def main(args: argparse.Namespace, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        options = options_from_args(args)
    except ValueError as error:
        print(f"laserctl: {error}", file=err)
        return EXIT_USAGE
    try:
        if options.once or options.frames:
            return asyncio.run(run_frames(options, out=out))
        return asyncio.run(run_live(options, out=out))
    except MonitorError as error:
        print(f"laserctl: {error}", file=err)
        return EXIT_NO_FEED
    except BrokerError as error:
        print(f"laserctl: {error}", file=err)
        return EXIT_NO_BROKER
    except KeyboardInterrupt:
        return EXIT_OK

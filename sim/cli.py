"""laser-sim: serve the simulated LS-4 and FT-8, act on the bench, run a tissue scenario, watch the devices.

Every failure is one line on stderr. Exit codes: 0 done, 1 the action failed (bench refused,
server could not start, devices unreachable), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from protocol import ft8 as FT8
from protocol import ls4 as LS4

from .clock import MAX_TIME_SCALE

PROG = "laser-sim"
SYNC_PERIOD_S = 0.020  # device timers run between requests, well inside the LS-4's 10 ms x a few
SHOW_PERIOD_S = 0.5  # ~2 Hz
SHOW_TIMEOUT_S = 1.0

log = logging.getLogger("laser-sim")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2), not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class _BadArguments(Exception):
    """Found after parsing (a missing file, a bad scenario): one line, exit 2."""


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return code


# --- argument types --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def host_port(text: str) -> HostPort:
    """HOST:PORT, [IPv6]:PORT; port 0 asks for any free port."""
    host, sep, port_text = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with PORT 0-65535, got {text!r}")
    return HostPort(host, int(port_text))


def time_scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= MAX_TIME_SCALE:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most {MAX_TIME_SCALE:g}, got {text}")
    return value


def _parser() -> _Parser:
    parser = _Parser(prog=PROG, description="The LS-4 laser source and FT-8 thermometer on real Modbus, with the patient as physics.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve both devices (LS-4 unit 1, FT-8 unit 2) on one bus")
    where = serve.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", type=host_port, metavar="HOST:PORT", help="Modbus TCP (port 0: any free port)")
    where.add_argument("--rtu", metavar="DEV", help="Modbus RTU on a serial device or pty (115200 8E1)")
    serve.add_argument("--bench", metavar="SOCK", help="Unix socket for bench actions (laser-sim bench SOCK ...)")
    serve.add_argument("--time-scale", type=time_scale, default=1.0, metavar="K", help="device time runs K times wall time")
    serve.add_argument("--scenario", metavar="F", help="tissue scenario file for the thermal model (sim.tissue)")
    serve.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the devices' noise")

    bench = commands.add_parser("bench", help="carry out one bench action and print the ground truth (JSON)")
    bench.add_argument("sock", metavar="SOCK")
    bench.add_argument("action", nargs=argparse.REMAINDER, metavar="ACTION", help="e.g. footswitch press")

    commands.add_parser("ablate", help="run a tissue scenario open-loop (sim.tissue.ablate; see its --help)", add_help=False)

    show = commands.add_parser("show", help="live view of both devices, read back over Modbus")
    show_where = show.add_mutually_exclusive_group(required=True)
    show_where.add_argument("--tcp", type=host_port, metavar="HOST:PORT")
    show_where.add_argument("--rtu", metavar="DEV")
    show.add_argument("--once", action="store_true", help="print one frame and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["ablate"]:
        return _ablate(args_list[1:])  # everything after belongs to the ablate tool, options included
    args = _parser().parse_args(args_list)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "bench":
            return _bench(args)
        return _show(args)
    except _BadArguments as exc:
        return _fail(f"{args.command}: {exc}", 2)
    except KeyboardInterrupt:
        return 130


# --- ablate ---------------------------------------------------------------------------------------------


def _ablate(argv: list[str]) -> int:
    try:
        from sim.tissue.ablate import main as ablate_main
    except ImportError as exc:
        return _fail(f"ablate: needs sim.tissue.ablate, which is not available ({exc})", 2)
    return int(ablate_main(argv) or 0)


# --- bench ----------------------------------------------------------------------------------------------


def _bench(args: argparse.Namespace) -> int:
    from .bench import BenchRequestError, bench_request_sync

    if not args.action:
        raise _BadArguments("no action given (e.g. laser-sim bench SOCK state)")
    try:
        result = bench_request_sync(args.sock, args.action)
    except BenchRequestError as exc:
        return _fail(str(exc), 1)
    print(json.dumps(result, indent=2))
    return 0


# --- serve ----------------------------------------------------------------------------------------------


def _load_thermal(path: str) -> Any:
    """The scenario's thermal model (sim.tissue is imported only when a scenario is asked for)."""
    try:
        from sim.tissue import load_thermal_model
    except ImportError as exc:
        raise _BadArguments(f"--scenario needs sim.tissue, which is not available ({exc})") from None
    try:
        return load_thermal_model(path)  # a file, or the name of a shipped scenario
    except ValueError as exc:  # sim.tissue.ScenarioError: one line naming the field
        raise _BadArguments(f"--scenario: {exc}") from None
    except Exception as exc:
        raise _BadArguments(f"--scenario {path}: {type(exc).__name__}: {exc}") from None


def _serve(args: argparse.Namespace) -> int:
    if args.rtu is not None and not os.path.exists(args.rtu):
        raise _BadArguments(f"no serial device {args.rtu}")
    if args.bench is not None and not os.path.isdir(os.path.dirname(os.path.abspath(args.bench))):
        raise _BadArguments(f"no directory for the bench socket {args.bench}")
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    thermal = _load_thermal(args.scenario) if args.scenario else None
    return asyncio.run(_serve_async(args, thermal))


async def _keep_time(world: Any) -> None:
    """Bring the models to the present every SYNC_PERIOD_S, so timers run with no request arriving."""
    from .light_prefetch import LightPrefetch  # a tissue model's light after a pull-back, off the event loop

    prefetch = LightPrefetch(world.thermal) if LightPrefetch.applies(world.thermal) else None
    failing = False
    while True:
        try:
            world.sync()
            if prefetch is not None:
                prefetch.poll()
            failing = False
        except Exception:
            if not failing:  # once per failure streak, not 50 times a second
                log.exception("world.sync() failed")
            failing = True
        await asyncio.sleep(SYNC_PERIOD_S)


async def _serve_async(args: argparse.Namespace, thermal: Any) -> int:
    from .bench import BenchServeError, start_bench_server
    from .clock import SimClock
    from .server import ServeError, ServerHandle, start_rtu_server, start_tcp_server
    from .world import SimWorld

    world = SimWorld(clock=SimClock(time_scale=args.time_scale), thermal=thermal, seed=args.seed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    server: ServerHandle | None = None
    bench = None
    ticker = None
    try:
        if args.tcp is not None:
            server = await start_tcp_server(world, host=args.tcp.host, port=args.tcp.port)
            where = f"tcp {HostPort(args.tcp.host, server.port or 0)}"
        else:
            server = await start_rtu_server(world, port=args.rtu)
            where = f"rtu {server.where} at {server.line}"
        if args.bench is not None:
            bench = await start_bench_server(world, path=args.bench)
        ticker = asyncio.create_task(_keep_time(world))
        # the ready line: scripts and tests wait for it; where it serves comes last, after "on"
        units = " and ".join(f"{d.identity.product_code} (unit {u})" for u, d in sorted(world.devices.items()))
        bench_text = f", bench {args.bench}" if bench is not None else ""
        print(f"{PROG}: serving {units}, time scale {args.time_scale:g}{bench_text}, on {where}", file=sys.stderr, flush=True)
        await stop.wait()
    except (ServeError, BenchServeError) as exc:
        return _fail(str(exc), 1)
    finally:
        if ticker is not None:
            ticker.cancel()
        if bench is not None:
            await bench.stop()
        if server is not None:
            await server.stop()
    print(f"{PROG}: stopped", file=sys.stderr, flush=True)
    return 0


# --- show -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One refresh of the view: each part is decoded, or the reason it is missing."""

    ls4: LS4.LS4Snapshot | str
    ls4_holding: LS4.LS4Holding | str
    ft8: FT8.FT8Snapshot | str


def _flags(flags: int, names: type) -> str:
    return " ".join(f.name for f in names if f in flags) or "-"  # type: ignore[attr-defined]


def render(frame: Frame, *, where: str) -> str:
    """The view as text (pure: tested without a terminal)."""
    lines = [f"laser-sim show  {where}", ""]
    s, h = frame.ls4, frame.ls4_holding
    if isinstance(s, str):
        lines.append(f"LS-4 (unit {LS4.UNIT_ID}): {s}")
    else:
        fault = f" ch {s.fault_channel}" if s.fault_channel is not None else ""
        lines.append(
            f"LS-4 (unit {LS4.UNIT_ID})  {s.device_state.name}  fault {s.fault_code.name}{fault}  uptime {s.uptime_ms / 1000:.1f} s"
            f"  heartbeat {s.heartbeat_echo}  watchdog {s.watchdog_remaining_ms} ms  cabinet {s.cabinet_temp_c:.1f} C"
        )
        lines.append(f"  inputs: {_flags(s.interlocks, LS4.Interlocks)}")
        lines.append("  ch  setpoint  active  output  backrefl  diode     energy      on-time  status")
        for c in range(LS4.CHANNEL_COUNT):
            setpoint = f"{h.power_setpoint_mw[c]:>5} mW" if not isinstance(h, str) else "    ? mW"
            lines.append(
                f"  {c:>2}  {setpoint}  {s.active_setpoint_mw[c]:>5}   {s.output_power_mw[c]:>5}  {s.back_reflection_pct[c]:>5.1f} %"
                f"  {s.diode_temp_c[c]:>5.2f} C  {s.energy_mj[c] / 1000:>8.1f} J  {s.emission_time_ms[c] / 1000:>7.1f} s"
                f"  {_flags(s.ch_status[c], LS4.ChannelStatus)}"
            )
    lines.append("")
    t = frame.ft8
    if isinstance(t, str):
        lines.append(f"FT-8 (unit {FT8.UNIT_ID}): {t}")
    else:
        lines.append(
            f"FT-8 (unit {FT8.UNIT_ID})  {_flags(t.status, FT8.Status)}  samples {t.sample_counter}  period {t.sample_period_actual_ms} ms"
        )
        for c in range(FT8.CHANNEL_COUNT):
            temp = "   --.-- C" if t.temperature_c[c] is None else f"{t.temperature_c[c]:>7.2f} C"
            lines.append(f"  {c:>2}  {temp}  {_flags(t.probe_status[c], FT8.ProbeStatus)}")
    return "\n".join(lines)


async def _read_block(client: Any, fc: int, unit: int, first: int, count: int) -> list[int] | str:
    try:
        read = client.read_holding_registers if fc == 3 else client.read_input_registers
        rr = await read(first, count=count, device_id=unit)
    except Exception as exc:
        return f"no answer ({type(exc).__name__})"
    if rr.isError():
        return f"exception {rr.exception_code:#04x}"
    return list(rr.registers)


async def read_frame(client: Any) -> Frame:
    words = await _read_block(client, 4, LS4.UNIT_ID, LS4.INPUT_FIRST, LS4.INPUT_COUNT)
    holding = await _read_block(client, 3, LS4.UNIT_ID, LS4.HOLDING_FIRST, LS4.HOLDING_COUNT)
    probes = await _read_block(client, 4, FT8.UNIT_ID, FT8.INPUT_FIRST, FT8.INPUT_COUNT)
    return Frame(
        ls4=words if isinstance(words, str) else LS4.LS4Snapshot.from_words(words),
        ls4_holding=holding if isinstance(holding, str) else LS4.LS4Holding.from_words(holding),
        ft8=probes if isinstance(probes, str) else FT8.FT8Snapshot.from_words(probes),
    )


def _show(args: argparse.Namespace) -> int:
    if args.rtu is not None and not os.path.exists(args.rtu):
        raise _BadArguments(f"no serial device {args.rtu}")
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # a missing answer is shown in the view
    return asyncio.run(_show_async(args))


def _client(args: argparse.Namespace) -> tuple[Any, str]:
    from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
    from pymodbus.framer import FramerType

    from protocol.serial_line import line_parity

    if args.tcp is not None:
        return AsyncModbusTcpClient(args.tcp.host, port=args.tcp.port, timeout=SHOW_TIMEOUT_S, retries=0), f"tcp {args.tcp}"
    parity = line_parity(args.rtu, LS4.SERIAL_PARITY, baudrate=LS4.SERIAL_BAUD)
    client = AsyncModbusSerialClient(
        args.rtu,
        framer=FramerType.RTU,
        baudrate=LS4.SERIAL_BAUD,
        bytesize=LS4.SERIAL_BYTESIZE,
        parity=parity,
        stopbits=LS4.SERIAL_STOPBITS,
        timeout=SHOW_TIMEOUT_S,
        retries=0,
    )
    return client, f"rtu {args.rtu}"


async def _show_async(args: argparse.Namespace) -> int:
    client, where = _client(args)
    clear = sys.stdout.isatty() and not args.once
    try:
        if not await client.connect():
            return _fail(f"show: cannot connect to {where}", 1)
        while True:
            frame = await read_frame(client)
            text = render(frame, where=where)
            print(("\x1b[H\x1b[J" if clear else "") + text, flush=True)
            if args.once:
                unreachable = all(isinstance(part, str) for part in (frame.ls4, frame.ft8))
                return _fail(f"show: no device answered on {where}", 1) if unreachable else 0
            await asyncio.sleep(SHOW_PERIOD_S)
    finally:
        with contextlib.suppress(Exception):
            client.close()


if __name__ == "__main__":
    sys.exit(main())

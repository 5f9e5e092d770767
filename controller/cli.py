"""laserctl: the operator's command line, talking to laserd over its Unix socket.

Every error is one line on stderr and a non-zero exit status. Nothing here can start emission:
`arm` only allows the physical footswitch to.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import monitor, planner, report
from .operator import request

DEFAULT_SOCKET_ENV = "LASERD_SOCKET"
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_NO_DAEMON = 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="laserctl", description="Operate laserd, the laser ablation host service.")
    p.add_argument("--socket", type=Path, default=os.environ.get(DEFAULT_SOCKET_ENV), help=f"laserd's socket (default ${DEFAULT_SOCKET_ENV})")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = sub.add_parser("status", help="device, session, link and cycle state")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    load = sub.add_parser("load", help="load a treatment plan (TOML)")
    load.add_argument("plan", type=Path)
    sub.add_parser("arm", help="arm the laser: emission may then start from the footswitch, and only from it")
    sub.add_parser("disarm", help="clear EMISSION_ENABLE (the session stays open)")
    sub.add_parser("stop", help="stop emission now and end the session as ABORTED")
    sub.add_parser("ack", help="acknowledge a safety trip once its cause is gone")
    sub.add_parser("pullback", help="confirm the fibres were pulled back for the next illumination")
    tune = sub.add_parser("tune", help="identify every fibre's thermal response (a short low-power run while the footswitch is pressed) and control with it")
    tune.add_argument("--power-w", type=float, default=None, help="each fibre's step power (default 1.5 W)")
    tune.add_argument("--wait", action="store_true", help="answer when the tune is done, with its result")
    tune.add_argument("--json", action="store_true", help="print the raw JSON")
    sessions = sub.add_parser("sessions", help="list recorded sessions")
    sessions.add_argument("--json", action="store_true")
    session = sub.add_parser("session", help="one session with its events")
    session.add_argument("id", type=int)
    session.add_argument("--json", action="store_true")
    monitor.add_parser(sub)
    report.add_parser(sub)
    planner.add_parser(sub)
    return p


def _fail(message: str, code: int) -> int:
    print(f"laserctl: {message}", file=sys.stderr)
    return code


def _format_status(s: dict[str, Any]) -> str:
    lines = [f"laserd    {s.get('daemon_state', '?')}   session {s.get('session_state', 'IDLE')}" + (f" #{s['session_id']}" if s.get("session_id") else "")]
    ls4 = s.get("ls4") or {}
    if ls4:
        lines.append(f"LS-4      {ls4.get('device_state')}  fault {ls4.get('fault_code')}  interlocks {ls4.get('interlocks')}")
        for c, ch in enumerate(ls4.get("channels", [])):
            lines.append(f"  ch{c}    set {ch['setpoint_mw']:>5} mW  out {ch['output_mw']:>5} mW  energy {ch['energy_j']:>8.1f} J" + (f" / {ch['budget_j']:.0f} J" if ch.get("budget_j") else ""))
    ft8 = s.get("ft8") or {}
    if ft8:
        temps = "  ".join("----" if t is None else f"{t:5.1f}" for t in ft8.get("temperature_c", []))
        lines.append(f"FT-8      counter {ft8.get('sample_counter')}  temps {temps}")
    if s.get("trip"):
        lines.append(f"TRIP      {s['trip']}")
    cyc = s.get("cycle") or {}
    if cyc:
        lines.append(
            f"cycle     period {cyc.get('period_ms')} ms  count {cyc.get('count')}  misses {cyc.get('deadline_misses')}  "
            f"cycle p50/p99/max {cyc.get('cycle_ms_p50')}/{cyc.get('cycle_ms_p99')}/{cyc.get('cycle_ms_max')} ms  jitter p99 {cyc.get('jitter_ms_p99')} ms"
        )
    mqtt = s.get("mqtt") or {}
    if mqtt.get("enabled"):
        state = "connected" if mqtt.get("connected") else f"DOWN ({mqtt.get('error') or 'connecting'})"
        lines.append(
            f"mqtt      {mqtt.get('broker')}  {state}  telemetry dropped {mqtt.get('telemetry_dropped', 0)}  "
            f"events queued {mqtt.get('events_queued', 0)} dropped {mqtt.get('events_dropped', 0)}"
        )
    for name, link in (s.get("links") or {}).items():
        lines.append(f"bus {name:<6}{'up' if link.get('up') else 'DOWN'}  " + "  ".join(f"{k} {v}" for k, v in link.get("counters", {}).items()))
    return "\n".join(lines)


def _format_sessions(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no sessions"
    out = [f"{'id':>4}  {'state':<12} {'created':<26} energy J"]
    for r in rows:
        out.append(f"{r['id']:>4}  {r['state']:<12} {r.get('created', ''):<26} {r.get('delivered_energy_j', '')}")
    return "\n".join(out)


async def _run(args: argparse.Namespace) -> int:
    extra: dict[str, Any] = {}
    if args.command == "load":
        try:
            extra = {"plan_text": args.plan.read_text(encoding="utf-8"), "plan_path": str(args.plan.resolve())}
        except OSError as err:
            return _fail(f"cannot read plan {args.plan}: {err.strerror}", EXIT_USAGE)
    elif args.command == "session":
        extra = {"id": args.id}
    elif args.command == "tune":
        extra = {"wait": args.wait} | ({} if args.power_w is None else {"power_w": args.power_w})
    try:
        reply = await request(args.socket, args.command, **extra)
    except (FileNotFoundError, ConnectionRefusedError):
        return _fail(f"laserd is not running (nothing listening at {args.socket})", EXIT_NO_DAEMON)
    except PermissionError:
        return _fail(f"no permission to use {args.socket} (are you in laserd's group?)", EXIT_NO_DAEMON)
    except (ConnectionError, json.JSONDecodeError) as err:
        return _fail(f"laserd did not answer properly: {err}", EXIT_NO_DAEMON)
    if not reply.get("ok"):
        return _fail(str(reply.get("error", "refused")), EXIT_REFUSED)
    result = reply.get("result", {})
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2, sort_keys=True))
    elif args.command == "status":
        print(_format_status(result))
    elif args.command == "sessions":
        print(_format_sessions(result.get("sessions", [])))
    else:
        print(result.get("message") or json.dumps(result, indent=2, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "monitor":  # MQTT only: no socket, and nothing it could send to the daemon
        return monitor.main(args)
    if args.command == "plan":  # offline computation with the tissue model: no daemon, no socket
        return planner.main(args)
    if args.command == "report":  # laserd over the socket, or a journal file (--journal): it sorts that out
        return report.main(args)
    if args.socket is None:
        return _fail(f"no socket given: use --socket PATH or set ${DEFAULT_SOCKET_ENV}", EXIT_USAGE)
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())

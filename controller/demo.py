"""`make demo`: a whole simulated treatment, start to finish, in about a minute.

laser-sim serves the LS-4 and FT-8 on Modbus/TCP; laserd drives them; this script plays the
operator (laserctl's commands over the socket) and the physical world (the footswitch, through
the simulator's bench). It shows the devices read back over Modbus, a live progress view while
the light is on, and ends with where the treatment record is.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .launcher import BIN, DaemonProcess, SimProcess, wait_until, write_config

REPO = Path(__file__).resolve().parent.parent
PLAN = REPO / "examples" / "plan-fixed.toml"
DEMO_TIME_SCALE = 10.0
PROGRESS_EVERY_S = 0.5  # wall


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def show_devices(sim: SimProcess) -> None:
    subprocess.run([str(BIN / "laser-sim"), "show", "--tcp", sim.where, "--once"], check=False)


def progress(daemon: DaemonProcess) -> str:
    status = daemon.status()
    session = status.get("session") or {}
    ls4 = status.get("ls4") or {}
    ft8 = status.get("ft8") or {}
    chans = []
    for c, ch in enumerate(ls4.get("channels", [])):
        if ch.get("budget_j"):
            share = min(1.0, ch["energy_j"] / ch["budget_j"])
            bar = "#" * round(share * 20)
            chans.append(f"ch{c} {ch['output_mw'] / 1000:4.1f} W [{bar:<20}] {ch['energy_j']:6.1f}/{ch['budget_j']:.0f} J")
    temps = " ".join("--" if t is None else f"{t:.0f}" for t in ft8.get("temperature_c", []))
    state = f"{status['session_state']:<9} illum {session.get('illumination', 0) + 1}/{session.get('illuminations', 1)}"
    return f"{state} | {' | '.join(chans)} | probes {temps} C"


def run_until(daemon: DaemonProcess, states: set[str], *, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = progress(daemon)
        print(line, flush=True)
        state = line.split()[0]
        if state in states:
            return state
        time.sleep(PROGRESS_EVERY_S)
    raise SystemExit(f"demo: no {sorted(states)} within {timeout_s:g} s; laserd log: {daemon.log_path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "demo-out", help="where the journal and logs go")
    parser.add_argument("--time-scale", type=float, default=DEMO_TIME_SCALE)
    args = parser.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    sim = SimProcess(transport="tcp", tmp=args.out, time_scale=args.time_scale)
    daemon: DaemonProcess | None = None
    try:
        say(f"laser-sim: LS-4 and FT-8 on Modbus/TCP, device time x{args.time_scale:g}")
        sim.start()
        print(sim.stderr_lines[-1].strip())
        show_devices(sim)
        say("laserd: identifies both devices, takes host control of the LS-4")
        daemon = DaemonProcess(config=write_config(args.out, sim, log_level="warning"), tmp=args.out, time_scale=args.time_scale).start()
        devices = daemon.status()["devices"]
        print(", ".join(f"{d['product']} firmware {d['firmware']} (unit {d['unit']})" for d in devices.values()))
        show_devices(sim)
        say(f"operator: laserctl load {PLAN.relative_to(REPO)}; laserctl arm")
        print(daemon.ok("load", plan_text=PLAN.read_text(), plan_path=str(PLAN))["message"])
        print(daemon.ok("arm")["message"])
        say("physical world: the radiologist presses the footswitch (nothing else can start emission)")
        sim.bench("footswitch", "press")
        run_until(daemon, {"PULLBACK", "COMPLETE"}, timeout_s=120)
        if daemon.session_state() == "PULLBACK":
            say("first fibre position done: footswitch released, fibres pulled back, operator confirms")
            sim.bench("footswitch", "release")
            print(daemon.ok("pullback")["message"])
            sim.bench("footswitch", "press")
            run_until(daemon, {"COMPLETE"}, timeout_s=120)
        sim.bench("footswitch", "release")
        session_id = daemon.status()["session_id"]
        record = daemon.ok("session", id=session_id)
        truth = sim.truth()["ls4"]
        say(f"session {session_id}: {record['state']}")
        print(f"delivered energy per channel (journal): {[round(e, 1) for e in record['delivered_energy_j']]} J")
        print(f"emitted energy per channel (simulator ground truth): {truth['true_tip_energy_j']} J")
        print(f"{record['sample_count']} samples and {len(record['events'])} events in the journal")
        for event in record["events"]:
            print(f"  {event['kind']:<16} {event['from'] or '':<9} -> {event['to'] or '':<9} {event['message']}")
    finally:
        if daemon is not None:
            daemon.stop()
        sim.stop()
    say(f"treatment record (SQLite journal): {args.out / 'journal.sqlite'}")
    print(f"laserd log: {daemon.log_path if daemon else '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

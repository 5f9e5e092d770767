"""Benchmark: does the MQTT broker's health change laserd's control cycle? It must not.

laser-sim + laserd run as processes (controller/launcher.py) with a session EMITTING, once per
broker scenario, for the same wall-clock time each:

    off         [mqtt] disabled: the reference
    up          mosquitto running
    down        mqtt enabled, nothing listening on the port (never started)
    restarting  mosquitto SIGKILLed and restarted every few seconds
    stalled     mosquitto SIGSTOPped after laserd connected: TCP accepts, nothing answers ("slow")

For each it reads laserd's cycle statistics (`laserctl status --json` -> cycle: wall time of
one cycle p50/p99/max, start jitter p99/max, deadline misses; the window is the last 2000
cycles, start-up included) and the publisher's counters, prints the runs side by side and
writes bench/results/telemetry.json. Also: the cost of building and encoding one telemetry
message in-process. Numbers depend on the machine and its load (recorded).

    python bench/bench_telemetry.py [--seconds S] [--time-scale K] [--scenarios up,down,...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "hil_tests"))  # the mosquitto process helper the tests use

from controller.launcher import DaemonProcess, SimProcess, fixed_plan, laserctl, wait_until, write_config  # noqa: E402
from mosquitto_broker import Broker, available, free_port  # noqa: E402

SCENARIOS = ("off", "up", "down", "restarting", "stalled")
DEFAULT_RUN = "off,up,down,restarting,stalled,off"  # off twice: the spread between two identical runs is the noise
RESULTS = ROOT / "bench" / "results" / "telemetry.json"
RESTART_UP_S = 2.5  # restarting: broker up this long, then killed ...
RESTART_DOWN_S = 1.0  # ... and down this long
POWER_W = 2.0


def mqtt_section(port: int) -> str:
    return f'\n[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\ndevice_id = "bench"\ntelemetry_hz = 5.0\nqueue_size = 1000\n'


class Restarter(threading.Thread):
    def __init__(self, broker: Broker) -> None:
        super().__init__(daemon=True)
        self.broker = broker
        self.stopping = threading.Event()
        self.restarts = 0

    def run(self) -> None:
        while not self.stopping.wait(RESTART_UP_S):
            self.broker.kill()
            if self.stopping.wait(RESTART_DOWN_S):
                break
            self.broker.start()
            self.restarts += 1


def run_scenario(name: str, *, seconds: float, time_scale: float, tmp: Path) -> dict[str, Any]:
    sim = SimProcess(transport="tcp", tmp=tmp, time_scale=time_scale).start()
    broker = Broker(tmp=tmp / "mosquitto")
    daemon: DaemonProcess | None = None
    restarter: Restarter | None = None
    try:
        config = write_config(tmp, sim)
        if name != "off":
            broker.port = free_port()
            if name != "down":
                broker.start()
            config.write_text(config.read_text() + mqtt_section(broker.port))
        daemon = DaemonProcess(config=config, tmp=tmp, time_scale=time_scale).start()
        if name in ("up", "restarting", "stalled"):
            wait_until(lambda: daemon.status()["mqtt"]["connected"], what="laserd on the broker")
        daemon.ok("load", plan_text=fixed_plan(power_w=POWER_W, budget_j=5000.0))
        daemon.ok("arm")
        sim.bench("footswitch", "press")
        wait_until(lambda: daemon.session_state() == "EMITTING", what="EMITTING")
        if name == "stalled":
            broker.pause()
        if name == "restarting":
            restarter = Restarter(broker)
            restarter.start()
        time.sleep(seconds)  # the measurement: the daemon runs, the broker does what the scenario says
        if restarter is not None:
            restarter.stopping.set()
            restarter.join()
        result = laserctl(daemon.socket, "status", "--json")
        if result.returncode != 0:
            raise RuntimeError(f"laserctl status failed: {result.stderr.strip()}")
        status = json.loads(result.stdout)
        return {
            "scenario": name,
            "session_state": status["session_state"],
            "trip": status["trip"],
            "cycle": status["cycle"],
            "mqtt": status["mqtt"],
            "restarts": restarter.restarts if restarter is not None else 0,
        }
    finally:
        broker.resume()
        if daemon is not None:
            started = time.monotonic()
            daemon.stop()
            stop_s = time.monotonic() - started
            if daemon.proc is not None and daemon.proc.returncode not in (0, None):
                print(f"  {name}: laserd exited {daemon.proc.returncode}", file=sys.stderr)
            if stop_s > 5.0:
                print(f"  {name}: laserd took {stop_s:.1f} s to stop", file=sys.stderr)
        broker.stop()
        sim.stop()


def build_cost_us(repeats: int = 2000) -> tuple[float, float]:
    """Wall time of building and encoding one realistic telemetry message, in-process, and of the
    cycle-time percentiles it carries (refreshed once a second, not per message)."""
    import dataclasses

    from controller.cycle_stats import CycleStats
    from controller.telemetry import Identity, ProbeView, SessionView, cycle_percentiles, encode, telemetry_payload
    from protocol import ft8 as FT8
    from protocol import ls4 as LS4
    from protocol.ft8 import FT8Snapshot
    from protocol.ls4 import LS4Snapshot

    stats = CycleStats(period_s=0.1)
    for i in range(2000):
        stats.record(started_late_ms=i % 7, took_wall_ms=2.0 + i % 5, ended_s=i * 0.1, missed=False)
    view = SessionView(
        session_id=1, state="EMITTING", open=True, illumination=0, illuminations=1, plan_sha256="0" * 64, max_session_energy_j=1000.0,
        session_energy_j=(10.0, 10.0, 0.0, 0.0), illumination_energy_j=(10.0, 10.0, 0.0, 0.0), budgets_j=(150.0, 150.0, None, None),
        fibres_done=frozenset(), probes=tuple(ProbeView(channel=c, role="tip", max_temp_c=95.0, max_cem43_min=None, lethal_cem43_min=None) for c in (0, 1)),
        cem43_min={0: 1.0, 1: 1.0}, end_reason=None,
    )
    ls4 = LS4Snapshot.from_words([0] * LS4.INPUT_COUNT)
    ft8 = dataclasses.replace(FT8Snapshot.from_words([0] * FT8.INPUT_COUNT), temperature_c=(50.0,) * 8)
    counters = {"requests": 1, "ok": 1, "timeouts": 0, "crc_errors": 0, "exception_responses": 0, "connection_errors": 0, "reconnects": 0, "consecutive_failures": 0}
    ident = Identity.new("bench")
    started = time.perf_counter()
    for _ in range(200):
        percentiles = cycle_percentiles(stats)
    percentiles_us = (time.perf_counter() - started) / 200 * 1e6
    cycle = {"period_ms": 100.0, "count": stats.count, "deadline_misses": 0, **percentiles}
    started = time.perf_counter()
    for seq in range(repeats):
        encode(
            telemetry_payload(
                ident=ident, seq=seq, t_wall_s=time.time(), t_host_s=1.0, time_scale=1.0, daemon_state="running", ls4=ls4, ft8=ft8,
                setpoint_mw=(2000, 2000, 0, 0), session=view, trip=None, links={"main": (True, counters)}, cycle=cycle,
                queues={"telemetry_dropped": 0, "telemetry_queued": 0, "events_dropped": 0, "events_queued": 0},
            )
        )
    return (time.perf_counter() - started) / repeats * 1e6, percentiles_us


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="wall-clock seconds measured per scenario")
    parser.add_argument("--time-scale", type=float, default=4.0, help="laser-sim and laserd --time-scale (the HIL tests' 4)")
    parser.add_argument("--scenarios", default=DEFAULT_RUN, help=f"comma-separated, in order (default {DEFAULT_RUN})")
    args = parser.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    if unknown := sorted(set(scenarios) - set(SCENARIOS)):
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    if (missing := available()) is not None:
        print(f"bench_telemetry: {missing}", file=sys.stderr)
        return 1
    load_before = os.getloadavg()
    runs = []
    for name in scenarios:
        with tempfile.TemporaryDirectory(prefix=f"bench-telemetry-{name}-") as tmp:
            print(f"  {name} ...", file=sys.stderr, flush=True)
            runs.append(run_scenario(name, seconds=args.seconds, time_scale=args.time_scale, tmp=Path(tmp)))
    load_after = os.getloadavg()
    cost_us, percentiles_us = build_cost_us()

    period_ms = runs[0]["cycle"]["period_ms"]
    print(
        f"laserd control cycle vs the MQTT broker: {args.seconds:g} s wall per scenario, time scale {args.time_scale:g} "
        f"(period {period_ms:g} ms device = {period_ms / args.time_scale:g} ms wall), session EMITTING, telemetry 5 Hz; "
        f"load {load_before[0]:.2f} -> {load_after[0]:.2f}; {platform.processor() or platform.machine()}, {os.cpu_count()} cpus"
    )
    rows = [
        ("cycles", lambda r: r["cycle"]["count"]),
        ("deadline misses", lambda r: r["cycle"]["deadline_misses"]),
        ("cycle ms p50 (wall)", lambda r: r["cycle"]["cycle_ms_p50"]),
        ("cycle ms p99 (wall)", lambda r: r["cycle"]["cycle_ms_p99"]),
        ("cycle ms max (wall)", lambda r: r["cycle"]["cycle_ms_max"]),
        ("jitter ms p99 (device)", lambda r: r["cycle"]["jitter_ms_p99"]),
        ("jitter ms max (device)", lambda r: r["cycle"]["jitter_ms_max"]),
        ("session", lambda r: r["session_state"] + (" TRIP" if r["trip"] else "")),
        ("mqtt connects", lambda r: r["mqtt"].get("connects", "-")),
        ("telemetry published", lambda r: r["mqtt"].get("telemetry_published", "-")),
        ("telemetry dropped", lambda r: r["mqtt"].get("telemetry_dropped", "-")),
        ("telemetry queued", lambda r: r["mqtt"].get("telemetry_queued", "-")),
        ("events dropped", lambda r: r["mqtt"].get("events_dropped", "-")),
        ("broker restarts", lambda r: r["restarts"] if r["scenario"] == "restarting" else "-"),
    ]
    header = f"{'':<24}" + "".join(f"{r['scenario']:>12}" for r in runs)
    print(header)
    print("-" * len(header))
    for label, get in rows:
        print(f"{label:<24}" + "".join(f"{get(r)!s:>12}" for r in runs))
    print(f"telemetry message build + encode: {cost_us:.0f} us; cycle percentiles over the 2000-cycle window: {percentiles_us:.0f} us, once a second")
    errors = {r["scenario"]: r["mqtt"].get("error") for r in runs if r["mqtt"].get("error")}
    for name, error in errors.items():
        print(f"  {name}: {error}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "seconds": args.seconds,
                "time_scale": args.time_scale,
                "load_before": load_before,
                "load_after": load_after,
                "cpus": os.cpu_count(),
                "build_encode_us": round(cost_us, 1),
                "cycle_percentiles_us": round(percentiles_us, 1),
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

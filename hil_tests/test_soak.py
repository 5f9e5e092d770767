"""Soak: an hour of device time of back-to-back treatments, with laserd's memory and cycle time watched.

laser-sim and laserd run at an accelerated time scale; treatments follow one another (FIXED_POWER
and TEMPERATURE, every third one paused and resumed on the footswitch), with telemetry to a real
mosquitto. Along the run laserd's resident memory is sampled from /proc/PID/status (VmRSS), and its
control-cycle statistics from `laserctl status` (the last WINDOW_CYCLES cycles: the first full
window is compared with the last).

What must hold: no safety trip, every session COMPLETE, no telemetry or event dropped; no cycle
longer than the control period in wall time (in real time no deadline would be missed), and at
the accelerated scale deadline misses not the rule (MISS_FRACTION_MAX: beyond it the scale is more
than laserd and the simulator sustain, and the run proves little); RSS growth after the first
session and over the second half of the run bounded; laserd's CPU time per cycle over the last
quarter of the run not drifted from the first quarter. The cycle's wall-time p50 and p99 in the
first and last windows are reported, not judged: on a shared 2-core machine they follow whatever
else runs (measured: p99 10.8 -> 31.6 ms while other test suites ran, with the CPU time per cycle
flat), whereas a leak or a growing structure shows in laserd's own CPU time. The largest
difference between the energy a session booked and what the tips received is reported.

Not zero misses: the odd cycle takes 25-45 ms of wall time (a garbage collection, a busy moment;
with the journal on disk also its fsync, which laserd does inside the cycle). That is nothing in
real time (250 ms), but at any scale that fits in CI it is a miss or two an hour (measured: 1-2 in
14 500 cycles at x12); zero misses need K <= ~5 here, an hour in 12 minutes.

The time scale. laserd's cycle is three Modbus round trips to a Python server (~2 ms of laserd's
CPU and ~3 ms of the simulator's per cycle, measured with /proc/PID/stat), ~5-10 ms of wall time on
two idle cores, and the simulator's devices step every 10 ms of device time. With the usual 100 ms
control period deadlines are missed above about x4-x6, so an hour of device time would take 10-15
minutes, and x30-x60 is out of reach (a cycle would have 2-3 ms of wall time). The soak therefore
runs laserd at the longest control period the HIL limits allow (250 ms: probe_stale_ms <= 500 must
be >= 2 periods; power_tolerance_persist_ms and the watchdog follow), at x12: a cycle every 20.8 ms
of wall time, an hour in 5 minutes. LASERHOST_SOAK_DEVICE_S sets the device time (default 3600),
LASERHOST_SOAK_TIME_SCALE the scale (default 12).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest

from controller.cycle_stats import WINDOW_CYCLES
from controller.launcher import DaemonProcess, fixed_plan, wait_until
from hil_env import ANY, Bench, Target
from hil_summary import Row
from mosquitto_broker import Broker

SOAK_DEVICE_S: Final = float(os.environ.get("LASERHOST_SOAK_DEVICE_S", "3600"))
TIME_SCALE: Final = float(os.environ.get("LASERHOST_SOAK_TIME_SCALE", "12"))  # see above; lower it on a busy machine
CONTROL_PERIOD_MS: Final = 250
# The LS-4 watchdog goes with the period (at least 3 periods); 2000 ms, the datasheet's longest, is
# 167 ms of wall time at x12.
WATCHDOG_TIMEOUT_MS: Final = 2000
# The journal lives in memory (the memory_dir fixture, tmpfs): the CI disk's fsync (3-12 ms, spikes
# of 25 ms and more) is 1-5 % of a cycle in real time, but x12 of it is a late cycle or a
# cycle_overrun trip (seen: a start 0.308 s late); the soak is about laserd, not the disk.
# The overrun bound goes with the period too: the longest the config allows (250 ms of device
# time, 20.8 ms of wall time at x12; the default 150 ms was 12.5 ms, and a 14.5 ms stall of a
# shared machine tripped a soak's session 4).
MAX_CYCLE_OVERRUN_MS: Final = 250
TELEMETRY_HZ: Final = 2.0  # wall clock; at most the control rate (4 Hz)
BUDGET_J: Final = 120.0  # per fibre: 40 s of device time at 3 W (45 sessions an hour, with the waits)
POWER_W: Final = 3.0
TARGET_C: Final = 55.0
# Bounds. Measured (an hour, x12, the processes given the cores): 1-2 misses in 14 500 cycles; RSS
# +5.4 MB from the first session on, +2.3 MB over the second half (native memory: tracemalloc sees
# no growth of Python objects over 20 sessions); p50 6.1 -> 6.8 ms, p99 8.6 -> 9.9 ms.
# A leak of 1 kB a cycle would be 14 MB in the hour.
# of all cycles. Quiet machine: 1-2 in 14 500; with other test suites on the 2 cores: 123 (0.85 %)
# and 489 (3.4 %), every session COMPLETE and the CPU per cycle flat. Misses at an accelerated scale
# measure the machine; beyond a quarter of all cycles the hour is no longer run as a laserd in real
# time would run it, and the scale should come down.
MISS_FRACTION_MAX: Final = 0.25
RSS_GROWTH_MAX_MB: Final = 8.0  # from the end of the first session to the end
RSS_SECOND_HALF_MAX_MB: Final = 4.0  # over the second half of the run: a leak keeps growing, warm-up does not
# laserd's CPU time per cycle (user + system, /proc/PID/stat) over the last quarter of the run at most
# this times the first quarter's (+ CPU_DRIFT_FLOOR_MS): a structure growing with every cycle or
# session costs CPU before it costs memory one can see. Sessions alternate FIXED_POWER and
# TEMPERATURE and every third one pauses, so each quarter holds the same mixture.
CPU_PER_CYCLE_DRIFT_MAX: Final = 1.3
CPU_DRIFT_FLOOR_MS: Final = 0.3
OPEN_STATES: Final = ("LOADED", "ARMED", "EMITTING", "PAUSED", "PULLBACK")


def vm_rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+)\s+kB", text, re.MULTILINE)
    assert match, f"no VmRSS in /proc/{pid}/status"
    return int(match.group(1)) / 1024.0


def cpu_s(pid: int) -> float:
    """The process's user + system CPU seconds so far (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def temperature_plan() -> str:
    """TEMPERATURE on two fibres, each on its tip probe (no tune needed: typical gains)."""
    text = fixed_plan(power_w=POWER_W, budget_j=BUDGET_J)
    for c in (0, 1):
        text = text.replace(
            f'channel = {c}\nmode = "FIXED_POWER"\npower_w = {POWER_W}\n',
            f'channel = {c}\nmode = "TEMPERATURE"\nmax_power_w = 5.0\ntarget_temp_c = {TARGET_C}\ncontrol_probe = {c}\n',
        )
    assert text.count("TEMPERATURE") == 2
    return text


def soak_config(target: Target, tmp: Path, broker: Broker, journal_dir: Path) -> Path:
    config = target.write_config(tmp, log_level="warning", watchdog_timeout_ms=WATCHDOG_TIMEOUT_MS, journal_dir=journal_dir)
    text = config.read_text()
    for old, new in (
        ("control_period_ms = 100\n", f"control_period_ms = {CONTROL_PERIOD_MS}\n"),
        ("power_tolerance_persist_ms = 200\n", f"power_tolerance_persist_ms = {CONTROL_PERIOD_MS}\nmax_cycle_overrun_ms = {MAX_CYCLE_OVERRUN_MS}\n"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    text += f'\n[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {broker.port}\ndevice_id = "ls4-soak"\ntelemetry_hz = {TELEMETRY_HZ}\n'
    config.write_text(text)
    return config


@dataclass
class Soak:
    rss: list[tuple[float, float]] = field(default_factory=list)  # (device s since start, MB)
    cpu: list[tuple[float, float, int]] = field(default_factory=list)  # (device s since start, laserd CPU s, cycles)
    first_window: dict[str, Any] | None = None
    last_window: dict[str, Any] | None = None
    sessions: int = 0
    paused: int = 0
    energy_error_j: float = 0.0
    cycle_max_ms: float = 0.0  # over the whole run (each status covers the last WINDOW_CYCLES cycles)

    def rss_at(self, fraction: float, device_s: float) -> float:
        return min(self.rss, key=lambda r: abs(r[0] - fraction * device_s))[1]

    def cpu_ms_per_cycle(self, start: float, end: float, device_s: float) -> float:
        """laserd's CPU ms per control cycle between the samples nearest these fractions of the run."""
        a, b = (min(self.cpu, key=lambda c: abs(c[0] - f * device_s)) for f in (start, end))
        assert b[2] > a[2], f"no cycles between {start:g} and {end:g} of the run"
        return 1000.0 * (b[1] - a[1]) / (b[2] - a[2])


def _one_session(daemon: DaemonProcess, bench: Bench, n: int, soak: Soak) -> None:
    plan = temperature_plan() if n % 2 else fixed_plan(power_w=POWER_W, budget_j=BUDGET_J)
    before = bench.truth()["ls4"]["true_tip_energy_j"]
    session_id = daemon.ok("load", plan_text=plan)["session_id"]
    armed = daemon.ctl("arm")
    assert armed["ok"], f"session {session_id}: arm refused: {armed.get('error')}; trip: {daemon.status()['trip']}"
    bench("footswitch", "press")
    if n % 3 == 2:  # a pause halfway
        wait_until(lambda: bench.truth()["ls4"]["true_tip_energy_j"][0] - before[0] > BUDGET_J / 2, poll_s=0.1, what="half the budget")
        bench("footswitch", "release")
        wait_until(lambda: daemon.session_state() == "PAUSED", what="PAUSED")
        bench("footswitch", "press")
        soak.paused += 1
    wait_until(lambda: daemon.session_state() not in OPEN_STATES, timeout_s=60, poll_s=0.25, what=f"session {session_id} to end")
    bench("footswitch", "release")
    record = daemon.ok("session", id=session_id)
    assert record["state"] == "COMPLETE", f"session {session_id} {record['state']}: {daemon.status()['trip']}"
    after = bench.truth()["ls4"]["true_tip_energy_j"]
    soak.energy_error_j = max(soak.energy_error_j, *(abs(record["delivered_energy_j"][c] - (after[c] - before[c])) for c in (0, 1)))
    soak.sessions += 1


# Not in `make test`: at x12 the 150 ms overrun bound is 12.5 ms of wall time, and on a 2-core CI
# machine a single stall trips it (it passed 2 of 5 runs on a shared machine); at x8 it would take
# 7.5 min of the 20-minute CI budget. `make soak` runs it (docs/hil.md).
@pytest.mark.skipif(os.environ.get("LASERHOST_SOAK") != "1", reason="the soak runs with `make soak` (LASERHOST_SOAK=1), not in `make test`")
@pytest.mark.timeout(SOAK_DEVICE_S / TIME_SCALE * 2.0 + 120.0)  # wall seconds: twice the run, and the start
def test_an_hour_of_treatments_without_growth_or_drift(hil_row: Row, targets, mosquitto: Broker, memory_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    hil_row.set(scenario=f"soak {SOAK_DEVICE_S / 3600:g} h device time, x{TIME_SCALE:g}")
    target = targets(ANY, time_scale=TIME_SCALE)  # the bus wiring does not matter here
    hil_row.on(target)
    bench = target.bench
    assert bench is not None
    daemon = target.daemon(tmp_path, config=soak_config(target, tmp_path, mosquitto, memory_dir)).start()
    soak = Soak()
    try:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        start_s = bench.truth()["time_s"]
        n = elapsed = 0
        while elapsed < SOAK_DEVICE_S:
            _one_session(daemon, bench, n, soak)
            n += 1
            elapsed = bench.truth()["time_s"] - start_s
            status = daemon.status()
            assert status["trip"] is None, f"after {elapsed:.0f} s of device time: trip {status['trip']}"
            soak.cycle_max_ms = max(soak.cycle_max_ms, status["cycle"]["cycle_ms_max"])
            if soak.first_window is None and status["cycle"]["count"] >= WINDOW_CYCLES:
                soak.first_window = status["cycle"]
            soak.rss.append((elapsed, vm_rss_mb(pid)))
            soak.cpu.append((elapsed, cpu_s(pid), status["cycle"]["count"]))
        final = daemon.status()
        soak.last_window = final["cycle"]
        soak.cycle_max_ms = max(soak.cycle_max_ms, final["cycle"]["cycle_ms_max"])
        soak.rss.append((bench.truth()["time_s"] - start_s, vm_rss_mb(pid)))
        soak.cpu.append((soak.rss[-1][0], cpu_s(pid), final["cycle"]["count"]))
    finally:
        daemon.stop()

    device_s = soak.rss[-1][0]
    first, last = soak.first_window, soak.last_window
    assert first is not None and last is not None, "the run is shorter than two cycle-statistics windows"
    growth = soak.rss[-1][1] - soak.rss[0][1]
    second_half = soak.rss[-1][1] - soak.rss_at(0.5, device_s)
    cycles = last["count"]
    cpu_first = soak.cpu_ms_per_cycle(0.0, 0.25, device_s)
    cpu_last = soak.cpu_ms_per_cycle(0.75, 1.0, device_s)
    note = (
        f"{device_s:.0f} s of device time in {len(soak.rss)} RSS samples, {soak.sessions} sessions ({soak.paused} paused), "
        f"{cycles} cycles of {CONTROL_PERIOD_MS} ms, {last['deadline_misses']} deadline misses; "
        f"laserd RSS {soak.rss[0][1]:.1f} -> {soak.rss[-1][1]:.1f} MB (+{growth:.2f} MB; second half +{second_half:.2f} MB); "
        f"cycle wall ms p50 {first['cycle_ms_p50']:.2f} -> {last['cycle_ms_p50']:.2f}, p99 {first['cycle_ms_p99']:.2f} -> {last['cycle_ms_p99']:.2f}, "
        f"max {soak.cycle_max_ms:.2f}; laserd CPU per cycle {cpu_first:.2f} -> {cpu_last:.2f} ms (first and last quarter); start jitter p99 {first['jitter_ms_p99']:.1f} -> {last['jitter_ms_p99']:.1f} ms (device)"
    )
    print(f"\nsoak: {note}")
    hil_row.set(
        end_state="COMPLETE",
        energy_error_j=soak.energy_error_j,
        note=note,
        metrics={
            "device_s": device_s,
            "time_scale": TIME_SCALE,
            "control_period_ms": CONTROL_PERIOD_MS,
            "sessions": soak.sessions,
            "cycles": cycles,
            "rss_mb": [(round(t, 1), round(m, 3)) for t, m in soak.rss],
            "rss_growth_mb": round(growth, 3),
            "rss_second_half_mb": round(second_half, 3),
            "cycle_max_ms": soak.cycle_max_ms,
            "deadline_misses": last["deadline_misses"],
            "cpu_ms_per_cycle_first_quarter": round(cpu_first, 3),
            "cpu_ms_per_cycle_last_quarter": round(cpu_last, 3),
            "first_window": first,
            "last_window": last,
            "mqtt": final["mqtt"],
        },
    )
    assert device_s >= SOAK_DEVICE_S
    assert last["deadline_misses"] <= MISS_FRACTION_MAX * cycles, f"x{TIME_SCALE:g} is more than laserd and the simulator sustain here: {note}"
    assert soak.cycle_max_ms < CONTROL_PERIOD_MS, f"a cycle longer than the period in wall time (a deadline missed in real time): {note}"
    assert final["mqtt"]["connected"] and final["mqtt"]["events_dropped"] == 0 and final["mqtt"]["telemetry_dropped"] == 0
    assert growth <= RSS_GROWTH_MAX_MB, note
    assert second_half <= RSS_SECOND_HALF_MAX_MB, note
    assert cpu_last <= CPU_PER_CYCLE_DRIFT_MAX * cpu_first + CPU_DRIFT_FLOOR_MS, f"laserd's CPU per cycle drifted: {note}"

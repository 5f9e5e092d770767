"""The crash campaign: laserd killed with SIGKILL at random points of a treatment, again and again.

After each kill, from the simulator's side: emission never outlives the LS-4 watchdog bound
(WATCHDOG_TIMEOUT + the 10 ms stop + one 10 ms update, measured from the last heartbeat the
device accepted). After each restart, from the daemon's side: the session is INTERRUPTED, its
energy is what the LS-4 really counted (nothing lost beyond one cycle), and nothing resumes.
"""

from __future__ import annotations

import random
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.launcher import WATCHDOG_TIMEOUT_MS, DaemonProcess, SimProcess, fixed_plan, wait_until, write_config

KILLS = 50
SEED = 20261125
POWER_W = 3.0
CYCLE_S = 0.1
ONE_CYCLE_J = POWER_W * CYCLE_S
# the LS-4 checks its watchdog every 10 ms and stops within 10 ms
WATCHDOG_BOUND_S = WATCHDOG_TIMEOUT_MS / 1000.0 + 0.010 + 0.010
STAGES = ("LOADED", "ARMED", "EMITTING", "PAUSED")


@dataclass
class Kill:
    n: int
    stage: str
    energy_before_j: float
    heartbeat_age_at_stop_s: float | None
    recovered_j: float | None
    counted_j: float


@pytest.mark.parametrize("sim", ["tcp"], indirect=True)
def test_fifty_kill_9_points(sim: SimProcess, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    config = write_config(tmp_path, sim)
    results: list[Kill] = []
    daemon = DaemonProcess(config=config, tmp=tmp_path).start()
    try:
        for n in range(KILLS):
            stage = rng.choice(STAGES)
            if daemon.status()["trip"] is not None or daemon.status()["ls4"]["device_state"] == "FAULT":
                wait_until(lambda: daemon.ctl("ack")["ok"], what="ack after the previous kill")
            sim.bench("footswitch", "release")
            session_id = daemon.ok("load", plan_text=fixed_plan(power_w=POWER_W, budget_j=5000.0))["session_id"]
            before = sim.truth()["ls4"]["counter_energy_j"][0]
            if stage != "LOADED":
                daemon.ok("arm")
            if stage in ("EMITTING", "PAUSED"):
                sim.bench("footswitch", "press")
                wait_until(lambda: daemon.session_state() == "EMITTING", what="EMITTING")
                target = before + rng.uniform(0.5, 6.0)
                wait_until(lambda: sim.truth()["ls4"]["counter_energy_j"][0] >= target, what="some energy")
            if stage == "PAUSED":
                sim.bench("footswitch", "release")
                wait_until(lambda: daemon.session_state() == "PAUSED", what="PAUSED")
            daemon.signal(signal.SIGKILL)
            daemon.wait()
            if stage != "LOADED":  # host control was held: the LS-4 watchdog must act
                wait_until(lambda: sim.truth()["ls4"]["fault"] == "WATCHDOG_EXPIRED", what="LS-4 watchdog")
            truth = sim.truth()
            assert truth["ls4"]["true_output_mw"] == [0.0] * 4
            counted = truth["ls4"]["counter_energy_j"][0] - before
            daemon = DaemonProcess(config=config, tmp=tmp_path).start()
            record = daemon.ok("session", id=session_id)
            assert record["state"] == "INTERRUPTED", f"kill {n} in {stage}: session {record['state']}"
            assert daemon.status()["session_state"] == "IDLE"  # nothing resumes by itself
            assert sim.truth()["ls4"]["true_output_mw"] == [0.0] * 4
            results.append(
                Kill(
                    n=n,
                    stage=stage,
                    energy_before_j=before,
                    heartbeat_age_at_stop_s=truth["heartbeat_age_at_stop_s"] if stage == "EMITTING" else None,
                    recovered_j=record["delivered_energy_j"][0],
                    counted_j=counted,
                )
            )
    finally:
        daemon.stop()
    print(f"\ncrash campaign: {len(results)} kills (seed {SEED})")
    print(f"{'#':>3} {'stage':<9} {'hb age at stop s':>17} {'counted J':>10} {'recovered J':>12}")
    for k in results:
        age = "-" if k.heartbeat_age_at_stop_s is None else f"{k.heartbeat_age_at_stop_s:.3f}"
        print(f"{k.n:>3} {k.stage:<9} {age:>17} {k.counted_j:>10.2f} {k.recovered_j:>12.2f}")
    outlived = [k for k in results if k.heartbeat_age_at_stop_s is not None and k.heartbeat_age_at_stop_s > WATCHDOG_BOUND_S]
    lost = [k for k in results if k.recovered_j is not None and k.recovered_j < k.counted_j - ONE_CYCLE_J]
    print(f"emission outliving the watchdog bound ({WATCHDOG_BOUND_S:.3f} s): {len(outlived)}; energy lost beyond one cycle: {len(lost)}")
    assert len(results) == KILLS
    assert {k.stage for k in results} == set(STAGES)
    assert not outlived
    assert not lost

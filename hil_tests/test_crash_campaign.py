"""The crash campaign: laserd killed with SIGKILL at random points of a treatment, again and again.

After each kill, from the simulator's side: emission never outlives the LS-4 watchdog bound
(WATCHDOG_TIMEOUT + the 10 ms stop + one 10 ms update, measured from the last heartbeat the
device accepted). After each restart, from the daemon's side: the session is INTERRUPTED, its
energy is what the LS-4 really counted (nothing lost beyond one cycle), and nothing resumes.
"""

from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.launcher import fixed_plan, wait_until
from hil_env import ANY, Bench, Target
from hil_summary import Row

KILLS = 50
SEED = 20261125
POWER_W = 3.0
CYCLE_S = 0.1
ONE_CYCLE_J = POWER_W * CYCLE_S
# the LS-4 checks its watchdog every 10 ms and stops within 10 ms
WATCHDOG_CHECK_AND_STOP_S = 0.010 + 0.010
STAGES = ("LOADED", "ARMED", "EMITTING", "PAUSED")


@dataclass
class Kill:
    n: int
    stage: str
    energy_before_j: float
    heartbeat_age_at_stop_s: float | None
    kill_to_stop_s: float | None  # device seconds from the SIGKILL to the light out
    recovered_j: float | None
    counted_j: float


@pytest.mark.parametrize("target", [ANY], indirect=True)  # the bus wiring does not matter here
def test_fifty_kill_9_points(hil_row: Row, bench: Bench, target: Target, tmp_path: Path) -> None:
    hil_row.set(scenario=f"crash campaign: {KILLS} x kill -9")
    watchdog_bound_s = target.env.watchdog_timeout_ms / 1000.0 + WATCHDOG_CHECK_AND_STOP_S
    rng = random.Random(SEED)
    config = target.write_config(tmp_path)
    results: list[Kill] = []
    daemon = target.daemon(tmp_path, config=config).start()
    try:
        for n in range(KILLS):
            stage = rng.choice(STAGES)
            if daemon.status()["trip"] is not None or daemon.status()["ls4"]["device_state"] == "FAULT":
                wait_until(lambda: daemon.ctl("ack")["ok"], what="ack after the previous kill")
            bench("footswitch", "release")
            session_id = daemon.ok("load", plan_text=fixed_plan(power_w=POWER_W, budget_j=5000.0))["session_id"]
            before = bench.truth()["ls4"]["counter_energy_j"][0]
            if stage != "LOADED":
                daemon.ok("arm")
            if stage in ("EMITTING", "PAUSED"):
                bench("footswitch", "press")
                wait_until(lambda: daemon.session_state() == "EMITTING", what="EMITTING")
                energy_target = before + rng.uniform(0.5, 6.0)
                wait_until(lambda: bench.truth()["ls4"]["counter_energy_j"][0] >= energy_target, what="some energy")
            if stage == "PAUSED":
                bench("footswitch", "release")
                wait_until(lambda: daemon.session_state() == "PAUSED", what="PAUSED")
            killed_at = bench.device_time_s(time.monotonic())
            daemon.signal(signal.SIGKILL)
            daemon.wait()
            if stage != "LOADED":  # host control was held: the LS-4 watchdog must act
                wait_until(lambda: bench.truth()["ls4"]["fault"] == "WATCHDOG_EXPIRED", what="LS-4 watchdog")
            truth = bench.truth()
            assert truth["ls4"]["true_output_mw"] == [0.0] * 4
            counted = truth["ls4"]["counter_energy_j"][0] - before
            daemon = target.daemon(tmp_path, config=config).start()
            record = daemon.ok("session", id=session_id)
            assert record["state"] == "INTERRUPTED", f"kill {n} in {stage}: session {record['state']}"
            assert daemon.status()["session_state"] == "IDLE"  # nothing resumes by itself
            assert bench.truth()["ls4"]["true_output_mw"] == [0.0] * 4
            results.append(
                Kill(
                    n=n,
                    stage=stage,
                    energy_before_j=before,
                    heartbeat_age_at_stop_s=truth["heartbeat_age_at_stop_s"] if stage == "EMITTING" else None,
                    kill_to_stop_s=truth["emission_stopped_s"] - killed_at if stage == "EMITTING" else None,
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
    outlived = [k for k in results if k.heartbeat_age_at_stop_s is not None and k.heartbeat_age_at_stop_s > watchdog_bound_s]
    lost = [k for k in results if k.recovered_j is not None and k.recovered_j < k.counted_j - ONE_CYCLE_J]
    print(f"emission outliving the watchdog bound ({watchdog_bound_s:.3f} s): {len(outlived)}; energy lost beyond one cycle: {len(lost)}")
    to_stop = [k.kill_to_stop_s for k in results if k.kill_to_stop_s is not None]
    hil_row.set(
        end_state="INTERRUPTED",
        time_to_safe_s=max(to_stop, default=None),
        energy_error_j=max((abs(k.counted_j - k.recovered_j) for k in results if k.recovered_j is not None), default=None),
        metrics={"kills": len(results), "outlived_watchdog": len(outlived), "lost_beyond_one_cycle": len(lost), "kill_to_stop_s": to_stop},
    )
    assert len(results) == KILLS
    assert {k.stage for k in results} == set(STAGES)
    assert not outlived
    assert not lost

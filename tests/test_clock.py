"""Device time: scaled, frozen and stepped."""

from __future__ import annotations

import pytest

from sim.clock import SimClock


class FakeWall:
    """Wall time is the one thing a test cannot own; this stands in for time.monotonic."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_device_time_runs_k_times_faster() -> None:
    wall = FakeWall()
    clock = SimClock(time_scale=60.0, wall=wall)
    wall.now += 2.0
    assert clock.now_s() == pytest.approx(120.0)


def test_freeze_step_run() -> None:
    wall = FakeWall()
    clock = SimClock(time_scale=10.0, wall=wall)
    wall.now += 1.0
    clock.freeze()
    wall.now += 5.0
    assert clock.now_s() == pytest.approx(10.0)
    clock.step(0.25)
    assert clock.now_s() == pytest.approx(10.25)
    clock.run()
    wall.now += 1.0
    assert clock.now_s() == pytest.approx(20.25)


@pytest.mark.parametrize("scale", [0.0, -1.0, 1e9])
def test_bad_time_scale_is_refused(scale: float) -> None:
    with pytest.raises(ValueError, match="time scale"):
        SimClock(time_scale=scale)


def test_step_needs_a_frozen_clock() -> None:
    with pytest.raises(RuntimeError, match="frozen"):
        SimClock().step(1.0)

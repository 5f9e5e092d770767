"""Device time: a monotonic clock that runs K times faster than wall time, and can be frozen and stepped.

Every timer in the simulator (watchdog, ramps, energy counters, UPTIME, sampling) reads this clock,
so a ten-minute treatment can run in seconds, and a test can freeze time and step it exactly.
"""

from __future__ import annotations

import time

MAX_TIME_SCALE = 10_000.0


class SimClock:
    def __init__(self, *, time_scale: float = 1.0, wall=time.monotonic) -> None:
        if not 0 < time_scale <= MAX_TIME_SCALE:
            raise ValueError(f"time scale must be in (0, {MAX_TIME_SCALE:g}], got {time_scale}")
        self._wall = wall
        self.time_scale = float(time_scale)
        self._base_device_s = 0.0
        self._base_wall_s = wall()
        self._frozen = False

    def now_s(self) -> float:
        """Device seconds since the simulator started."""
        if self._frozen:
            return self._base_device_s
        return self._base_device_s + (self._wall() - self._base_wall_s) * self.time_scale

    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> None:
        if not self._frozen:
            self._base_device_s = self.now_s()
            self._frozen = True

    def run(self) -> None:
        if self._frozen:
            self._base_wall_s = self._wall()
            self._frozen = False

    def step(self, seconds: float) -> None:
        """Move a frozen clock forward by `seconds` of device time."""
        if not self._frozen:
            raise RuntimeError("clock step needs a frozen clock (bench: clock freeze)")
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._base_device_s += seconds

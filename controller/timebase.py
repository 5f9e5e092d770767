"""The daemon's clock: monotonic, scaled by --time-scale K like the simulator's device time."""

from __future__ import annotations

import asyncio
import time

MAX_TIME_SCALE = 1000.0


class Timebase:
    def __init__(self, *, time_scale: float = 1.0) -> None:
        if not 0 < time_scale <= MAX_TIME_SCALE:
            raise ValueError(f"--time-scale must be in (0, {MAX_TIME_SCALE:g}], got {time_scale:g}")
        self.time_scale = time_scale
        self._start = time.monotonic()

    def now_s(self) -> float:
        """Seconds of (scaled) time since the daemon started."""
        return (time.monotonic() - self._start) * self.time_scale

    def wall_s(self, scaled_s: float) -> float:
        return scaled_s / self.time_scale

    async def sleep_until(self, scaled_deadline_s: float) -> None:
        delay = (scaled_deadline_s - self.now_s()) / self.time_scale
        if delay > 0:
            await asyncio.sleep(delay)

"""Statistics of the control cycle: how long each cycle took, how late each started, how many missed."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

WINDOW_CYCLES = 2000  # the last ~3 minutes at 10 Hz: recent enough to show a problem, long enough for a p99


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass
class CycleStats:
    period_s: float  # scaled (device) time
    count: int = 0
    deadline_misses: int = 0
    last_cycle_end_s: float | None = None  # scaled time of the last completed cycle
    cycle_wall_ms: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW_CYCLES))
    jitter_ms: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW_CYCLES))

    def record(self, *, started_late_ms: float, took_wall_ms: float, ended_s: float, missed: bool) -> None:
        self.count += 1
        self.jitter_ms.append(started_late_ms)
        self.cycle_wall_ms.append(took_wall_ms)
        self.last_cycle_end_s = ended_s
        if missed:
            self.deadline_misses += 1

    def as_dict(self) -> dict[str, Any]:
        cycles, jitter = list(self.cycle_wall_ms), list(self.jitter_ms)
        return {
            "period_ms": round(self.period_s * 1000.0, 3),
            "count": self.count,
            "deadline_misses": self.deadline_misses,
            "cycle_ms_p50": round(percentile(cycles, 0.50), 3),
            "cycle_ms_p99": round(percentile(cycles, 0.99), 3),
            "cycle_ms_max": round(max(cycles, default=0.0), 3),
            "jitter_ms_p50": round(percentile(jitter, 0.50), 3),
            "jitter_ms_p99": round(percentile(jitter, 0.99), 3),
            "jitter_ms_max": round(max(jitter, default=0.0), 3),
        }

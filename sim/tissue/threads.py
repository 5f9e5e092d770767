"""How many threads the tissue kernel uses now: all it may, or one when that runs faster.

Two threads beat one on an idle machine. When other programs keep the cores busy, a thread that
shares its core runs in bursts, and a call ends only when that thread's last tile does, so one
thread alone can be faster. The model times every sweep (wall seconds per voxel update). Now and
then (every PROBE_EVERY sweeps; 4 times less often once the other count is clearly slower) one
sweep runs with the count not in use, and its timing is compared with the sweeps just before it
(the load on the machine drifts, so only neighbours are compared). The chooser switches when the
median of the last few such ratios says the other count is faster by a clear margin.

With two threads the kernel splits the rows at `split` (thread 0 below, thread 1 above; one tile
each, no halos), and the chooser moves the split after every two-thread sweep toward equal
times for the two threads (their wall times come back from the kernel): a thread sharing its
core with another program gets fewer rows instead of keeping the other waiting.
"""

from __future__ import annotations

import os
from collections import deque
from statistics import median

import numpy as np

# One sweep in PROBE_EVERY runs with the count not in use; one in 4 * PROBE_EVERY once KEEP
# probes all found it slower by more than CLEAR_RATIO (a probe costs time then).
PROBE_EVERY = 16
CLEAR_RATIO = 1.3
# Probe ratios kept (their median decides) and sweeps before a probe it is compared with.
KEEP = 5
BEFORE = 3
# Switch when the other count's time is below this fraction of the current one's.
SWITCH_BELOW = 0.92
# Sweeps smaller than this are not timed (launch overhead, not throughput).
MIN_UPDATES = 200_000
# The two-thread split: how far it moves toward the balance the last sweep measured, and its range.
BALANCE_GAIN = 0.5
SPLIT_RANGE = (0.15, 0.85)


class ThreadChooser:
    """Picks between 1 and `most` threads from the measured speed of recent sweeps."""

    def __init__(self, most: int) -> None:
        self.most = max(1, most)
        self.current = self.most
        self._recent: deque[float] = deque(maxlen=BEFORE)  # timings with the current count
        self._ratios: deque[float] = deque(maxlen=KEEP)  # other count's time / current count's
        self._sweeps = 0
        self._next_probe = BEFORE + 1  # the first probe as soon as there is something to compare with
        self.sweeps_at: dict[int, int] = {}  # how many sweeps ran with each count
        self.split = 0.5  # the share of the rows thread 0 takes when two threads run
        try:
            cpus = sorted(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cpus = []
        # the CPUs the two threads run on with a split (the same thread keeps the same core)
        self.pin = tuple(cpus[:2]) if len(cpus) >= 2 else None
        self.thread_seconds = np.zeros(self.most)  # the kernel's per-thread wall times of the last sweep

    def split_for(self, threads: int) -> float:
        """The kernel's `split` argument: the balanced split for two threads, else 0 (tiles claimed)."""
        return self.split if threads == 2 else 0.0

    @property
    def other(self) -> int:
        return 1 if self.current == self.most else self.most

    def next(self) -> int:
        """The thread count for the next sweep."""
        self._sweeps += 1
        if self.most == 1 or self._sweeps < self._next_probe or len(self._recent) < BEFORE:
            return self.current
        clear = len(self._ratios) == KEEP and min(self._ratios) > CLEAR_RATIO
        self._next_probe = self._sweeps + (4 * PROBE_EVERY if clear else PROBE_EVERY)
        return self.other

    def record(self, threads: int, seconds: float, updates: int) -> None:
        """A sweep with `threads` threads did `updates` voxel updates in `seconds` (wall)."""
        self.sweeps_at[threads] = self.sweeps_at.get(threads, 0) + 1
        if threads == 2:
            self._balance(float(self.thread_seconds[0]), float(self.thread_seconds[1]))
        if self.most == 1 or updates < MIN_UPDATES or seconds <= 0.0:
            return
        per = seconds / updates
        if threads == self.current:
            self._recent.append(per)
            return
        if threads != self.other or len(self._recent) < BEFORE:
            return
        self._ratios.append(per / median(self._recent))
        if median(self._ratios) < SWITCH_BELOW:
            self.current = threads
            self._recent.clear()
            self._recent.append(per)
            self._ratios = deque((1.0 / r for r in self._ratios), maxlen=KEEP)

    def _balance(self, t0: float, t1: float) -> None:
        """Move the split toward the one at which both threads would have taken the same time."""
        if t0 <= 0.0 or t1 <= 0.0:
            return
        s = self.split
        fast0, fast1 = s / t0, (1.0 - s) / t1  # rows per second, as shares of the grid
        target = fast0 / (fast0 + fast1)
        lo, hi = SPLIT_RANGE
        self.split = min(hi, max(lo, s + BALANCE_GAIN * (target - s)))

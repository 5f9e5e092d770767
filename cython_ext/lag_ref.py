"""Reference twin of cython_ext/lag.pyx, kept for tests."""

from __future__ import annotations

import math
from collections.abc import MutableSequence, Sequence


def lag_step(state: MutableSequence[float], target: Sequence[float], dt_s: float, tau_s: float) -> None:
    alpha = 1.0 if tau_s <= 0.0 else 1.0 - math.exp(-dt_s / tau_s)
    for i in range(len(state)):
        state[i] += alpha * (target[i] - state[i])

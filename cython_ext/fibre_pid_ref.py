"""Reference twin of cython_ext/fibre_pid.pyx: the same algorithm, line by line, in plain Python."""

from __future__ import annotations

import math
from collections.abc import MutableSequence, Sequence

N_MAX = 8


class FibrePid:
    def __init__(self, n: int) -> None:
        if not 0 < n <= N_MAX:
            raise ValueError(f"1..{N_MAX} channels, got {n}")
        self.n = n
        self.kp = [0.0] * n
        self.ki = [0.0] * n
        self.kd = [0.0] * n
        self.tau_d = [1.0] * n
        self.kaw = [0.0] * n
        self.integral = [0.0] * n
        self.d_filtered = [0.0] * n
        self.last_meas = [0.0] * n
        self.last_out = [0.0] * n
        self.primed = [False] * n

    def set_gains(self, i: int, kp: float, ki: float, kd: float, tau_d: float, kaw: float) -> None:
        if not 0 <= i < self.n:
            raise IndexError(i)
        if kp < 0 or ki < 0 or kd < 0 or tau_d <= 0 or kaw < 0:
            raise ValueError("gains must be >= 0 and tau_d > 0")
        self.kp[i], self.ki[i], self.kd[i], self.tau_d[i], self.kaw[i] = kp, ki, kd, tau_d, kaw

    def reset_channel(self, i: int, output: float) -> None:
        if not 0 <= i < self.n:
            raise IndexError(i)
        self.integral[i] = output
        self.d_filtered[i] = 0.0
        self.last_meas[i] = 0.0
        self.last_out[i] = output
        self.primed[i] = False

    def state(self, i: int) -> tuple[float, float, float, float, bool]:
        return (self.integral[i], self.d_filtered[i], self.last_meas[i], self.last_out[i], self.primed[i])

    def step(
        self,
        dt_s: float,
        measured_c: Sequence[float],
        target_c: Sequence[float],
        max_out: Sequence[float],
        rate_per_s: Sequence[float],
        active: Sequence[int],
        out: MutableSequence[float],
    ) -> None:
        if min(len(measured_c), len(target_c), len(max_out), len(rate_per_s), len(active), len(out)) < self.n:
            raise ValueError(f"every array needs {self.n} entries")
        if not dt_s > 0.0:
            raise ValueError("dt_s must be > 0")
        for i in range(self.n):
            if not active[i]:
                out[i] = 0.0
                self.last_out[i] = 0.0
                self.integral[i] = 0.0
                self.primed[i] = False
                continue
            if not self.primed[i]:
                self.last_meas[i] = measured_c[i]
                self.d_filtered[i] = 0.0
                self.primed[i] = True
            e = target_c[i] - measured_c[i]
            p = self.kp[i] * e
            alpha = 1.0 - math.exp(-dt_s / self.tau_d[i])
            self.d_filtered[i] += alpha * ((measured_c[i] - self.last_meas[i]) / dt_s - self.d_filtered[i])
            d = -self.kd[i] * self.d_filtered[i]
            self.integral[i] += self.ki[i] * e * dt_s
            u = p + self.integral[i] + d
            u_lim = min(u, max_out[i])
            u_lim = max(u_lim, 0.0)
            step_max = rate_per_s[i] * dt_s
            u_lim = min(u_lim, self.last_out[i] + step_max)
            u_lim = max(u_lim, self.last_out[i] - step_max)
            self.integral[i] += self.kaw[i] * (u_lim - u) * dt_s
            self.integral[i] = min(self.integral[i], max_out[i])
            self.integral[i] = max(self.integral[i], 0.0)
            self.last_meas[i] = measured_c[i]
            self.last_out[i] = u_lim
            out[i] = u_lim

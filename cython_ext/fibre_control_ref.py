"""Reference twin of cython_ext/fibre_control.pyx: the same algorithms, line by line, in plain Python.

Kept for the tests (compiled and reference agree to 1e-9) and as the readable statement of what
the compiled kernel does; see the .pyx for the why of each step.
"""

from __future__ import annotations

import math
from collections.abc import MutableSequence, Sequence

CH_MAX = 8
LOOP_MAX = 16
PROBE_MAX = 16
OFF = 0
PASS = 1
LOOPS = 2
HOLD = 3
TRACK_SPAN_C = 200.0
BISECT_STEPS = 60


class FibreLoops:
    def __init__(self, n_channels: int, n_loops: int) -> None:
        if not 0 < n_channels <= CH_MAX:
            raise ValueError(f"1..{CH_MAX} channels, got {n_channels}")
        if not 0 <= n_loops <= LOOP_MAX:
            raise ValueError(f"0..{LOOP_MAX} loops, got {n_loops}")
        self.n_channels = n_channels
        self.n_loops = n_loops
        self.mode = [OFF] * n_channels
        self.max_out = [0.0] * n_channels
        self.rate_up = [math.inf] * n_channels
        self.rate_down = [math.inf] * n_channels
        self.request = [0.0] * n_channels
        self.last_out = [0.0] * n_channels
        self.ch = [-1] * n_loops
        self.probe = [0] * n_loops
        self.kp = [0.0] * n_loops
        self.ki = [0.0] * n_loops
        self.kd = [0.0] * n_loops
        self.tau_d = [1.0] * n_loops
        self.kaw = [0.0] * n_loops
        self.target = [0.0] * n_loops
        self.ref_rate = [math.inf] * n_loops
        self.ref_tau = [0.0] * n_loops
        self.ref = [0.0] * n_loops
        self.integral = [0.0] * n_loops
        self.d_filt = [0.0] * n_loops
        self.last_meas = [0.0] * n_loops
        self.u_raw = [0.0] * n_loops
        self.start_out = [0.0] * n_loops
        self.primed = [False] * n_loops

    def set_channel(self, i: int, max_out: float, rate_up: float, rate_down: float) -> None:
        if not 0 <= i < self.n_channels:
            raise IndexError(i)
        if not (max_out >= 0.0 and rate_up > 0.0 and rate_down > 0.0):
            raise ValueError("max_out must be >= 0 and the rates > 0")
        self.max_out[i], self.rate_up[i], self.rate_down[i] = float(max_out), float(rate_up), float(rate_down)

    def set_loop(self, k: int, channel: int, probe: int, kp: float, ki: float, kd: float, tau_d: float, kaw: float, ref_rate: float, ref_tau: float) -> None:
        if not 0 <= k < self.n_loops:
            raise IndexError(k)
        if not (-1 <= channel < self.n_channels and 0 <= probe < PROBE_MAX):
            raise IndexError((channel, probe))
        if not (kp >= 0 and ki >= 0 and kd >= 0 and tau_d > 0 and kaw >= 0 and ref_rate > 0 and ref_tau >= 0):
            raise ValueError("gains must be >= 0, tau_d and ref_rate > 0, ref_tau >= 0")
        self.ch[k], self.probe[k] = channel, probe
        self.ref_rate[k] = float(ref_rate)
        self.ref_tau[k] = float(ref_tau)
        self.kp[k], self.ki[k], self.kd[k], self.tau_d[k], self.kaw[k] = float(kp), float(ki), float(kd), float(tau_d), float(kaw)
        self.primed[k] = False
        self.start_out[k] = self.last_out[channel] if channel >= 0 else 0.0

    def set_target(self, k: int, target: float) -> None:
        if not 0 <= k < self.n_loops:
            raise IndexError(k)
        self.target[k] = float(target)

    def set_request(self, i: int, request: float) -> None:
        if not 0 <= i < self.n_channels:
            raise IndexError(i)
        self.request[i] = float(request)

    def set_mode(self, i: int, mode: int, output: float) -> None:
        if not 0 <= i < self.n_channels:
            raise IndexError(i)
        if mode not in (OFF, PASS, LOOPS, HOLD):
            raise ValueError(f"mode {mode}")
        self.mode[i] = mode
        self.last_out[i] = float(output) if mode != OFF else 0.0
        for k in range(self.n_loops):
            if self.ch[k] == i:
                self.primed[k] = False
                self.start_out[k] = self.last_out[i]

    def channel_state(self, i: int) -> tuple[int, float, float]:
        if not 0 <= i < self.n_channels:
            raise IndexError(i)
        return (self.mode[i], self.request[i], self.last_out[i])

    def loop_state(self, k: int) -> tuple[float, float, float, float, float, bool]:
        if not 0 <= k < self.n_loops:
            raise IndexError(k)
        return (self.integral[k], self.d_filt[k], self.last_meas[k], self.u_raw[k], self.ref[k], self.primed[k])

    def step(self, dt_s: float, measured: Sequence[float], applied: Sequence[float]) -> tuple[float, ...]:
        ms = list(measured)[:PROBE_MAX]
        ap = list(applied)
        if len(ap) < self.n_channels:
            raise ValueError(f"applied needs {self.n_channels} entries")
        for k in range(self.n_loops):
            if self.ch[k] >= 0 and self.probe[k] >= len(ms):
                raise ValueError(f"measured needs an entry for probe {self.probe[k]}")
        if not dt_s > 0.0:
            raise ValueError("dt_s must be > 0")
        meas = [float(v) for v in ms]
        appl = [float(v) for v in ap[: self.n_channels]]
        for k in range(self.n_loops):
            i = self.ch[k]
            if i < 0 or self.mode[i] != LOOPS:
                continue
            m = meas[self.probe[k]]
            primed_before = self.primed[k]
            if not self.primed[k]:
                self.last_meas[k] = m
                self.d_filt[k] = 0.0
                self.ref[k] = m
                self.integral[k] = self.start_out[k]
                self.primed[k] = True
            else:
                g = self.kaw[k] * dt_s
                if g > 1.0:
                    g = 1.0
                self.integral[k] += g * (appl[i] - self.u_raw[k])
            # the working setpoint approaches the target (first order, rate-limited: a reference
            # trajectory; the approach, not the loop gains, sets how fast a big step is taken, and
            # it slows down near the target, so the loop overshoots less)
            dr = self.target[k] - self.ref[k] if primed_before else 0.0  # the first step: exactly start_out
            if self.ref_tau[k] > dt_s:
                dr = dr * dt_s / self.ref_tau[k]
            dr_max = self.ref_rate[k] * dt_s
            if dr > dr_max:
                dr = dr_max
            if dr < -dr_max:
                dr = -dr_max
            self.ref[k] += dr
            e = self.ref[k] - m
            alpha = 1.0 - math.exp(-dt_s / self.tau_d[k])
            self.d_filt[k] += alpha * ((m - self.last_meas[k]) / dt_s - self.d_filt[k])
            self.integral[k] += self.ki[k] * e * dt_s
            lo = -(self.max_out[i] + self.kp[k] * TRACK_SPAN_C)
            if self.integral[k] > self.max_out[i]:
                self.integral[k] = self.max_out[i]
            if self.integral[k] < lo:
                self.integral[k] = lo
            self.u_raw[k] = self.kp[k] * e + self.integral[k] - self.kd[k] * self.d_filt[k]
            self.last_meas[k] = m
        for i in range(self.n_channels):
            md = self.mode[i]
            if md == OFF:
                u = 0.0
            elif md == HOLD:
                u = self.last_out[i]
            else:
                u = self.request[i]
                if md == LOOPS:
                    for k in range(self.n_loops):
                        if self.ch[k] == i and self.u_raw[k] < u:
                            u = self.u_raw[k]
                if u > self.max_out[i]:
                    u = self.max_out[i]
                if u < 0.0:
                    u = 0.0
                step_up = self.rate_up[i] * dt_s
                step_down = self.rate_down[i] * dt_s
                if u > self.last_out[i] + step_up:
                    u = self.last_out[i] + step_up
                if u < self.last_out[i] - step_down:
                    u = self.last_out[i] - step_down
            self.last_out[i] = u
        return tuple(self.last_out)


class ShapedMpc:
    def __init__(self, n_rows: int, n_vars: int, n_group: int) -> None:
        if n_rows < 1 or n_vars < 1 or n_group < 1 or n_vars % n_group != 0:
            raise ValueError("n_rows, n_vars >= 1 and n_vars a multiple of n_group")
        self.n_rows, self.n_vars, self.n_group = n_rows, n_vars, n_group
        self.a = [[0.0] * n_vars for _ in range(n_rows)]
        self.pred = [0.0] * n_rows
        self.resid = [0.0] * n_rows
        self.grad = [0.0] * n_vars
        self.xk = [0.0] * n_vars
        self.yk = [0.0] * n_vars
        self.xn = [0.0] * n_vars
        self.pv = [0.0] * n_vars
        self.pw = [0.0] * n_rows
        self.lipschitz = 0.0

    def set_matrix(self, a: Sequence[Sequence[float]]) -> None:
        rows = [list(map(float, row)) for row in a]
        if len(rows) != self.n_rows or any(len(row) != self.n_vars for row in rows):
            raise ValueError(f"A must be {self.n_rows} x {self.n_vars}")
        self.a = rows

    def predictions(self) -> list[float]:
        return list(self.pred)

    def solve(self, y_free, goal_lo, w_under, goal_hi, w_over, lo, hi, c, q, x_ref, group_max, iterations: int, x: MutableSequence[float]) -> float:  # noqa: ANN001
        nr, nv = self.n_rows, self.n_vars
        if min(len(y_free), len(goal_lo), len(w_under), len(goal_hi), len(w_over)) < nr:
            raise ValueError(f"row arrays need {nr} entries")
        if min(len(lo), len(hi), len(c), len(q), len(x_ref), len(x)) < nv:
            raise ValueError(f"variable arrays need {nv} entries")
        if len(group_max) < nv // self.n_group:
            raise ValueError(f"group_max needs {nv // self.n_group} entries")
        if iterations < 0:
            raise ValueError("iterations must be >= 0")
        self.lipschitz = self._lipschitz(w_under, w_over, q)
        step = 1.0 / self.lipschitz
        self._project(x, lo, hi, group_max)
        for v in range(nv):
            self.xk[v] = float(x[v])
            self.yk[v] = float(x[v])
        t = 1.0
        for _ in range(iterations):
            self._gradient(self.yk, y_free, goal_lo, w_under, goal_hi, w_over, c, q, x_ref)
            for v in range(nv):
                self.xn[v] = self.yk[v] - step * self.grad[v]
            self._project(self.xn, lo, hi, group_max)
            t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
            beta = (t - 1.0) / t_next
            for v in range(nv):
                self.yk[v] = self.xn[v] + beta * (self.xn[v] - self.xk[v])
                self.xk[v] = self.xn[v]
            t = t_next
        for v in range(nv):
            x[v] = self.xk[v]
        return self._gradient(self.xk, y_free, goal_lo, w_under, goal_hi, w_over, c, q, x_ref)

    def _lipschitz(self, w_under, w_over, q) -> float:  # noqa: ANN001
        nr, nv = self.n_rows, self.n_vars
        lam = 0.0
        qmax = 0.0
        for v in range(nv):
            self.pv[v] = 1.0
            if q[v] > qmax:
                qmax = float(q[v])
        for _ in range(30):
            for r in range(nr):
                s = 0.0
                row = self.a[r]
                for v in range(nv):
                    s = s + row[v] * self.pv[v]
                w = w_under[r] if w_under[r] > w_over[r] else w_over[r]
                self.pw[r] = w * s
            norm = 0.0
            for v in range(nv):
                s = 0.0
                for r in range(nr):
                    s = s + self.a[r][v] * self.pw[r]
                self.grad[v] = s
                norm = norm + s * s
            norm = math.sqrt(norm)
            if norm <= 0.0:
                lam = 0.0
                break
            lam = norm
            for v in range(nv):
                self.pv[v] = self.grad[v] / norm
        return 2.0 * lam * 1.05 + 2.0 * qmax + 1e-12

    def _project(self, x, lo, hi, group_max) -> None:  # noqa: ANN001
        ng, nb = self.n_group, self.n_vars // self.n_group
        for v in range(self.n_vars):
            if x[v] > hi[v]:
                x[v] = float(hi[v])
            if x[v] < lo[v]:
                x[v] = float(lo[v])
        for b in range(nb):
            s = 0.0
            for j in range(ng):
                s = s + x[b * ng + j]
            if s <= group_max[b]:
                continue
            lam_lo = 0.0
            span = 0.0
            for j in range(ng):
                v = b * ng + j
                if x[v] - lo[v] > span:
                    span = x[v] - lo[v]
            lam_hi = span
            for _ in range(BISECT_STEPS):
                lam = 0.5 * (lam_lo + lam_hi)
                s = 0.0
                for j in range(ng):
                    v = b * ng + j
                    t = x[v] - lam
                    if t < lo[v]:
                        t = float(lo[v])
                    s = s + t
                if s > group_max[b]:
                    lam_lo = lam
                else:
                    lam_hi = lam
            for j in range(ng):
                v = b * ng + j
                t = x[v] - lam_hi
                if t < lo[v]:
                    t = float(lo[v])
                x[v] = t

    def _gradient(self, at, y_free, goal_lo, w_under, goal_hi, w_over, c, q, x_ref) -> float:  # noqa: ANN001
        nr, nv = self.n_rows, self.n_vars
        cost = 0.0
        for r in range(nr):
            s = float(y_free[r])
            row = self.a[r]
            for v in range(nv):
                s = s + row[v] * at[v]
            self.pred[r] = s
            under = goal_lo[r] - s
            over = s - goal_hi[r]
            self.resid[r] = 0.0
            if under > 0.0 and w_under[r] > 0.0:
                self.resid[r] = -2.0 * w_under[r] * under
                cost = cost + w_under[r] * under * under
            if over > 0.0 and w_over[r] > 0.0:
                self.resid[r] = self.resid[r] + 2.0 * w_over[r] * over
                cost = cost + w_over[r] * over * over
        for v in range(nv):
            s = 0.0
            for r in range(nr):
                s = s + self.a[r][v] * self.resid[r]
            dx = at[v] - x_ref[v]
            self.grad[v] = s + c[v] + 2.0 * q[v] * dx
            cost = cost + c[v] * at[v] + q[v] * dx * dx
        return cost

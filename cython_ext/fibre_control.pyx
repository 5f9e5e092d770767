# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The per-cycle controller of every fibre, and the core of the SHAPED model-predictive planner.

`FibreLoops` holds, inside the compiled object, the state of every channel and of up to 16 PID
loops; one `step()` per control cycle computes the power of all channels:

* a channel is OFF (0), PASS (its request: FIXED_POWER, or a power the planner chose), LOOPS
  (the smallest of its request and of its loops' outputs: override control, e.g. a TEMPERATURE
  loop on the control probe with a tip-temperature limiter on the tip probe), or HOLD (the last
  output, frozen: a pause);
* each loop is a PID on one probe: derivative on the measurement, first-order filtered (no kick
  when the target steps); anti-windup by back-calculation toward the power the channel really
  applied last cycle (the LS-4's ACTIVE_SETPOINT: so a safety clamp, the LS-4's ramp, the output
  limits and the loop not being selected all bleed the integral the same way);
* output limited to 0..max, and rate-limited up and down separately;
* a reference trajectory: each loop's working setpoint starts at the measurement and approaches
  the target first order (`ref_tau` s), never faster than `ref_rate` degC/s, so a large step is
  taken at a chosen pace and slowed down near the target (2-DOF control);
* bumpless transfer: `set_mode(i, LOOPS, output)` starts the loops of channel i so that their
  first output is exactly `output` (the power being applied when the mode changes or a pause ends):
  the integral takes `output`, the working setpoint the measurement, the derivative filter 0.

`ShapedMpc` solves the SHAPED planner's problem: a box- and group-constrained least squares with
one-sided (hinge) penalties on predicted probe temperatures, by FISTA (accelerated projected
gradient) for a fixed number of iterations, warm-started.

Pure-Python twin: cython_ext/fibre_control_ref.py, the same algorithm line by line; tests hold
the two to 1e-9 on random inputs (hypothesis).
"""

from cpython.float cimport PyFloat_AsDouble, PyFloat_FromDouble
from cpython.ref cimport Py_INCREF
from cpython.sequence cimport PySequence_Fast, PySequence_Fast_GET_ITEM, PySequence_Fast_GET_SIZE
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.math cimport exp, sqrt, INFINITY

cdef enum:
    CH_MAX = 8
    LOOP_MAX = 16
    PROBE_MAX = 16
    # channel modes (the same numbers in the twin)
    M_OFF = 0
    M_PASS = 1
    M_LOOPS = 2
    M_HOLD = 3
    # Bisection steps of the group projection: 2^-60 of the span, far below 1e-9 W.
    BISECT_STEPS = 60

OFF = M_OFF
PASS = M_PASS
LOOPS = M_LOOPS
HOLD = M_HOLD
# The integral of a loop that is not selected tracks (applied - P) and may go negative; this
# bounds how far (in units of kp x degC), so a wild measurement cannot drive it to -inf.
cdef double TRACK_SPAN_C = 200.0


cdef class FibreLoops:
    cdef readonly int n_channels
    cdef readonly int n_loops
    # channels
    cdef int mode[CH_MAX]
    cdef double max_out[CH_MAX]
    cdef double rate_up[CH_MAX]
    cdef double rate_down[CH_MAX]
    cdef double request[CH_MAX]
    cdef double last_out[CH_MAX]
    # loops
    cdef int ch[LOOP_MAX]
    cdef int probe[LOOP_MAX]
    cdef double kp[LOOP_MAX]
    cdef double ki[LOOP_MAX]
    cdef double kd[LOOP_MAX]
    cdef double tau_d[LOOP_MAX]
    cdef double kaw[LOOP_MAX]
    cdef double target[LOOP_MAX]
    cdef double ref_rate[LOOP_MAX]  # degC/s the working setpoint moves toward the target (inf: at once)
    cdef double ref_tau[LOOP_MAX]  # s: the working setpoint's first-order approach (0: none)
    cdef double ref[LOOP_MAX]  # the working setpoint
    cdef double integral[LOOP_MAX]
    cdef double d_filt[LOOP_MAX]
    cdef double last_meas[LOOP_MAX]
    cdef double u_raw[LOOP_MAX]
    cdef double start_out[LOOP_MAX]
    cdef bint primed[LOOP_MAX]
    cdef double alpha_dt[LOOP_MAX]  # the dt the cached derivative-filter factor is for
    cdef double alpha[LOOP_MAX]
    # this cycle's inputs
    cdef double meas[PROBE_MAX]
    cdef double appl[CH_MAX]

    def __init__(self, int n_channels, int n_loops):
        if not 0 < n_channels <= CH_MAX:
            raise ValueError(f"1..{CH_MAX} channels, got {n_channels}")
        if not 0 <= n_loops <= LOOP_MAX:
            raise ValueError(f"0..{LOOP_MAX} loops, got {n_loops}")
        self.n_channels = n_channels
        self.n_loops = n_loops
        cdef int i
        for i in range(n_channels):
            self.mode[i] = M_OFF
            self.max_out[i] = 0.0
            self.rate_up[i] = INFINITY
            self.rate_down[i] = INFINITY
            self.request[i] = 0.0
            self.last_out[i] = 0.0
        for i in range(n_loops):
            self.ch[i] = -1
            self.probe[i] = 0
            self.kp[i] = 0.0
            self.ki[i] = 0.0
            self.kd[i] = 0.0
            self.tau_d[i] = 1.0
            self.kaw[i] = 0.0
            self.target[i] = 0.0
            self.ref_rate[i] = INFINITY
            self.ref_tau[i] = 0.0
            self.ref[i] = 0.0
            self.integral[i] = 0.0
            self.d_filt[i] = 0.0
            self.last_meas[i] = 0.0
            self.u_raw[i] = 0.0
            self.start_out[i] = 0.0
            self.primed[i] = False
            self.alpha_dt[i] = -1.0
            self.alpha[i] = 0.0

    def set_channel(self, int i, double max_out, double rate_up, double rate_down):
        """Output limit and rate limits (units/s; inf: none) of channel i."""
        if not 0 <= i < self.n_channels:
            raise IndexError(i)
        if not (max_out >= 0.0 and rate_up > 0.0 and rate_down > 0.0):
            raise ValueError("max_out must be >= 0 and the rates > 0")
        self.max_out[i] = max_out
        self.rate_up[i] = rate_up
        self.rate_down[i] = rate_down

    def set_loop(self, int k, int channel, int probe, double kp, double ki, double kd, double tau_d, double kaw, double ref_rate, double ref_tau):
        """Loop k acts on `channel` from the measurement at index `probe` (channel -1: unused);
        its working setpoint approaches the target with time constant `ref_tau` s (0: none), never
        faster than `ref_rate` degC/s (inf: no limit)."""
        if not 0 <= k < self.n_loops:
            raise IndexError(k)
        if not (-1 <= channel < self.n_channels and 0 <= probe < PROBE_MAX):
            raise IndexError((channel, probe))
        if not (kp >= 0 and ki >= 0 and kd >= 0 and tau_d > 0 and kaw >= 0 and ref_rate > 0 and ref_tau >= 0):
            raise ValueError("gains must be >= 0, tau_d and ref_rate > 0, ref_tau >= 0")
        self.ch[k] = channel
        self.ref_rate[k] = ref_rate
        self.ref_tau[k] = ref_tau
        self.probe[k] = probe
        self.kp[k] = kp
        self.ki[k] = ki
        self.kd[k] = kd
        self.tau_d[k] = tau_d
        self.kaw[k] = kaw
        self.primed[k] = False
        self.alpha_dt[k] = -1.0
        self.start_out[k] = self.last_out[channel] if channel >= 0 else 0.0

    def set_target(self, int k, double target):
        if not 0 <= k < self.n_loops:
            raise IndexError(k)
        self.target[k] = target

    def set_request(self, int i, double request):
        if not 0 <= i < self.n_channels:
            raise IndexError(i)
        self.request[i] = request

    def set_mode(self, int i, int mode, double output):
        """Bumpless transfer: channel i continues from `output` in its new mode."""
        if not 0 <= i < self.n_channels:
            raise IndexError(i)
        if mode not in (M_OFF, M_PASS, M_LOOPS, M_HOLD):
            raise ValueError(f"mode {mode}")
        cdef int k
        self.mode[i] = mode
        self.last_out[i] = output if mode != M_OFF else 0.0
        for k in range(self.n_loops):
            if self.ch[k] == i:
                self.primed[k] = False
                self.start_out[k] = self.last_out[i]

    def channel_state(self, int i):
        if not 0 <= i < self.n_channels:
            raise IndexError(i)
        return (int(self.mode[i]), self.request[i], self.last_out[i])

    def loop_state(self, int k):
        if not 0 <= k < self.n_loops:
            raise IndexError(k)
        return (self.integral[k], self.d_filt[k], self.last_meas[k], self.u_raw[k], self.ref[k], bool(self.primed[k]))

    def step(self, double dt_s, measured, applied):
        """One control cycle: `measured` the probe temperatures by index (a list or tuple of floats),
        `applied` what each channel really had last cycle; returns the power to propose for every
        channel (a tuple, the same unit as max_out). Sequences, not arrays: the readings arrive as
        tuples, and a sequence costs a fraction of a buffer acquisition per call."""
        cdef object ms = PySequence_Fast(measured, "measured must be a sequence of floats")
        cdef object ap = PySequence_Fast(applied, "applied must be a sequence of floats")
        cdef Py_ssize_t n_meas = PySequence_Fast_GET_SIZE(ms), k
        if PySequence_Fast_GET_SIZE(ap) < self.n_channels:
            raise ValueError(f"applied needs {self.n_channels} entries")
        if n_meas > PROBE_MAX:
            n_meas = PROBE_MAX
        for k in range(self.n_loops):
            if self.ch[k] >= 0 and self.probe[k] >= n_meas:
                raise ValueError(f"measured needs an entry for probe {self.probe[k]}")
        if not dt_s > 0.0:
            raise ValueError("dt_s must be > 0")
        for k in range(n_meas):
            self.meas[k] = PyFloat_AsDouble(<object>PySequence_Fast_GET_ITEM(ms, k))
        for k in range(self.n_channels):
            self.appl[k] = PyFloat_AsDouble(<object>PySequence_Fast_GET_ITEM(ap, k))
        self._step(dt_s)
        cdef tuple result = PyTuple_New(self.n_channels)
        cdef object item
        for k in range(self.n_channels):
            item = PyFloat_FromDouble(self.last_out[k])
            Py_INCREF(item)  # PyTuple_SET_ITEM steals a reference
            PyTuple_SET_ITEM(result, k, item)
        return result

    cdef void _step(self, double dt_s) noexcept nogil:
        cdef int k, i, md
        cdef double m, e, g, lo, u, step_up, step_down, dr, dr_max
        cdef bint primed_before
        for k in range(self.n_loops):
            i = self.ch[k]
            if i < 0 or self.mode[i] != M_LOOPS:
                continue  # a loop of a channel not in LOOPS is frozen, not wound up
            m = self.meas[self.probe[k]]
            primed_before = self.primed[k]
            if not self.primed[k]:
                # bumpless: this step's output continues from start_out (no P or D jump)
                self.last_meas[k] = m
                self.d_filt[k] = 0.0
                self.ref[k] = m
                self.integral[k] = self.start_out[k]
                self.primed[k] = True
            else:
                # back-calculation toward what the channel really applied (clamps, selection, safety)
                g = self.kaw[k] * dt_s
                if g > 1.0:
                    g = 1.0
                self.integral[k] += g * (self.appl[i] - self.u_raw[k])
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
            if dt_s != self.alpha_dt[k]:  # exp() only when dt or tau_d changed (the same value as recomputing)
                self.alpha[k] = 1.0 - exp(-dt_s / self.tau_d[k])
                self.alpha_dt[k] = dt_s
            self.d_filt[k] += self.alpha[k] * ((m - self.last_meas[k]) / dt_s - self.d_filt[k])
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
            if md == M_OFF:
                u = 0.0
            elif md == M_HOLD:
                u = self.last_out[i]
            else:
                u = self.request[i]
                if md == M_LOOPS:
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


cdef class ShapedMpc:
    """min over x of  sum_r w_under[r] max(0, goal_lo[r] - y[r])^2 + w_over[r] max(0, y[r] - goal_hi[r])^2
                      + sum_v c[v] x[v] + q[v] (x[v] - x_ref[v])^2,   y = y_free + A x,
    subject to lo <= x <= hi and, for every block b, sum_j x[b * n_group + j] <= group_max[b]."""

    cdef readonly int n_rows
    cdef readonly int n_vars
    cdef readonly int n_group
    cdef double[:, ::1] a
    cdef double[::1] pred
    cdef double[::1] resid
    cdef double[::1] grad
    cdef double[::1] xk
    cdef double[::1] yk
    cdef double[::1] xn
    cdef double[::1] pv
    cdef double[::1] pw
    cdef readonly double lipschitz

    def __init__(self, int n_rows, int n_vars, int n_group):
        if n_rows < 1 or n_vars < 1 or n_group < 1 or n_vars % n_group != 0:
            raise ValueError("n_rows, n_vars >= 1 and n_vars a multiple of n_group")
        import numpy as np
        self.n_rows = n_rows
        self.n_vars = n_vars
        self.n_group = n_group
        self.a = np.zeros((n_rows, n_vars))
        self.pred = np.zeros(n_rows)
        self.resid = np.zeros(n_rows)
        self.grad = np.zeros(n_vars)
        self.xk = np.zeros(n_vars)
        self.yk = np.zeros(n_vars)
        self.xn = np.zeros(n_vars)
        self.pv = np.zeros(n_vars)
        self.pw = np.zeros(n_rows)
        self.lipschitz = 0.0

    def set_matrix(self, const double[:, ::1] a):
        if a.shape[0] != self.n_rows or a.shape[1] != self.n_vars:
            raise ValueError(f"A must be {self.n_rows} x {self.n_vars}")
        self.a[:, :] = a

    def predictions(self):
        return [self.pred[r] for r in range(self.n_rows)]

    def solve(
        self,
        const double[::1] y_free,
        const double[::1] goal_lo,
        const double[::1] w_under,
        const double[::1] goal_hi,
        const double[::1] w_over,
        const double[::1] lo,
        const double[::1] hi,
        const double[::1] c,
        const double[::1] q,
        const double[::1] x_ref,
        const double[::1] group_max,
        int iterations,
        double[::1] x,
    ):
        """FISTA from the warm start in x; x holds the solution. Returns the final cost."""
        cdef int nr = self.n_rows, nv = self.n_vars
        if min(y_free.shape[0], goal_lo.shape[0], w_under.shape[0], goal_hi.shape[0], w_over.shape[0]) < nr:
            raise ValueError(f"row arrays need {nr} entries")
        if min(lo.shape[0], hi.shape[0], c.shape[0], q.shape[0], x_ref.shape[0], x.shape[0]) < nv:
            raise ValueError(f"variable arrays need {nv} entries")
        if group_max.shape[0] < nv // self.n_group:
            raise ValueError(f"group_max needs {nv // self.n_group} entries")
        if iterations < 0:
            raise ValueError("iterations must be >= 0")
        cdef double cost
        with nogil:
            cost = self._solve(y_free, goal_lo, w_under, goal_hi, w_over, lo, hi, c, q, x_ref, group_max, iterations, x)
        return cost

    cdef double _lipschitz(self, const double[::1] w_under, const double[::1] w_over, const double[::1] q) noexcept nogil:
        """2 x the largest eigenvalue of A' W A (power iteration from ones) + 2 max q: the gradient's
        Lipschitz constant with every hinge active, so a step of 1/L never diverges."""
        cdef int nr = self.n_rows, nv = self.n_vars, r, v, it
        cdef double s, norm, lam = 0.0, qmax = 0.0, w
        for v in range(nv):
            self.pv[v] = 1.0
            if q[v] > qmax:
                qmax = q[v]
        for it in range(30):
            for r in range(nr):
                s = 0.0
                for v in range(nv):
                    s = s + self.a[r, v] * self.pv[v]
                w = w_under[r] if w_under[r] > w_over[r] else w_over[r]
                self.pw[r] = w * s
            norm = 0.0
            for v in range(nv):
                s = 0.0
                for r in range(nr):
                    s = s + self.a[r, v] * self.pw[r]
                self.grad[v] = s
                norm = norm + s * s
            norm = sqrt(norm)
            if norm <= 0.0:
                lam = 0.0
                break
            lam = norm
            for v in range(nv):
                self.pv[v] = self.grad[v] / norm
        return 2.0 * lam * 1.05 + 2.0 * qmax + 1e-12

    cdef void _project(self, double[::1] x, const double[::1] lo, const double[::1] hi, const double[::1] group_max) noexcept nogil:
        cdef int ng = self.n_group, nb = self.n_vars // self.n_group, b, j, v, it
        cdef double s, lam_lo, lam_hi, lam, t, span
        for v in range(self.n_vars):
            if x[v] > hi[v]:
                x[v] = hi[v]
            if x[v] < lo[v]:
                x[v] = lo[v]
        for b in range(nb):
            s = 0.0
            for j in range(ng):
                s = s + x[b * ng + j]
            if s <= group_max[b]:
                continue
            # the largest shift lam with sum clip(x - lam, lo, hi) <= group_max, by bisection
            lam_lo = 0.0
            span = 0.0
            for j in range(ng):
                v = b * ng + j
                if x[v] - lo[v] > span:
                    span = x[v] - lo[v]
            lam_hi = span
            for it in range(BISECT_STEPS):
                lam = 0.5 * (lam_lo + lam_hi)
                s = 0.0
                for j in range(ng):
                    v = b * ng + j
                    t = x[v] - lam
                    if t < lo[v]:
                        t = lo[v]
                    s = s + t
                if s > group_max[b]:
                    lam_lo = lam
                else:
                    lam_hi = lam
            for j in range(ng):
                v = b * ng + j
                t = x[v] - lam_hi
                if t < lo[v]:
                    t = lo[v]
                x[v] = t

    cdef double _gradient(
        self, double[::1] at, const double[::1] y_free, const double[::1] goal_lo, const double[::1] w_under,
        const double[::1] goal_hi, const double[::1] w_over, const double[::1] c, const double[::1] q, const double[::1] x_ref,
    ) noexcept nogil:
        """grad <- the gradient at `at`; pred <- the predictions there; returns the cost there."""
        cdef int nr = self.n_rows, nv = self.n_vars, r, v
        cdef double s, under, over, cost = 0.0, dx
        for r in range(nr):
            s = y_free[r]
            for v in range(nv):
                s = s + self.a[r, v] * at[v]
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
                s = s + self.a[r, v] * self.resid[r]
            dx = at[v] - x_ref[v]
            self.grad[v] = s + c[v] + 2.0 * q[v] * dx
            cost = cost + c[v] * at[v] + q[v] * dx * dx
        return cost

    cdef double _solve(
        self, const double[::1] y_free, const double[::1] goal_lo, const double[::1] w_under, const double[::1] goal_hi,
        const double[::1] w_over, const double[::1] lo, const double[::1] hi, const double[::1] c, const double[::1] q,
        const double[::1] x_ref, const double[::1] group_max, int iterations, double[::1] x,
    ) noexcept nogil:
        cdef int nv = self.n_vars, v, it
        cdef double t = 1.0, t_next, beta, step
        self.lipschitz = self._lipschitz(w_under, w_over, q)
        step = 1.0 / self.lipschitz
        self._project(x, lo, hi, group_max)
        for v in range(nv):
            self.xk[v] = x[v]
            self.yk[v] = x[v]
        for it in range(iterations):
            self._gradient(self.yk, y_free, goal_lo, w_under, goal_hi, w_over, c, q, x_ref)
            for v in range(nv):
                self.xn[v] = self.yk[v] - step * self.grad[v]
            self._project(self.xn, lo, hi, group_max)
            t_next = 0.5 * (1.0 + sqrt(1.0 + 4.0 * t * t))
            beta = (t - 1.0) / t_next
            for v in range(nv):
                self.yk[v] = self.xn[v] + beta * (self.xn[v] - self.xk[v])
                self.xk[v] = self.xn[v]
            t = t_next
        for v in range(nv):
            x[v] = self.xk[v]
        return self._gradient(self.xk, y_free, goal_lo, w_under, goal_hi, w_over, c, q, x_ref)

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Temperature control of every fibre in one call: PID with derivative on the filtered
measurement, anti-windup by back-calculation, an output rate limit, and bumpless transfer.

The state lives in the compiled object. Pure-Python twin: cython_ext/fibre_pid_ref.py (the
same algorithm line by line); tests hold the two to 1e-9 on random inputs.
"""

from libc.math cimport exp

cdef enum:
    N_MAX = 8


cdef class FibrePid:
    cdef public int n
    cdef double kp[N_MAX]
    cdef double ki[N_MAX]
    cdef double kd[N_MAX]
    cdef double tau_d[N_MAX]      # derivative filter time constant, s
    cdef double kaw[N_MAX]        # anti-windup back-calculation gain, 1/s
    cdef double integral[N_MAX]   # the integral term, in output units (mW)
    cdef double d_filtered[N_MAX] # filtered derivative of the measurement, degC/s
    cdef double last_meas[N_MAX]
    cdef double last_out[N_MAX]
    cdef bint primed[N_MAX]       # a measurement has been seen since the last reset

    def __init__(self, int n):
        if not 0 < n <= N_MAX:
            raise ValueError(f"1..{N_MAX} channels, got {n}")
        self.n = n
        for i in range(n):
            self.kp[i] = 0.0
            self.ki[i] = 0.0
            self.kd[i] = 0.0
            self.tau_d[i] = 1.0
            self.kaw[i] = 0.0
            self.reset_channel(i, 0.0)

    def set_gains(self, int i, double kp, double ki, double kd, double tau_d, double kaw):
        if not 0 <= i < self.n:
            raise IndexError(i)
        if kp < 0 or ki < 0 or kd < 0 or tau_d <= 0 or kaw < 0:
            raise ValueError("gains must be >= 0 and tau_d > 0")
        self.kp[i] = kp
        self.ki[i] = ki
        self.kd[i] = kd
        self.tau_d[i] = tau_d
        self.kaw[i] = kaw

    def reset_channel(self, int i, double output):
        """Bumpless start: the next step continues from `output` (e.g. the power being applied
        now, after a pause or when the mode changes), not from zero or from an old integral."""
        if not 0 <= i < self.n:
            raise IndexError(i)
        self.integral[i] = output
        self.d_filtered[i] = 0.0
        self.last_meas[i] = 0.0
        self.last_out[i] = output
        self.primed[i] = False

    def state(self, int i):
        return (self.integral[i], self.d_filtered[i], self.last_meas[i], self.last_out[i], bool(self.primed[i]))

    def step(
        self,
        double dt_s,
        const double[::1] measured_c,
        const double[::1] target_c,
        const double[::1] max_out,
        const double[::1] rate_per_s,
        const unsigned char[::1] active,
        double[::1] out,
    ):
        """One control cycle for every channel: `out[i]` is the power to propose (same unit as max_out)."""
        if min(measured_c.shape[0], target_c.shape[0], max_out.shape[0], rate_per_s.shape[0], active.shape[0], out.shape[0]) < self.n:
            raise ValueError(f"every array needs {self.n} entries")
        if not dt_s > 0.0:
            raise ValueError("dt_s must be > 0")
        with nogil:
            self._step(dt_s, measured_c, target_c, max_out, rate_per_s, active, out)

    cdef void _step(
        self,
        double dt_s,
        const double[::1] measured_c,
        const double[::1] target_c,
        const double[::1] max_out,
        const double[::1] rate_per_s,
        const unsigned char[::1] active,
        double[::1] out,
    ) noexcept nogil:
        cdef int i
        cdef double e, p, d, alpha, u, u_lim, step_max
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
            # derivative on the measurement (no kick when the target steps), first-order filtered
            alpha = 1.0 - exp(-dt_s / self.tau_d[i])
            self.d_filtered[i] += alpha * ((measured_c[i] - self.last_meas[i]) / dt_s - self.d_filtered[i])
            d = -self.kd[i] * self.d_filtered[i]
            self.integral[i] += self.ki[i] * e * dt_s
            u = p + self.integral[i] + d
            u_lim = u
            if u_lim > max_out[i]:
                u_lim = max_out[i]
            if u_lim < 0.0:
                u_lim = 0.0
            step_max = rate_per_s[i] * dt_s
            if u_lim > self.last_out[i] + step_max:
                u_lim = self.last_out[i] + step_max
            if u_lim < self.last_out[i] - step_max:
                u_lim = self.last_out[i] - step_max
            # back-calculation: bleed the integral toward what the output could actually do
            self.integral[i] += self.kaw[i] * (u_lim - u) * dt_s
            if self.integral[i] > max_out[i]:
                self.integral[i] = max_out[i]
            if self.integral[i] < 0.0:
                self.integral[i] = 0.0
            self.last_meas[i] = measured_c[i]
            self.last_out[i] = u_lim
            out[i] = u_lim

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""First-order lag of many channels in one call: the FT-8 probes' 0.2 s response.

Pure-Python twin: cython_ext/lag_ref.py; tests hold the two to 1e-12.
"""

from libc.math cimport exp


cpdef void lag_step(double[::1] state, const double[::1] target, double dt_s, double tau_s) noexcept nogil:
    """state += (1 - exp(-dt/tau)) * (target - state), the exact step for a constant target."""
    cdef Py_ssize_t i, n = state.shape[0]
    cdef double alpha = 1.0 if tau_s <= 0.0 else 1.0 - exp(-dt_s / tau_s)
    for i in range(n):
        state[i] += alpha * (target[i] - state[i])

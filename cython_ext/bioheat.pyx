# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# distutils: extra_compile_args = -fopenmp
# distutils: extra_link_args = -fopenmp
"""Fused Pennes bioheat step on a regular 3-D grid: conduction, perfusion, light, vessels, damage.

One call advances the temperature by `steps` explicit (FTCS) steps of dt_s in a single sweep
over the grid (temporal blocking: plane i of step l is computed as soon as planes i-1..i+1 of
step l-1 exist, the steps in between live in a 3-plane ring per step), so the big arrays are
read and written once per call instead of once per step. Rows of each plane are split between
OpenMP threads with a barrier per plane. Arrhenius Omega, CEM43 and the peak temperature are
integrated once per call with the end-of-call temperature over steps * dt_s, only where the
temperature exceeds a threshold (the exp() calls are the expensive part).

Pure numpy twin: cython_ext/bioheat_ref.py; the tests hold the two to 1e-9 relative.
Layout: temperatures are padded by one ghost layer (shape nx+2, ny+2, nz+2), the ghosts hold
body_c (Dirichlet boundary); every other field has the interior shape (nx, ny, nz).
"""

import numpy as np

from cython.parallel cimport parallel, threadid
from libc.math cimport exp
cimport openmp

cdef extern from *:
    """
    #include <stddef.h>
    /* An orphaned barrier binds to the enclosing parallel region (Cython's prange has none). */
    static inline void lh_barrier(void) {
    #ifdef _OPENMP
    #pragma omp barrier
    #endif
    }
    /* One row of one step: the stencil, light and perfusion, vectorised (omp simd). Returns the
       perfusion loss of the row in K (sum of dt*w*(T-body)); *rowmax gets the row's new maximum. */
    static inline double lh_row(const double* restrict c, const double* restrict im, const double* restrict ip,
                                const double* restrict jm, const double* restrict jp, const double* restrict heat,
                                const double* restrict perf, double* restrict out, ptrdiff_t n,
                                double a, double c6, double dt, double body, double* restrict rowmax) {
        double loss = 0.0, mx = -1.0e300;
        #pragma omp simd reduction(+:loss) reduction(max:mx)
        for (ptrdiff_t k = 0; k < n; k++) {
            double q = dt * perf[k] * (c[k] - body);
            double v = c6 * c[k] + a * (im[k] + ip[k] + jm[k] + jp[k] + c[k - 1] + c[k + 1]) + dt * heat[k] - q;
            out[k] = v;
            loss += q;
            mx = v > mx ? v : mx;
        }
        *rowmax = mx;
        return loss;
    }
    """
    void lh_barrier() noexcept nogil
    double lh_row(const double* c, const double* im, const double* ip, const double* jm, const double* jp,
                  const double* heat, const double* perf, double* out, Py_ssize_t n,
                  double a, double c6, double dt, double body, double* rowmax) noexcept nogil

cdef double LN2 = 0.6931471805599453
cdef double LN4 = 1.3862943611198906
cdef double KELVIN = 273.15
cdef double CEM_CAP_C = 300.0  # CEM43 means nothing this hot; the cap keeps R**(43-T) finite
N_TOTALS = 4


cdef inline double* _plane(double* t_in, double* t_out, double* ring, Py_ssize_t level, Py_ssize_t steps,
                           Py_ssize_t pi, Py_ssize_t last, Py_ssize_t plane) noexcept nogil:
    """Padded plane pi of step `level`: the input, the output, or a ring slot in between.

    The ghost planes (pi = 0 and pi = last) never change, so every level reads them from t_in.
    """
    if level == 0 or pi == 0 or pi == last:
        return t_in + pi * plane
    if level == steps:
        return t_out + pi * plane
    return ring + ((level - 1) * 3 + pi % 3) * plane


cdef inline double _edge_sum(const double* c, Py_ssize_t n, double body) noexcept nogil:
    cdef Py_ssize_t k
    cdef double s = 0.0
    for k in range(n):
        s += c[k] - body
    return s


cdef _check_shape(str name, Py_ssize_t* shape, Py_ssize_t a, Py_ssize_t b, Py_ssize_t c, int offset=0):
    if shape[offset] != a or shape[offset + 1] != b or shape[offset + 2] != c:
        raise ValueError(f"{name} must have the shape {(a, b, c)}, got {(shape[offset], shape[offset + 1], shape[offset + 2])}")


def sweep(double[:, :, ::1] t_in, double[:, :, ::1] t_out, double[:, :, :, ::1] ring,
          const double[:, :, ::1] heat_k_s, double[:, :, ::1] perfusion_1_s,
          const unsigned char[:, :, ::1] vessel, const unsigned char[:, ::1] vessel_rows,
          double[:, :, ::1] omega, double[:, :, ::1] cem43_min, double[:, :, ::1] peak_c,
          *, int steps, double a, double dt_s, double body_c,
          double arrhenius_min_c, double cem_min_c, double ln_a, double ea_over_r,
          double coagulated_omega=1.0, int threads=1):
    """Advance t_in by `steps` steps of dt_s into t_out; returns the losses over the call.

    a = alpha * dt_s / dx^2 (stable for 6a + dt_s*max(perfusion) <= 1); heat_k_s is the light
    heating rate q / (rho c) in K/s; perfusion_1_s is w rho_b c_b / (rho c) in 1/s and drops to 0
    where Omega reaches coagulated_omega. Vessel voxels are held at body_c. ring is workspace of
    shape (>= steps-1, 3, ny+2, nz+2) whose ghost border holds body_c.

    Returns (perfusion_k, vessel_k, boundary_k, newly_coagulated): the heat carried off by
    perfusion, taken by the vessels and lost through the boundary, each as the sum over voxels
    of the temperature it removed (multiply by rho c dV for joules), and the voxel count that
    coagulated during the call.
    """
    cdef Py_ssize_t nx = heat_k_s.shape[0], ny = heat_k_s.shape[1], nz = heat_k_s.shape[2]
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    _check_shape("t_in", t_in.shape, nx + 2, ny + 2, nz + 2)
    _check_shape("t_out", t_out.shape, nx + 2, ny + 2, nz + 2)
    _check_shape("perfusion_1_s", perfusion_1_s.shape, nx, ny, nz)
    _check_shape("vessel", vessel.shape, nx, ny, nz)
    _check_shape("omega", omega.shape, nx, ny, nz)
    _check_shape("cem43_min", cem43_min.shape, nx, ny, nz)
    _check_shape("peak_c", peak_c.shape, nx, ny, nz)
    if vessel_rows.shape[0] != nx or vessel_rows.shape[1] != ny:
        raise ValueError(f"vessel_rows must have the shape {(nx, ny)}, got {(vessel_rows.shape[0], vessel_rows.shape[1])}")
    if steps > 1:
        _check_shape("ring[0]", ring.shape, 3, ny + 2, nz + 2, offset=1)
        if ring.shape[0] < steps - 1:
            raise ValueError(f"ring must hold at least {steps - 1} steps, got {ring.shape[0]}")
    if &t_in[0, 0, 0] == &t_out[0, 0, 0]:
        raise ValueError("t_in and t_out must be different arrays")

    cdef double[:, ::1] acc = np.zeros((threads, N_TOTALS))
    cdef Py_ssize_t p, level, i, j, k, row, j0, j1
    cdef int tid, nt
    cdef double c6 = 1.0 - 6.0 * a
    cdef double dt_damage = dt_s * steps
    cdef double damage_min_c = arrhenius_min_c if arrhenius_min_c < cem_min_c else cem_min_c
    cdef double t, rowmax, perf_k, vessel_k, boundary_k, coagulated
    cdef double* out
    cdef double* row_in
    cdef double* po
    cdef double* pm
    cdef double* pc
    cdef double* pp
    cdef double* tin = &t_in[0, 0, 0]
    cdef double* tout = &t_out[0, 0, 0]
    cdef double* rp = &ring[0, 0, 0, 0] if steps > 1 else NULL
    cdef Py_ssize_t rs = nz + 2
    cdef Py_ssize_t plane = (ny + 2) * (nz + 2)
    # Cython copies these into each thread (firstprivate): start them defined
    tid = nt = 0
    p = level = i = j = k = row = j0 = j1 = 0
    t = rowmax = perf_k = vessel_k = boundary_k = coagulated = 0.0
    out = row_in = po = pm = pc = pp = NULL

    with nogil, parallel(num_threads=threads):
        tid = threadid()
        nt = openmp.omp_get_num_threads()
        j0 = (ny * tid) // nt
        j1 = (ny * (tid + 1)) // nt
        perf_k = 0.0
        vessel_k = 0.0
        boundary_k = 0.0
        coagulated = 0.0
        rowmax = 0.0
        # wavefront: at position p, step `level` computes plane p - (level - 1)
        for p in range(nx + steps - 1):
            for level in range(1, steps + 1):
                i = p - (level - 1)
                if i < 0 or i >= nx:
                    continue
                po = _plane(tin, tout, rp, level, steps, i + 1, nx + 1, plane)
                pm = _plane(tin, tout, rp, level - 1, steps, i, nx + 1, plane)
                pc = _plane(tin, tout, rp, level - 1, steps, i + 1, nx + 1, plane)
                pp = _plane(tin, tout, rp, level - 1, steps, i + 2, nx + 1, plane)
                for j in range(j0, j1):
                    row = (j + 1) * rs + 1
                    out = po + row
                    row_in = pc + row
                    perf_k = perf_k + lh_row(row_in, pm + row, pp + row, row_in - rs, row_in + rs,
                                             &heat_k_s[i, j, 0], &perfusion_1_s[i, j, 0], out, nz,
                                             a, c6, dt_s, body_c, &rowmax)
                    # heat through the boundary faces, from the step's input temperatures
                    if i == 0:
                        boundary_k = boundary_k + _edge_sum(row_in, nz, body_c)
                    if i == nx - 1:
                        boundary_k = boundary_k + _edge_sum(row_in, nz, body_c)
                    if j == 0:
                        boundary_k = boundary_k + _edge_sum(row_in, nz, body_c)
                    if j == ny - 1:
                        boundary_k = boundary_k + _edge_sum(row_in, nz, body_c)
                    boundary_k = boundary_k + (row_in[0] - body_c) + (row_in[nz - 1] - body_c)
                    if vessel_rows[i, j]:
                        for k in range(nz):
                            if vessel[i, j, k]:
                                vessel_k = vessel_k + (out[k] - body_c)
                                out[k] = body_c
                    if level == steps and rowmax > damage_min_c:
                        for k in range(nz):
                            t = out[k]
                            if t > damage_min_c and not vessel[i, j, k]:
                                if t > peak_c[i, j, k]:
                                    peak_c[i, j, k] = t
                                if t > cem_min_c:
                                    # CEM43 (Sapareto & Dewey 1984): R = 0.5 above 43 degC, 0.25 below
                                    if t >= 43.0:
                                        cem43_min[i, j, k] += dt_damage / 60.0 * exp((min(t, CEM_CAP_C) - 43.0) * LN2)
                                    else:
                                        cem43_min[i, j, k] += dt_damage / 60.0 * exp((t - 43.0) * LN4)
                                if t > arrhenius_min_c:
                                    omega[i, j, k] += dt_damage * exp(ln_a - ea_over_r / (t + KELVIN))
                                    if omega[i, j, k] >= coagulated_omega and perfusion_1_s[i, j, k] != 0.0:
                                        perfusion_1_s[i, j, k] = 0.0  # coagulated: perfusion stops
                                        coagulated = coagulated + 1.0
                lh_barrier()
        acc[tid, 0] = perf_k
        acc[tid, 1] = vessel_k
        acc[tid, 2] = boundary_k * a
        acc[tid, 3] = coagulated
    totals = np.asarray(acc).sum(axis=0)
    return float(totals[0]), float(totals[1]), float(totals[2]), int(totals[3])

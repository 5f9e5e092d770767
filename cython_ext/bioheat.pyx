# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# distutils: extra_compile_args = -fopenmp
# distutils: extra_link_args = -fopenmp
"""Fused Pennes bioheat steps on a regular 3-D grid: conduction, perfusion, light, vessels, damage.

One call advances the temperature by `steps` explicit (FTCS) steps of dt_s (temporal blocking):
plane i of step l is computed as soon as planes i-1..i+1 of step l-1 exist, the steps in between
live in a ring of 3 planes per step, so the big arrays are read and written once per call instead
of once per step.

Tiles. The rows (j) are cut into tiles (one per thread with one or two threads); a tile sweeps
all planes through all steps with its own ring. A tile's rows slide by one row per step
("skewed"), so the next tile of the same thread needs only two rows per step and plane from it,
which it leaves in a halo store. Where tiles of two threads meet, the tile that may run at the same time as its
neighbour computes the rows it needs itself (the dependence cone: one more row per step further
from its output rows), so threads never wait for each other inside a call.

Threads. Two threads with a `split`: thread 0 takes the rows below it, thread 1 the rest, one
tile each (the caller balances the split from the per-thread times the call returns; `pin` keeps
each thread on its own CPU for the call, so the slow one stays the same). Otherwise
each pair of threads shares a band of rows: one takes tiles from the bottom, the other from the
top, claimed one at a time, and the one that finds the gap small takes the rest, so a thread that
gets less CPU claims fewer tiles; with an odd thread count the last band has one thread. Either
way the only synchronisation is the end of the call.

Each (step, voxel) is counted exactly once in the loss totals, whatever thread or tile computed it
(recomputed cone rows are not counted), and every voxel gets the same arithmetic whatever the
tiling, so temperatures do not depend on the thread count. Arrhenius Omega, CEM43 and the peak
temperature are integrated once per call with the end-of-call temperature over steps * dt_s, only
in rows with a voxel above a threshold, four voxels at a time with a polynomial exp() (libm for
exponents beyond +-700); perfusion stops where Omega reaches coagulated_omega after all steps (a
voxel's perfusion is constant during a call, as in the numpy twin).

The row arithmetic is vectorised; a row whose perfusion is one value (most rows: it differs only
at vessels and coagulated voxels) takes it as a constant, one load less per voxel. On x86-64 CPUs
with AVX2 and FMA a build of the row functions for them runs (chosen at import; simd() says which).

Pure numpy twin: cython_ext/bioheat_ref.py; the tests hold the two to 1e-9 relative.
Layout: temperatures are padded by one ghost layer (shape nx+2, ny+2, nz+2), the ghosts hold
body_c (Dirichlet boundary); every other field has the interior shape (nx, ny, nz).
"""

import numpy as np

from cython.parallel cimport parallel, threadid
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

cdef extern from *:
    """
    #include <stddef.h>
    #include <string.h>
    #include <math.h>
    #if defined(__GNUC__) && defined(__x86_64__)
    #define LH_DISPATCH 1
    #else
    #define LH_DISPATCH 0
    #endif
    #define LH_INLINE static inline __attribute__((always_inline))
    #if defined(__GNUC__) && !defined(__clang__)
    /* 4-double vectors in the baseline build: only inside always-inlined functions, no ABI involved */
    #pragma GCC diagnostic ignored "-Wpsabi"
    #endif

    /* One row of one step: the stencil, light and perfusion. Returns the perfusion loss of the
       row in K (sum of dt*w*(T-body)). */
    LH_INLINE double lh_row_body(const double* restrict c, const double* restrict im, const double* restrict ip,
                                 const double* restrict jm, const double* restrict jp, const double* restrict heat,
                                 const double* restrict perf, double* restrict out, ptrdiff_t n,
                                 double a, double c6, double dt, double body) {
        double loss = 0.0;
        #pragma omp simd reduction(+:loss)
        for (ptrdiff_t k = 0; k < n; k++) {
            double q = dt * perf[k] * (c[k] - body);
            out[k] = c6 * c[k] + a * (im[k] + ip[k] + jm[k] + jp[k] + c[k - 1] + c[k + 1]) + dt * heat[k] - q;
            loss += q;
        }
        return loss;
    }
    /* The same for a row whose perfusion is one value w (most rows): one load less per voxel. */
    LH_INLINE double lh_row_w_body(const double* restrict c, const double* restrict im, const double* restrict ip,
                                   const double* restrict jm, const double* restrict jp, const double* restrict heat,
                                   double w, double* restrict out, ptrdiff_t n,
                                   double a, double c6, double dt, double body) {
        double loss = 0.0;
        #pragma omp simd reduction(+:loss)
        for (ptrdiff_t k = 0; k < n; k++) {
            double q = dt * w * (c[k] - body);
            out[k] = c6 * c[k] + a * (im[k] + ip[k] + jm[k] + jp[k] + c[k - 1] + c[k + 1]) + dt * heat[k] - q;
            loss += q;
        }
        return loss;
    }
    /* 1 if x[0..n) all equal x[0] (bitwise as doubles compare: -0.0 == 0.0 is fine, both give q = 0). */
    LH_INLINE int lh_uniform(const double* restrict x, ptrdiff_t n) {
        double x0 = x[0];
        int same = 1;
        #pragma omp simd reduction(&:same)
        for (ptrdiff_t k = 0; k < n; k++) same &= x[k] == x0;
        return same;
    }
    LH_INLINE double lh_max_body(const double* restrict x, ptrdiff_t n) {
        double m = -1.0e300;
        #pragma omp simd reduction(max:m)
        for (ptrdiff_t k = 0; k < n; k++) m = x[k] > m ? x[k] : m;
        return m;
    }

    /* Damage over one row: Arrhenius Omega, CEM43 and the peak temperature, four voxels at a time
       (GCC vector extensions), exp() by a Taylor polynomial on |r| <= ln2/2 and a power of two
       (error ~1 ulp); an exponent beyond +-700 (never for tissue data) falls back to libm. */
    typedef double lh_v4d __attribute__((vector_size(32)));
    typedef long long lh_v4i __attribute__((vector_size(32)));
    typedef struct { double dmg_min, cem_min, arr_min, dt_min, dt_s, ln_a, ea_over_r, coag; } lh_dmg;
    #define LH_B(x) ((lh_v4d){(x), (x), (x), (x)})
    LH_INLINE lh_v4d lh_sel(lh_v4i m, lh_v4d a, lh_v4d b) { return (lh_v4d)(((lh_v4i)a & m) | ((lh_v4i)b & ~m)); }
    LH_INLINE lh_v4d lh_vexp(lh_v4d x) {
        lh_v4d kd = x * LH_B(1.4426950408889634) + LH_B(6755399441055744.0);  /* round(x/ln2) + 1.5*2^52 */
        lh_v4d n = kd - LH_B(6755399441055744.0);
        lh_v4d r = x - n * LH_B(6.93147180369123816490e-01);
        r = r - n * LH_B(1.90821492927058770002e-10);
        lh_v4d p = LH_B(1.0 / 6227020800.0);
        p = p * r + LH_B(1.0 / 479001600.0);
        p = p * r + LH_B(1.0 / 39916800.0);
        p = p * r + LH_B(1.0 / 3628800.0);
        p = p * r + LH_B(1.0 / 362880.0);
        p = p * r + LH_B(1.0 / 40320.0);
        p = p * r + LH_B(1.0 / 5040.0);
        p = p * r + LH_B(1.0 / 720.0);
        p = p * r + LH_B(1.0 / 120.0);
        p = p * r + LH_B(1.0 / 24.0);
        p = p * r + LH_B(1.0 / 6.0);
        p = p * r + LH_B(0.5);
        p = p * r + LH_B(1.0);
        p = p * r + LH_B(1.0);
        lh_v4i bits = ((lh_v4i)kd << 52) + (lh_v4i){1023LL << 52, 1023LL << 52, 1023LL << 52, 1023LL << 52};
        return p * (lh_v4d)bits;
    }
    /* Returns bit 1 if a voxel reached coag (Omega >= coag where Arrhenius ran), bit 2 if an
       exponent was out of the fast range (those voxels were left out; see lh_damage). */
    LH_INLINE int lh_damage4(const double* restrict t, const unsigned char* restrict vessel, const double* restrict perf,
                             double* restrict peak, double* restrict cem, double* restrict omega, const lh_dmg* d) {
        const lh_v4i none = {0, 0, 0, 0};
        lh_v4d tk, pk, ck, ok;
        memcpy(&tk, t, 32); memcpy(&pk, peak, 32); memcpy(&ck, cem, 32); memcpy(&ok, omega, 32);
        lh_v4i vk = {vessel[0], vessel[1], vessel[2], vessel[3]};
        lh_v4i hot = (tk > LH_B(d->dmg_min)) & (vk == none);
        if (!(hot[0] | hot[1] | hot[2] | hot[3])) return 0;
        pk = lh_sel(hot & (tk > pk), tk, pk);
        lh_v4d tc = lh_sel(tk < LH_B(300.0), tk, LH_B(300.0));  /* CEM_CAP_C */
        lh_v4d xc = (tc - LH_B(43.0)) * lh_sel(tk >= LH_B(43.0), LH_B(0.6931471805599453), LH_B(1.3862943611198906));
        lh_v4d xa = LH_B(d->ln_a) - LH_B(d->ea_over_r) / (tk + LH_B(273.15));
        lh_v4i docem = hot & (tk > LH_B(d->cem_min)), doarr = hot & (tk > LH_B(d->arr_min));
        lh_v4i okc = (xc >= LH_B(-700.0)) & (xc <= LH_B(700.0)), oka = (xa >= LH_B(-700.0)) & (xa <= LH_B(700.0));
        lh_v4i wild = (docem & ~okc) | (doarr & ~oka);
        lh_v4d ec = lh_vexp(lh_sel(okc, xc, LH_B(0.0)));
        ck = lh_sel(docem & okc, ck + LH_B(d->dt_min) * ec, ck);
        int res = 0;
        if (doarr[0] | doarr[1] | doarr[2] | doarr[3]) {
            lh_v4d ea = lh_vexp(lh_sel(oka, xa, LH_B(0.0)));
            ok = lh_sel(doarr & oka, ok + LH_B(d->dt_s) * ea, ok);
            lh_v4d pf;
            memcpy(&pf, perf, 32);
            lh_v4i coag = doarr & (ok >= LH_B(d->coag)) & (pf != LH_B(0.0));
            memcpy(omega, &ok, 32);
            if (coag[0] | coag[1] | coag[2] | coag[3]) res |= 1;
        }
        memcpy(peak, &pk, 32); memcpy(cem, &ck, 32);
        if (wild[0] | wild[1] | wild[2] | wild[3]) res |= 2;
        return res;
    }
    /* Returns bit 1 if a perfused voxel reached coag (Omega >= coag where Arrhenius ran), bit 2 if
       an exponent was out of the fast range (those voxels were left out; see lh_damage). */
    LH_INLINE int lh_damage_body(const double* restrict t, const unsigned char* restrict vessel, const double* restrict perf,
                                 double* restrict peak, double* restrict cem, double* restrict omega, ptrdiff_t n, const lh_dmg* d) {
        int res = 0;
        ptrdiff_t k = 0;
        for (; k + 4 <= n; k += 4) res |= lh_damage4(t + k, vessel + k, perf + k, peak + k, cem + k, omega + k, d);
        if (k < n) {  /* the tail, through a padded copy */
            double tb[4] = {-1.0e300, -1.0e300, -1.0e300, -1.0e300}, fb[4] = {0, 0, 0, 0}, pb[4] = {0, 0, 0, 0}, cb[4] = {0, 0, 0, 0}, ob[4] = {0, 0, 0, 0};
            unsigned char vb[4] = {1, 1, 1, 1};
            ptrdiff_t m = n - k, q;
            for (q = 0; q < m; q++) { tb[q] = t[k + q]; fb[q] = perf[k + q]; pb[q] = peak[k + q]; cb[q] = cem[k + q]; ob[q] = omega[k + q]; vb[q] = vessel[k + q]; }
            res |= lh_damage4(tb, vb, fb, pb, cb, ob, d);
            for (q = 0; q < m; q++) { peak[k + q] = pb[q]; cem[k + q] = cb[q]; omega[k + q] = ob[q]; }
        }
        return res;
    }
    static int lh_damage_base(const double* t, const unsigned char* vessel, const double* perf, double* peak, double* cem, double* omega, ptrdiff_t n, const lh_dmg* d) {
        return lh_damage_body(t, vessel, perf, peak, cem, omega, n, d);
    }
    #if LH_DISPATCH
    __attribute__((target("avx2,fma"))) static int lh_damage_avx2(const double* t, const unsigned char* vessel, const double* perf, double* peak, double* cem, double* omega, ptrdiff_t n, const lh_dmg* d) {
        return lh_damage_body(t, vessel, perf, peak, cem, omega, n, d);
    }
    #endif
    static int (*lh_damage_fast)(const double* t, const unsigned char* vessel, const double* perf, double* peak, double* cem, double* omega, ptrdiff_t n, const lh_dmg* d) = lh_damage_base;
    /* The whole row: the fast pass, then libm for exponents out of its range. */
    static int lh_damage(const double* t, const unsigned char* vessel, const double* perf, double* peak, double* cem, double* omega, ptrdiff_t n, const lh_dmg* d) {
        int res = lh_damage_fast(t, vessel, perf, peak, cem, omega, n, d);
        if (res & 2) {
            for (ptrdiff_t k = 0; k < n; k++) {
                double tk = t[k];
                if (!(tk > d->dmg_min) || vessel[k]) continue;
                double tc = tk < 300.0 ? tk : 300.0;
                double xc = (tc - 43.0) * (tk >= 43.0 ? 0.6931471805599453 : 1.3862943611198906);
                double xa = d->ln_a - d->ea_over_r / (tk + 273.15);
                if (tk > d->cem_min && !(xc >= -700.0 && xc <= 700.0)) cem[k] += d->dt_min * exp(xc);
                if (tk > d->arr_min && !(xa >= -700.0 && xa <= 700.0)) {
                    omega[k] += d->dt_s * exp(xa);
                    if (omega[k] >= d->coag && perf[k] != 0.0) res |= 1;
                }
            }
        }
        return res & 1;
    }
    LH_INLINE double lh_edge_sum(const double* restrict x, ptrdiff_t n, double body) {
        double s = 0.0;
        for (ptrdiff_t k = 0; k < n; k++) s += x[k] - body;
        return s;
    }
    typedef struct { double perf_k, vessel_k, boundary_k; } lh_sums;
    /* Rows lo..hi-1 of one plane of one step (pointers at row lo, each buffer with its row
       stride); the rows in [clo, chi) are counted in the sums. faces: how many of the plane's
       i-faces are grid faces (0..2). Vessel voxels are held at body. */
    LH_INLINE void lh_chunk_body(double* out, ptrdiff_t so, const double* cen, ptrdiff_t sc, const double* pm, ptrdiff_t sm,
                                 const double* pp, ptrdiff_t sp, const double* heat, const double* perf,
                                 const unsigned char* vrows, const unsigned char* vessel, ptrdiff_t lo, ptrdiff_t hi,
                                 ptrdiff_t clo, ptrdiff_t chi, ptrdiff_t ny, ptrdiff_t nz, int faces,
                                 double a, double c6, double dt, double body, unsigned char* wrows, lh_sums* sums) {
        double perf_k = 0.0, vessel_k = 0.0, boundary_k = 0.0;
        for (ptrdiff_t j = lo; j < hi; j++) {
            /* wrows[j]: 0 unknown, 1 one perfusion value, 2 mixed (set by the first step to reach the row) */
            if (!wrows[j]) wrows[j] = lh_uniform(perf, nz) ? 1 : 2;
            double loss = wrows[j] == 1 ? lh_row_w_body(cen, pm, pp, cen - sc, cen + sc, heat, perf[0], out, nz, a, c6, dt, body)
                                        : lh_row_body(cen, pm, pp, cen - sc, cen + sc, heat, perf, out, nz, a, c6, dt, body);
            int counted = j >= clo && j < chi;
            if (counted) {
                perf_k += loss;
                /* heat through the boundary faces, from the step's input temperatures */
                int f = faces + (j == 0) + (j == ny - 1);
                if (f) {
                    double e = lh_edge_sum(cen, nz, body);
                    for (int q = 0; q < f; q++) boundary_k += e;
                }
                boundary_k += (cen[0] - body) + (cen[nz - 1] - body);
            }
            if (vrows[j]) {
                for (ptrdiff_t k = 0; k < nz; k++) {
                    if (vessel[k]) {
                        if (counted) vessel_k += out[k] - body;
                        out[k] = body;
                    }
                }
            }
            out += so; cen += sc; pm += sm; pp += sp;
            heat += nz; perf += nz; vessel += nz;
        }
        sums->perf_k += perf_k;
        sums->vessel_k += vessel_k;
        sums->boundary_k += boundary_k;
    }
    #define LH_CHUNK_ARGS double* out, ptrdiff_t so, const double* cen, ptrdiff_t sc, const double* pm, ptrdiff_t sm, \\
                          const double* pp, ptrdiff_t sp, const double* heat, const double* perf, const unsigned char* vrows, \\
                          const unsigned char* vessel, ptrdiff_t lo, ptrdiff_t hi, ptrdiff_t clo, ptrdiff_t chi, ptrdiff_t ny, \\
                          ptrdiff_t nz, int faces, double a, double c6, double dt, double body, unsigned char* wrows, lh_sums* sums
    #define LH_CHUNK_CALL out, so, cen, sc, pm, sm, pp, sp, heat, perf, vrows, vessel, lo, hi, clo, chi, ny, nz, faces, a, c6, dt, body, wrows, sums
    static void lh_chunk_base(LH_CHUNK_ARGS) { lh_chunk_body(LH_CHUNK_CALL); }
    #if LH_DISPATCH
    __attribute__((target("avx2,fma"))) static void lh_chunk_avx2(LH_CHUNK_ARGS) { lh_chunk_body(LH_CHUNK_CALL); }
    #endif
    static void (*lh_chunk)(LH_CHUNK_ARGS) = lh_chunk_base;
    #define LH_ROW_ARGS const double* c, const double* im, const double* ip, const double* jm, const double* jp, \\
                        const double* heat, const double* perf, double* out, ptrdiff_t n, double a, double c6, double dt, double body
    #define LH_ROW_CALL c, im, ip, jm, jp, heat, perf, out, n, a, c6, dt, body
    static double lh_row_base(LH_ROW_ARGS) { return lh_row_body(LH_ROW_CALL); }
    static double lh_max_base(const double* x, ptrdiff_t n) { return lh_max_body(x, n); }
    #if LH_DISPATCH
    __attribute__((target("avx2,fma"))) static double lh_row_avx2(LH_ROW_ARGS) { return lh_row_body(LH_ROW_CALL); }
    __attribute__((target("avx2,fma"))) static double lh_max_avx2(const double* x, ptrdiff_t n) { return lh_max_body(x, n); }
    #endif
    static double (*lh_row)(LH_ROW_ARGS) = lh_row_base;
    static double (*lh_max)(const double* x, ptrdiff_t n) = lh_max_base;

    /* Use the AVX2+FMA build if asked and the CPU has both; returns 1 if it is in use. */
    static int lh_select(int avx2) {
        lh_row = lh_row_base;
        lh_chunk = lh_chunk_base;
        lh_max = lh_max_base;
        lh_damage_fast = lh_damage_base;
    #if LH_DISPATCH
        __builtin_cpu_init();
        if (avx2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
            lh_row = lh_row_avx2;
            lh_chunk = lh_chunk_avx2;
            lh_max = lh_max_avx2;
            lh_damage_fast = lh_damage_avx2;
            return 1;
        }
    #endif
        return 0;
    }

    #include <time.h>
    #if defined(__linux__)
    #include <sched.h>
    /* Pin the calling thread to one CPU (keeping its mask in *saved); 0 if that failed. */
    static int lh_pin(int cpu, cpu_set_t* saved) {
        cpu_set_t one;
        if (cpu < 0 || cpu >= CPU_SETSIZE || sched_getaffinity(0, sizeof(*saved), saved) != 0) return 0;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        return sched_setaffinity(0, sizeof(one), &one) == 0;
    }
    static void lh_unpin(const cpu_set_t* saved) { sched_setaffinity(0, sizeof(*saved), saved); }
    #else
    typedef int cpu_set_t;
    static int lh_pin(int cpu, cpu_set_t* saved) { (void)cpu; (void)saved; return 0; }
    static void lh_unpin(const cpu_set_t* saved) { (void)saved; }
    #endif
    static double lh_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
    }

    /* A band of rows shared by (up to) two threads: role 0 takes tiles from the bottom (lo), role 1
       from the top (hi). Edge kinds at the frontiers: 0 the grid edge, 1 a band edge, 2 an edge left
       by that side's own chain of tiles. */
    typedef struct { ptrdiff_t lo, hi; int lo_kind, hi_kind, done; } lh_band;
    enum { LH_F_GRID = 0, LH_F_BAND = 1, LH_F_CHAIN = 2 };
    /* Tile edge kinds, lower edge: */
    enum { LH_L_GRID = 0, LH_L_HALO = 1, LH_L_CONE = 2, LH_L_AHEAD = 3 };
    /* upper edge: */
    enum { LH_U_GRID = 0, LH_U_HALO = 1, LH_U_CONE = 2, LH_U_AHEAD = 3 };

    /* Claim the next tile of a band. Returns 0 when the band is done. width: the usual tile rows;
       last: take the whole rest when no more than this is left. */
    static int lh_claim(lh_band* b, int role, ptrdiff_t width, ptrdiff_t last,
                        ptrdiff_t* b0, int* k0, int* save0, ptrdiff_t* b1, int* k1, int* save1) {
        int got = 0;
        #pragma omp critical(lh_claim)
        {
            if (!b->done) {
                got = 1;
                int lo_kind = b->lo_kind == LH_F_GRID ? LH_L_GRID
                            : (b->lo_kind == LH_F_CHAIN && role == 0) ? LH_L_HALO : LH_L_CONE;
                int hi_kind = b->hi_kind == LH_F_GRID ? LH_U_GRID
                            : b->hi_kind == LH_F_BAND ? LH_U_AHEAD
                            : role == 1 ? LH_U_HALO : LH_U_CONE;
                *save0 = *save1 = 0;
                if (b->hi - b->lo <= last) {
                    *b0 = b->lo; *k0 = lo_kind; *b1 = b->hi; *k1 = hi_kind;
                    b->done = 1;
                } else if (role == 0) {
                    *b0 = b->lo; *k0 = lo_kind; *b1 = b->lo + width; *k1 = LH_U_AHEAD; *save1 = 1;
                    b->lo += width;
                    b->lo_kind = LH_F_CHAIN;
                } else {
                    *b1 = b->hi; *k1 = hi_kind; *b0 = b->hi - width; *k0 = LH_L_AHEAD; *save0 = 1;
                    b->hi -= width;
                    b->hi_kind = LH_F_CHAIN;
                }
            }
        }
        return got;
    }
    """
    double lh_row(const double* c, const double* im, const double* ip, const double* jm, const double* jp,
                  const double* heat, const double* perf, double* out, Py_ssize_t n,
                  double a, double c6, double dt, double body) noexcept nogil
    double lh_max(const double* x, Py_ssize_t n) noexcept nogil
    ctypedef struct lh_sums:
        double perf_k, vessel_k, boundary_k
    void lh_chunk(double* out, Py_ssize_t so, const double* cen, Py_ssize_t sc, const double* pm, Py_ssize_t sm,
                  const double* pp, Py_ssize_t sp, const double* heat, const double* perf,
                  const unsigned char* vrows, const unsigned char* vessel, Py_ssize_t lo, Py_ssize_t hi,
                  Py_ssize_t clo, Py_ssize_t chi, Py_ssize_t ny, Py_ssize_t nz, int faces,
                  double a, double c6, double dt, double body, unsigned char* wrows, lh_sums* sums) noexcept nogil
    int lh_select(int avx2) noexcept nogil
    ctypedef struct lh_dmg:
        double dmg_min, cem_min, arr_min, dt_min, dt_s, ln_a, ea_over_r, coag
    int lh_damage(const double* t, const unsigned char* vessel, const double* perf, double* peak, double* cem,
                  double* omega, Py_ssize_t n, const lh_dmg* d) noexcept nogil
    ctypedef struct lh_band:
        Py_ssize_t lo, hi
        int lo_kind, hi_kind, done
    enum:
        LH_F_GRID, LH_F_BAND, LH_F_CHAIN
        LH_L_GRID, LH_L_HALO, LH_L_CONE, LH_L_AHEAD
        LH_U_GRID, LH_U_HALO, LH_U_CONE, LH_U_AHEAD
    int lh_claim(lh_band* b, int role, Py_ssize_t width, Py_ssize_t last,
                 Py_ssize_t* b0, int* k0, int* save0, Py_ssize_t* b1, int* k1, int* save1) noexcept nogil
    double lh_now() noexcept nogil
    ctypedef struct cpu_set_t:
        pass
    int lh_pin(int cpu, cpu_set_t* saved) noexcept nogil
    void lh_unpin(const cpu_set_t* saved) noexcept nogil

CEM_CAP_C = 300.0  # CEM43 means nothing this hot; the cap keeps R**(43-T) finite (lh_damage)
# Rows per tile with several threads: a quarter of the rows, at least MIN_TILE_ROWS (more tiles
# balance the threads better, but every tile edge costs halo copies). One thread: one tile.
MIN_TILE_ROWS = 16

_simd = "avx2" if lh_select(1) else "baseline"


def simd() -> str:
    """Which build of the row arithmetic runs: 'avx2' (AVX2 + FMA) or 'baseline'."""
    return _simd


def _use_simd(avx2: bool) -> str:
    """Testing: choose the AVX2 build (if the CPU has it) or the baseline; returns simd()."""
    global _simd
    _simd = "avx2" if lh_select(1 if avx2 else 0) else "baseline"
    return _simd


cdef struct Ctx:
    double* tin
    double* tout
    const double* heat
    const double* perf
    const unsigned char* vessel
    const unsigned char* vrows
    double* omega
    double* cem
    double* peak
    unsigned char* coag_rows
    unsigned char* wrows  # per row (i, j): 0 not seen yet, 1 one perfusion value, 2 mixed
    Py_ssize_t nx, ny, nz, steps, rs, plane, rr, ring_rows, slot  # rr: ring row stride (interior 32-byte aligned)
    double a, c6, dt, body
    lh_dmg dmg


cdef struct Worker:
    double* ring  # (steps-1) * 3 slots of ring_rows rows of rr doubles (k = 0 at offset 4, 32-byte aligned)
    double* halo  # (steps-1) * nx * 2 rows of rr doubles: two rows per step and plane, left for the next tile
    Py_ssize_t* lo  # per step 1..steps: computed rows [lo, hi), counted rows [clo, chi)
    Py_ssize_t* hi
    Py_ssize_t* clo
    Py_ssize_t* chi
    Py_ssize_t base  # lowest ring row (the ring holds rows base .. base + ring_rows - 1)
    int kind_lo, kind_hi, save_lo, save_hi, error
    lh_sums sums


cdef inline Py_ssize_t _clip(Py_ssize_t v, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    return lo if v < lo else (hi if v > hi else v)


cdef inline double* _row(const Ctx* c, const Worker* w, Py_ssize_t level, Py_ssize_t i, Py_ssize_t j) noexcept nogil:
    """Row j (-1..ny) of plane i (-1..nx) of step `level`, at k = 0: the input, the output or the ring.

    The ghost planes never change, so every level reads them from the input."""
    if level == 0 or i < 0 or i >= c.nx:
        return c.tin + (i + 1) * c.plane + (j + 1) * c.rs + 1
    if level == c.steps:
        return c.tout + (i + 1) * c.plane + (j + 1) * c.rs + 1
    return w.ring + ((level - 1) * 3 + i % 3) * c.slot + (j - w.base) * c.rr + 4


cdef inline Py_ssize_t _stride(const Ctx* c, Py_ssize_t level, Py_ssize_t i) noexcept nogil:
    if level == 0 or level == c.steps or i < 0 or i >= c.nx:
        return c.rs
    return c.rr


cdef inline double* _halo(const Ctx* c, const Worker* w, Py_ssize_t level, Py_ssize_t i, Py_ssize_t idx) noexcept nogil:
    return w.halo + (((level - 1) * c.nx + i) * 2 + idx) * c.rr


cdef int _geometry(const Ctx* c, Worker* w, Py_ssize_t b0, int k0, Py_ssize_t b1, int k1) noexcept nogil:
    """Rows per step of the tile between nominal rows b0 and b1 with those edge kinds; 0 if empty.

    An edge at nominal row b splits the rows counted at step l at b - (l-1) (an edge of a chain
    from the bottom, "up") or b + (l-1) (from the top, "down"). The tile that goes first at an
    edge computes to that split; the other either reads two rows per step from the halo store
    (same thread, done before) or computes the cone that reaches the split at the last step."""
    cdef Py_ssize_t S = c.steps, ny = c.ny, l, lo, hi, clo, chi, base = ny, top = 0
    cdef int any_rows = 0
    for l in range(1, S + 1):
        if k0 == LH_L_GRID:
            lo = 0
            clo = 0
        elif k0 == LH_L_HALO:
            lo = b0 - (l - 1)
            clo = lo
        elif k0 == LH_L_CONE:
            clo = b0 - (l - 1)
            lo = b0 - (S - 1) - (S - l)
        else:
            lo = b0 + (l - 1)
            clo = lo
        if k1 == LH_U_GRID:
            hi = ny
            chi = ny
        elif k1 == LH_U_HALO:
            hi = b1 + (l - 1)
            chi = hi
        elif k1 == LH_U_CONE:
            chi = b1 + (l - 1)
            hi = b1 + (S - 1) + (S - l)
        else:
            hi = b1 - (l - 1)
            chi = hi
        lo = _clip(lo, 0, ny)
        hi = _clip(hi, 0, ny)
        clo = _clip(clo, 0, ny)
        chi = _clip(chi, 0, ny)
        if hi < lo:
            hi = lo
        if chi < clo:
            w.error = 1  # the tiles would count rows twice: a tile too narrow for its edges
            chi = clo
        w.lo[l] = lo
        w.hi[l] = hi
        w.clo[l] = clo
        w.chi[l] = chi
        if lo < hi:
            any_rows = 1
            if lo < base:
                base = lo
            if hi > top:
                top = hi
    w.kind_lo = k0
    w.kind_hi = k1
    w.base = base - 2
    if any_rows and top + 2 - w.base > c.ring_rows:
        w.error = 2
        return 0
    return any_rows


cdef void _edges(const Ctx* c, Worker* w, Py_ssize_t l, Py_ssize_t i) noexcept nogil:
    """After plane i of step l (< steps): put into the ring the rows step l+1 reads beyond this
    tile's own (halo rows from the previous tile, ghost rows), then leave the rows the next tile
    needs in the halo store (after: the two share it)."""
    cdef Py_ssize_t lo = w.lo[l], hi = w.hi[l], nlo = w.lo[l + 1], nhi = w.hi[l + 1], r, k, nz = c.nz
    cdef double* dst
    if nlo < nhi:
        for r in range(nlo - 1, lo):
            dst = _row(c, w, l, i, r)
            if r < 0:
                for k in range(nz):
                    dst[k] = c.body
            elif w.kind_lo == LH_L_HALO:
                memcpy(dst, _halo(c, w, l, i, r - (lo - 2)), nz * sizeof(double))
            else:
                w.error = 4
        for r in range(hi, nhi + 1):
            dst = _row(c, w, l, i, r)
            if r >= c.ny:
                for k in range(nz):
                    dst[k] = c.body
            elif w.kind_hi == LH_U_HALO:
                memcpy(dst, _halo(c, w, l, i, r - hi), nz * sizeof(double))
            else:
                w.error = 4
    if w.save_hi:
        for r in range(hi - 2, hi):
            if r >= 0:
                if r < lo:
                    w.error = 3
                memcpy(_halo(c, w, l, i, r - (hi - 2)), _row(c, w, l, i, r), nz * sizeof(double))
    if w.save_lo:
        for r in range(lo, lo + 2):
            if r < c.ny:
                if r >= hi:
                    w.error = 3
                memcpy(_halo(c, w, l, i, r - lo), _row(c, w, l, i, r), nz * sizeof(double))


cdef void _damage(const Ctx* c, Py_ssize_t i, Py_ssize_t j, const double* out) noexcept nogil:
    """Arrhenius Omega, CEM43 (Sapareto & Dewey 1984: R = 0.5 above 43 degC, 0.25 below; capped at
    CEM_CAP_C) and the peak temperature of row (i, j) over the call; flags the row if a voxel
    coagulated (its perfusion stops after the call)."""
    cdef Py_ssize_t at = (i * c.ny + j) * c.nz, k0 = 0, k1 = c.nz
    while k0 < k1 and not out[k0] > c.dmg.dmg_min:  # the hot span of the row
        k0 += 1
    while k1 > k0 and not out[k1 - 1] > c.dmg.dmg_min:
        k1 -= 1
    if lh_damage(out + k0, c.vessel + at + k0, c.perf + at + k0, c.peak + at + k0, c.cem + at + k0, c.omega + at + k0,
                 k1 - k0, &c.dmg):
        c.coag_rows[i * c.ny + j] = 1


cdef void _run_tile(const Ctx* c, Worker* w) noexcept nogil:
    """The wavefront of one tile: at position p, step l computes plane p - (l-1)."""
    cdef Py_ssize_t S = c.steps, nx = c.nx, ny = c.ny, nz = c.nz
    cdef Py_ssize_t p, l, i, j, lo, hi, at, so, sc, sm, sp
    cdef double body = c.body
    cdef double* out
    cdef double* cen
    cdef double* pm
    cdef double* pp
    for p in range(nx + S - 1):
        for l in range(1, S + 1):
            i = p - (l - 1)
            if i < 0 or i >= nx:
                continue
            lo = w.lo[l]
            hi = w.hi[l]
            if lo >= hi:
                continue
            out = _row(c, w, l, i, lo)
            cen = _row(c, w, l - 1, i, lo)
            pm = _row(c, w, l - 1, i - 1, lo)
            pp = _row(c, w, l - 1, i + 1, lo)
            so = _stride(c, l, i)
            sc = _stride(c, l - 1, i)
            sm = _stride(c, l - 1, i - 1)
            sp = _stride(c, l - 1, i + 1)
            at = (i * ny + lo) * nz
            lh_chunk(out, so, cen, sc, pm, sm, pp, sp, c.heat + at, c.perf + at, c.vrows + i * ny, c.vessel + at,
                     lo, hi, w.clo[l], w.chi[l], ny, nz, (i == 0) + (i == nx - 1), c.a, c.c6, c.dt, body, c.wrows + i * ny, &w.sums)
            if l == S:
                for j in range(lo, hi):
                    if lh_max(out, nz) > c.dmg.dmg_min:
                        _damage(c, i, j, out)
                    out += so
            if l < S:
                _edges(c, w, l, i)


cdef _check_shape(str name, Py_ssize_t* shape, Py_ssize_t a, Py_ssize_t b, Py_ssize_t c, int offset=0):
    if shape[offset] != a or shape[offset + 1] != b or shape[offset + 2] != c:
        raise ValueError(f"{name} must have the shape {(a, b, c)}, got {(shape[offset], shape[offset + 1], shape[offset + 2])}")


def _layout(Py_ssize_t ny, Py_ssize_t steps, int threads, Py_ssize_t tile):
    """(bands, threads used, tile rows, last, ring rows) for a grid of ny rows (tile 0: the default)."""
    if tile <= 0:
        tile = ny if threads == 1 else max(MIN_TILE_ROWS, ny // 4)
    tile = max(2, tile)
    last = max(tile + tile // 2, 2 * steps)
    bands = (threads + 1) // 2
    while bands > 1 and ny < bands * (2 * last + 4 * steps):
        bands -= 1
    threads = min(threads, 2 * bands)
    if bands > 1:  # a top tile under a band edge loses a row per step at both edges
        tile = max(tile, 2 * steps)
        last = max(last, tile + tile // 2)
    ring_rows = ny + 6  # any tile, up to the whole grid (one thread, or a split)
    return bands, threads, tile, last, ring_rows


def workspace_shape(shape, int steps, int threads, int tile_rows=0):
    """The `ring` shape for sweep() to run on the caller's memory: (n, 3, ny+2, nz+2)."""
    nx, ny, nz = shape
    doubles = 0
    for t in range(1, threads + 1):  # any thread count up to `threads` (the model may run fewer)
        _, used, _, _, ring_rows = _layout(ny, steps, t, tile_rows)
        doubles = max(doubles, used * (steps - 1) * (3 * ring_rows + 2 * nx) * ((nz + 5 + 3) // 4 * 4) + 4)
    n = max(steps - 1, 1, -(-doubles // (3 * (ny + 2) * (nz + 2))))
    return (n, 3, ny + 2, nz + 2)


def sweep(double[:, :, ::1] t_in, double[:, :, ::1] t_out, double[:, :, :, ::1] ring,
          const double[:, :, ::1] heat_k_s, double[:, :, ::1] perfusion_1_s,
          const unsigned char[:, :, ::1] vessel, const unsigned char[:, ::1] vessel_rows,
          double[:, :, ::1] omega, double[:, :, ::1] cem43_min, double[:, :, ::1] peak_c,
          *, int steps, double a, double dt_s, double body_c,
          double arrhenius_min_c, double cem_min_c, double ln_a, double ea_over_r,
          double coagulated_omega=1.0, int threads=1, int tile_rows=0, double split=0.0,
          double[::1] thread_seconds=None, pin=None):
    """Advance t_in by `steps` steps of dt_s into t_out; returns the losses over the call.

    a = alpha * dt_s / dx^2 (stable for 6a + dt_s*max(perfusion) <= 1); heat_k_s is the light
    heating rate q / (rho c) in K/s; perfusion_1_s is w rho_b c_b / (rho c) in 1/s and drops to 0
    where Omega reaches coagulated_omega. Vessel voxels are held at body_c. ring is workspace of
    shape (>= steps-1, 3, ny+2, nz+2); the call runs in it when it is C-contiguous and at least
    workspace_shape(...) big, else in memory of its own. tile_rows: rows per tile (0: see _layout).

    split (0 < split < 1, two threads): instead of claiming tiles, thread 0 takes the rows below
    split * ny and thread 1 the rest (one tile each: no halos, one cone), so a caller that knows
    how fast each thread runs now can balance them. thread_seconds, if given (length >= threads),
    receives each thread's wall seconds in the call (0 for a thread that did nothing). pin: two
    CPU numbers; with split, thread t runs on pin[t] during the call (so the thread that shares
    a core with another program stays the same one and the split can follow it).

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
    if nx == 0 or ny == 0 or nz == 0:
        return 0.0, 0.0, 0.0, 0

    bands_n, used, tile, last, ring_rows = _layout(ny, steps, threads, tile_rows)
    cdef Py_ssize_t n_bands = bands_n, n_used = used, width = tile, last_rows = last
    cdef Ctx c
    c.tin = &t_in[0, 0, 0]
    c.tout = &t_out[0, 0, 0]
    c.heat = &heat_k_s[0, 0, 0]
    c.perf = &perfusion_1_s[0, 0, 0]
    c.vessel = &vessel[0, 0, 0]
    c.vrows = &vessel_rows[0, 0]
    c.omega = &omega[0, 0, 0]
    c.cem = &cem43_min[0, 0, 0]
    c.peak = &peak_c[0, 0, 0]
    coag_rows = np.zeros((nx, ny), dtype=np.uint8)
    cdef unsigned char[:, ::1] coag_view = coag_rows
    c.coag_rows = &coag_view[0, 0]
    wrows = np.zeros((nx, ny), dtype=np.uint8)
    cdef unsigned char[:, ::1] wrows_view = wrows
    c.wrows = &wrows_view[0, 0]
    c.nx, c.ny, c.nz, c.steps = nx, ny, nz, steps
    c.rs = nz + 2
    c.plane = (ny + 2) * (nz + 2)
    c.ring_rows = ring_rows
    c.rr = (nz + 5 + 3) // 4 * 4
    c.slot = c.ring_rows * c.rr
    c.a, c.c6, c.dt, c.body = a, 1.0 - 6.0 * a, dt_s, body_c
    c.dmg.cem_min, c.dmg.arr_min = cem_min_c, arrhenius_min_c
    c.dmg.dmg_min = arrhenius_min_c if arrhenius_min_c < cem_min_c else cem_min_c
    c.dmg.ln_a, c.dmg.ea_over_r, c.dmg.coag = ln_a, ea_over_r, coagulated_omega
    c.dmg.dt_s = dt_s * steps
    c.dmg.dt_min = dt_s * steps / 60.0

    # per thread: the ring (3 planes per inner step) and the halo store (2 rows per inner step and plane)
    cdef Py_ssize_t per = (steps - 1) * (3 * c.ring_rows + 2 * nx) * c.rr
    cdef double[::1] space
    if steps > 1 and ring.is_c_contig() and ring.shape[0] * ring.shape[1] * ring.shape[2] * ring.shape[3] >= n_used * per + 4:
        space = np.asarray(ring).reshape(-1)
    else:
        space = np.empty(n_used * per + 4)
    cdef Py_ssize_t align = (-(<size_t> &space[0]) // sizeof(double)) % 4  # to a 32-byte boundary
    cdef Py_ssize_t[:, :, ::1] rows = np.zeros((n_used, 4, steps + 1), dtype=np.intp)
    cdef Worker* workers = <Worker*> malloc(n_used * sizeof(Worker))
    cdef lh_band* bands = <lh_band*> malloc(n_bands * sizeof(lh_band))
    if workers == NULL or bands == NULL:
        free(workers)
        free(bands)
        raise MemoryError()
    cdef Py_ssize_t t, r, before, ring_doubles = (steps - 1) * 3 * c.slot
    cdef double* slot_row
    for t in range(n_used):
        workers[t].ring = &space[0] + align + t * per
        workers[t].halo = workers[t].ring + ring_doubles
        workers[t].lo = &rows[t, 0, 0]
        workers[t].hi = &rows[t, 1, 0]
        workers[t].clo = &rows[t, 2, 0]
        workers[t].chi = &rows[t, 3, 0]
        workers[t].error = 0
        workers[t].sums.perf_k = workers[t].sums.vessel_k = workers[t].sums.boundary_k = 0.0
        for r in range((steps - 1) * 3 * c.ring_rows):  # the ring's ghost columns
            slot_row = workers[t].ring + r * c.rr
            slot_row[3] = body_c
            slot_row[nz + 4] = body_c
    # bands: pairs of threads, the last band has one thread if the count is odd; heights by threads
    before = 0
    for t in range(n_bands):
        bands[t].lo = ny * before // n_used
        before += 2 if 2 * t + 1 < n_used else 1
        bands[t].hi = ny * before // n_used
        bands[t].lo_kind = LH_F_GRID if t == 0 else LH_F_BAND
        bands[t].hi_kind = LH_F_GRID if t == n_bands - 1 else LH_F_BAND
        bands[t].done = 0

    cdef int tid, role
    cdef Py_ssize_t b0, b1
    cdef int k0, k1, s0, s1
    tid = role = k0 = k1 = s0 = s1 = 0
    b0 = b1 = 0
    # two threads, one tile each, split where the caller says (it balances them from thread_seconds)
    cdef Py_ssize_t cut = <Py_ssize_t> (split * ny + 0.5)
    cdef int halves = n_used == 2 and n_bands == 1 and 0.0 < split < 1.0 and 0 < cut < ny
    cdef double[2] halves_done
    cdef double[16] seconds
    cdef double started
    cdef int[2] pin_to
    cdef int pinned = 0
    cdef cpu_set_t[2] saved  # each pinned thread's own CPU mask, restored after its tile
    pin_to[0] = pin_to[1] = -1
    if halves and pin is not None and len(pin) >= 2:
        pin_to[0], pin_to[1] = int(pin[0]), int(pin[1])
    halves_done[0] = halves_done[1] = 0.0
    started = 0.0
    for t in range(16):
        seconds[t] = 0.0
    try:
        with nogil, parallel(num_threads=n_used):
            tid = threadid()
            role = tid % 2
            b0 = b1 = 0
            k0 = k1 = s0 = s1 = 0
            started = lh_now()
            pinned = 0
            if halves and tid < 2:
                pinned = lh_pin(pin_to[tid], &saved[tid])
                workers[tid].save_lo = workers[tid].save_hi = 0
                if tid == 0 and _geometry(&c, &workers[0], 0, LH_L_GRID, cut, LH_U_AHEAD):
                    _run_tile(&c, &workers[0])
                if tid == 1 and _geometry(&c, &workers[1], cut, LH_L_CONE, ny, LH_U_GRID):
                    _run_tile(&c, &workers[1])
                halves_done[tid] = 1.0
                if pinned:
                    lh_unpin(&saved[tid])
            elif tid < n_used:
                while lh_claim(&bands[tid // 2], role, width, last_rows, &b0, &k0, &s0, &b1, &k1, &s1):
                    workers[tid].save_lo = s0
                    workers[tid].save_hi = s1
                    if _geometry(&c, &workers[tid], b0, k0, b1, k1):
                        _run_tile(&c, &workers[tid])
            if tid < 16:
                seconds[tid] = lh_now() - started
        if halves:  # a half whose thread never started (OpenMP gave fewer): do it here
            if halves_done[0] == 0.0 and _geometry(&c, &workers[0], 0, LH_L_GRID, cut, LH_U_AHEAD):
                _run_tile(&c, &workers[0])
            if halves_done[1] == 0.0 and _geometry(&c, &workers[1], cut, LH_L_CONE, ny, LH_U_GRID):
                _run_tile(&c, &workers[1])
            for t in range(n_bands):
                bands[t].done = 1
        # bands whose threads never started (OpenMP gave fewer): finish them here
        for t in range(n_bands):
            while lh_claim(&bands[t], 0, width, last_rows, &b0, &k0, &s0, &b1, &k1, &s1):
                workers[2 * t].save_lo = s0
                workers[2 * t].save_hi = s1
                if _geometry(&c, &workers[2 * t], b0, k0, b1, k1):
                    _run_tile(&c, &workers[2 * t])
        perf_k = vessel_k = boundary_k = 0.0
        error = 0
        for t in range(n_used):
            perf_k += workers[t].sums.perf_k
            vessel_k += workers[t].sums.vessel_k
            boundary_k += workers[t].sums.boundary_k
            error = max(error, workers[t].error)
    finally:
        free(workers)
        free(bands)
    if thread_seconds is not None:
        for t in range(thread_seconds.shape[0]):
            thread_seconds[t] = seconds[t] if t < n_used and t < 16 else 0.0
    if error:
        raise RuntimeError(f"bioheat tiling error {error} (a bug): grid {(nx, ny, nz)}, steps {steps}, threads {threads}")
    # perfusion stops where the call coagulated the tissue (after all steps, as in the numpy twin)
    cdef Py_ssize_t i, j, k, coagulated = 0
    cdef double t_new
    with nogil:
        for i in range(nx):
            for j in range(ny):
                if c.coag_rows[i * ny + j]:
                    for k in range(nz):
                        t_new = t_out[i + 1, j + 1, k + 1]
                        if (t_new > arrhenius_min_c and not vessel[i, j, k] and omega[i, j, k] >= coagulated_omega
                                and perfusion_1_s[i, j, k] != 0.0):
                            perfusion_1_s[i, j, k] = 0.0
                            coagulated += 1
    return perf_k, vessel_k, boundary_k * a, coagulated

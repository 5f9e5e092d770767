"""Reference numpy twin of cython_ext/bioheat.pyx: the same steps, written as plain array slicing.

This is the "straightforward numpy stencil": one full-grid pass per step, no blocking, no
threads. The tests hold the compiled kernel to it; the benchmark measures the two in one run.
"""

from __future__ import annotations

import time

import numpy as np

KELVIN = 273.15
LN2 = float(np.log(2.0))
LN4 = float(np.log(4.0))
CEM_CAP_C = 300.0  # CEM43 means nothing this hot; the cap keeps R**(43-T) finite


def sweep(
    t_in: np.ndarray,
    t_out: np.ndarray,
    ring: np.ndarray | None,
    heat_k_s: np.ndarray,
    perfusion_1_s: np.ndarray,
    vessel: np.ndarray,
    vessel_rows: np.ndarray,
    omega: np.ndarray,
    cem43_min: np.ndarray,
    peak_c: np.ndarray,
    *,
    steps: int,
    a: float,
    dt_s: float,
    body_c: float,
    arrhenius_min_c: float,
    cem_min_c: float,
    ln_a: float,
    ea_over_r: float,
    coagulated_omega: float = 1.0,
    threads: int = 1,
    tile_rows: int = 0,
    split: float = 0.0,
    thread_seconds: np.ndarray | None = None,
    pin: tuple[int, ...] | None = None,
) -> tuple[float, float, float, int]:
    """Same contract as cython_ext.bioheat.sweep (ring, vessel_rows, threads, tile_rows, split and
    pin are unused; thread_seconds gets the call's wall time as thread 0's)."""
    del ring, vessel_rows, threads, tile_rows, split, pin
    started = time.perf_counter()
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t = t_in.copy()
    inner = (slice(1, -1),) * 3
    is_vessel = vessel.astype(bool)
    perf_k = vessel_k = boundary_k = 0.0
    for _ in range(steps):
        c = t[inner]
        lap = (
            t[:-2, 1:-1, 1:-1] + t[2:, 1:-1, 1:-1]
            + t[1:-1, :-2, 1:-1] + t[1:-1, 2:, 1:-1]
            + t[1:-1, 1:-1, :-2] + t[1:-1, 1:-1, 2:]
        )
        q = dt_s * perfusion_1_s * (c - body_c)
        new = (1.0 - 6.0 * a) * c + a * lap + dt_s * heat_k_s - q
        perf_k += float(q.sum())
        excess = c - body_c
        boundary_k += a * float(
            excess[0].sum() + excess[-1].sum() + excess[:, 0].sum() + excess[:, -1].sum()
            + excess[:, :, 0].sum() + excess[:, :, -1].sum()
        )
        vessel_k += float((new[is_vessel] - body_c).sum())
        new[is_vessel] = body_c
        t[inner] = new
    new = t[inner]
    dt_damage = dt_s * steps
    hot = (~is_vessel) & (new > min(arrhenius_min_c, cem_min_c))
    np.maximum(peak_c, np.where(hot, new, peak_c), out=peak_c)
    warm = hot & (new > cem_min_c)
    tw = np.minimum(new[warm], CEM_CAP_C)
    cem43_min[warm] += dt_damage / 60.0 * np.exp((tw - 43.0) * np.where(tw >= 43.0, LN2, LN4))
    damaging = hot & (new > arrhenius_min_c)
    omega[damaging] += dt_damage * np.exp(ln_a - ea_over_r / (new[damaging] + KELVIN))
    newly = damaging & (omega >= coagulated_omega) & (perfusion_1_s != 0.0)
    perfusion_1_s[newly] = 0.0
    t_out[inner] = new
    if thread_seconds is not None:
        thread_seconds[:] = 0.0
        thread_seconds[0] = time.perf_counter() - started
    return perf_k, vessel_k, boundary_k, int(newly.sum())

"""Random fields for the bioheat kernel tests (compiled kernel against its numpy twin)."""

from __future__ import annotations

import numpy as np


def random_fields(seed: int, shape: tuple[int, int, int], *, t_max: float, vessel_fraction: float):
    """(t with its 1-voxel border, heat, perfusion, vessel, vessel rows, omega, CEM43, peak) for `shape`."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    t = np.full((nx + 2, ny + 2, nz + 2), 37.0)
    t[1:-1, 1:-1, 1:-1] = 37.0 + rng.random(shape) * (t_max - 37.0)
    heat = rng.random(shape) * 3.0
    perf = rng.random(shape) * 0.02
    vessel = (rng.random(shape) < vessel_fraction).astype(np.uint8)
    perf[vessel == 1] = 0.0
    rows = np.ascontiguousarray(vessel.any(axis=2), dtype=np.uint8)
    omega = rng.random(shape) * rng.choice([0.0, 0.5, 2.0])
    cem = rng.random(shape) * 10.0
    peak = np.full(shape, 37.0)
    return t, heat, perf, vessel, rows, omega, cem, peak

"""Where a fibre's light is absorbed: per-voxel fractions of its power (each basis sums to 1).

Diffuse emission (diffusion approximation, isotropic point source in an infinite medium):
    fluence  phi(r) = P mu_eff^2 / (4 pi mu_a r) exp(-mu_eff r)
    absorbed Q(r)   = mu_a phi(r) = P mu_eff^2 exp(-mu_eff r) / (4 pi r),   integral over space = P.
A bare fibre sends its light forward; the isotropic source is placed one transport mean free path
1/(mu_a + mu_s') ahead of the tip along the fibre, the usual stand-in for a collimated source in
diffusion theory (Farrell, Patterson & Wilson 1992). Q is averaged over each voxel by sub-sampling
(finely near the 1/r singularity), and the basis is normalised so the deposit sums to P; the
fraction the infinite-medium solution would put outside the grid is reported as `escaped`.

Char: a ball of radius R around the tip, uniform (the carbonised crust absorbs at the tip).
Point heat: the power as heat at one point, split trilinearly (verification against Green's functions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .grid import Grid

# Sub-samples per axis for a voxel, by the distance of its centre from the source (in voxels):
# the 1/r exp(-mu r) deposit is smooth far away and singular at the source.
SUBSAMPLES_NEAR = 10  # even, so no sample falls on a source at a voxel centre
SUBSAMPLES_MID = 3
NEAR_RADIUS_VOXELS = 3.0
MID_RADIUS_VOXELS = 10.0
BALL_SUBSAMPLES = 8
MAX_SAMPLES_PER_BATCH = 2_000_000


@dataclass(frozen=True)
class DenseBasis:
    fraction: np.ndarray  # (nx, ny, nz), sums to 1
    escaped: float  # fraction the infinite-medium deposit would put outside the grid (before normalising)


@dataclass(frozen=True)
class SparseBasis:
    index: np.ndarray  # flat voxel indices (unique)
    fraction: np.ndarray  # sums to 1


def _offsets(n: int, spacing: float) -> np.ndarray:
    """Sub-sample offsets from a voxel centre: an n x n x n midpoint lattice, shape (n^3, 3)."""
    s = (np.arange(n) + 0.5) / n - 0.5
    g = np.stack(np.meshgrid(s, s, s, indexing="ij"), axis=-1).reshape(-1, 3)
    return g * spacing


def _cell_average(centres: np.ndarray, offsets: np.ndarray, fn) -> np.ndarray:
    """Mean of fn(points) over each centre + offsets, in batches to bound memory."""
    out = np.empty(len(centres))
    per = max(1, MAX_SAMPLES_PER_BATCH // len(offsets))
    for start in range(0, len(centres), per):
        c = centres[start : start + per]
        pts = c[:, None, :] + offsets[None, :, :]
        out[start : start + per] = fn(pts).mean(axis=1)
    return out


def diffuse_basis(grid: Grid, *, source_mm: Sequence[float], mu_eff_1_mm: float) -> DenseBasis:
    """Cell-averaged diffusion-approximation deposit of 1 W centred at source_mm."""
    mu = mu_eff_1_mm
    h = grid.spacing_mm
    src = np.asarray(source_mm, dtype=float)

    def density(points: np.ndarray) -> np.ndarray:  # per mm^3, for 1 W
        r = np.sqrt(((points - src) ** 2).sum(axis=-1))
        r = np.maximum(r, 1e-9 * h)
        return mu * mu * np.exp(-mu * r) / (4.0 * math.pi * r)

    r2 = grid.squared_distance_to_point(src)
    r = np.sqrt(r2)
    centre_r = np.maximum(r, 1e-9 * h)
    fraction = mu * mu * np.exp(-mu * centre_r) / (4.0 * math.pi * centre_r) * h**3
    for n, r_max in ((SUBSAMPLES_MID, MID_RADIUS_VOXELS * h), (SUBSAMPLES_NEAR, NEAR_RADIUS_VOXELS * h)):
        sel = np.nonzero(r < r_max)
        if len(sel[0]) == 0:
            continue
        centres = np.stack([grid.axis_mm(a)[sel[a]] for a in range(3)], axis=-1)
        fraction[sel] = _cell_average(centres, _offsets(n, h), density) * h**3
    total = float(fraction.sum())
    fraction /= total
    return DenseBasis(fraction=fraction, escaped=max(0.0, 1.0 - total))


def ball_basis(grid: Grid, *, center_mm: Sequence[float], radius_mm: float) -> SparseBasis:
    """A uniform ball, as the fraction of its volume in each voxel (sub-sampled)."""
    h = grid.spacing_mm
    c = np.asarray(center_mm, dtype=float)
    lo = grid.index_of(c - radius_mm - h)
    hi = grid.index_of(c + radius_mm + h)
    ii, jj, kk = np.meshgrid(*(np.arange(lo[a], hi[a] + 1) for a in range(3)), indexing="ij")
    idx = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=-1)
    centres = np.asarray(grid.lo_mm) + (idx + 0.5) * h
    n = max(BALL_SUBSAMPLES, math.ceil(4 * h / radius_mm))  # keep several samples across the ball
    inside = _cell_average(centres, _offsets(n, h), lambda p: (((p - c) ** 2).sum(axis=-1) <= radius_mm**2).astype(float))
    keep = inside > 0
    if not keep.any():  # smaller than the sampling: all of it in the voxel holding the centre
        return SparseBasis(index=np.array([np.ravel_multi_index(grid.index_of(c), grid.shape)]), fraction=np.array([1.0]))
    flat = np.ravel_multi_index(tuple(idx[keep].T), grid.shape)
    w = inside[keep]
    return SparseBasis(index=flat, fraction=w / w.sum())


def point_basis(grid: Grid, *, point_mm: Sequence[float]) -> SparseBasis:
    """A point: trilinear weights on the 8 nearest voxel centres (one voxel if it sits on a centre)."""
    idx, w = grid.trilinear_stencil(np.asarray([point_mm], dtype=float), padded=False)
    flat: dict[int, float] = {}
    for i, wi in zip(idx[0], w[0]):
        if wi > 0:
            flat[int(i)] = flat.get(int(i), 0.0) + float(wi)
    index = np.array(sorted(flat), dtype=np.int64)
    fraction = np.array([flat[i] for i in index])
    return SparseBasis(index=index, fraction=fraction / fraction.sum())


def escaped_fraction_bound(grid: Grid, *, source_mm: Sequence[float], mu_eff_1_mm: float) -> float:
    """Upper bound of the deposit beyond the nearest grid face: (1 + mu d) exp(-mu d)."""
    d = min(min(p - lo, hi - p) for p, lo, hi in zip(source_mm, grid.lo_mm, grid.hi_mm))
    d = max(d, 0.0)
    x = mu_eff_1_mm * d
    return (1.0 + x) * math.exp(-x)

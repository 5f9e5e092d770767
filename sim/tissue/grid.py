"""The regular voxel grid: index <-> position in mm, masks of simple shapes, trilinear sampling.

Voxel (i, j, k) is centred at lo + (i + 0.5, j + 0.5, k + 0.5) * spacing; arrays are indexed
[x, y, z]. Temperature arrays carry one ghost layer (padded index = index + 1) that holds the
Dirichlet boundary temperature, half a voxel outside the grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Vec3 = tuple[float, float, float]


def unit(v: Sequence[float]) -> Vec3:
    n = math.sqrt(sum(c * c for c in v))
    return (v[0] / n, v[1] / n, v[2] / n)


def perpendicular(d: Vec3) -> Vec3:
    """A unit vector perpendicular to d (the axis least aligned with d, made orthogonal)."""
    axis = min(range(3), key=lambda i: abs(d[i]))
    e = [0.0, 0.0, 0.0]
    e[axis] = 1.0
    dot = sum(e[i] * d[i] for i in range(3))
    return unit([e[i] - dot * d[i] for i in range(3)])


def cross(a: Sequence[float], b: Sequence[float]) -> Vec3:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


@dataclass(frozen=True, kw_only=True)
class Grid:
    shape: tuple[int, int, int]
    spacing_mm: float
    center_mm: Vec3 = (0.0, 0.0, 0.0)

    @classmethod
    def covering(cls, *, size_mm: Sequence[float], spacing_mm: float, center_mm: Sequence[float] = (0.0, 0.0, 0.0)) -> Grid:
        shape = tuple(max(1, round(s / spacing_mm)) for s in size_mm)
        return cls(shape=shape, spacing_mm=float(spacing_mm), center_mm=tuple(float(c) for c in center_mm))  # type: ignore[arg-type]

    @property
    def voxel_count(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    @property
    def voxel_volume_mm3(self) -> float:
        return self.spacing_mm**3

    @property
    def size_mm(self) -> Vec3:
        return tuple(n * self.spacing_mm for n in self.shape)  # type: ignore[return-value]

    @property
    def lo_mm(self) -> Vec3:
        return tuple(c - n * self.spacing_mm / 2.0 for c, n in zip(self.center_mm, self.shape))  # type: ignore[return-value]

    @property
    def hi_mm(self) -> Vec3:
        return tuple(c + n * self.spacing_mm / 2.0 for c, n in zip(self.center_mm, self.shape))  # type: ignore[return-value]

    def axis_mm(self, axis: int) -> np.ndarray:
        """Voxel-centre coordinates along one axis."""
        return self.lo_mm[axis] + (np.arange(self.shape[axis]) + 0.5) * self.spacing_mm

    def contains(self, point_mm: Sequence[float]) -> bool:
        return all(lo <= p <= hi for p, lo, hi in zip(point_mm, self.lo_mm, self.hi_mm))

    def index_of(self, point_mm: Sequence[float]) -> tuple[int, int, int]:
        """The voxel that contains the point (clamped to the grid)."""
        return tuple(
            min(n - 1, max(0, math.floor((p - lo) / self.spacing_mm))) for p, lo, n in zip(point_mm, self.lo_mm, self.shape)
        )  # type: ignore[return-value]

    def center_of(self, index: Sequence[int]) -> Vec3:
        return tuple(lo + (i + 0.5) * self.spacing_mm for lo, i in zip(self.lo_mm, index))  # type: ignore[return-value]

    def squared_distance_to_point(self, point_mm: Sequence[float]) -> np.ndarray:
        x, y, z = (self.axis_mm(a) - point_mm[a] for a in range(3))
        return x[:, None, None] ** 2 + y[None, :, None] ** 2 + z[None, None, :] ** 2

    def sphere_mask(self, center_mm: Sequence[float], radius_mm: float) -> np.ndarray:
        return self.squared_distance_to_point(center_mm) <= radius_mm**2

    def cylinder_mask(self, *, point_mm: Sequence[float], direction: Sequence[float], radius_mm: float, length_mm: float | None = None) -> np.ndarray:
        """Voxel centres within radius of the axis (and within length/2 of point along it, if given)."""
        d = unit(direction)
        x, y, z = (self.axis_mm(a) - point_mm[a] for a in range(3))
        along = x[:, None, None] * d[0] + y[None, :, None] * d[1] + z[None, None, :] * d[2]
        r2 = x[:, None, None] ** 2 + y[None, :, None] ** 2 + z[None, None, :] ** 2 - along**2
        mask = r2 <= radius_mm**2
        if length_mm is not None:
            mask &= np.abs(along) <= length_mm / 2.0
        return mask

    # --- trilinear sampling ---------------------------------------------------------------------------

    def trilinear_stencil(self, points_mm: np.ndarray, *, padded: bool) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices (N, 8) and weights (N, 8) that interpolate a field at each point.

        padded=True addresses the ghost-padded temperature array, whose ghost cells (the boundary
        temperature) sit half a voxel outside the grid, so points up to the grid faces interpolate
        between the last voxel and the boundary. padded=False clamps to the outermost voxels.
        """
        pts = np.atleast_2d(np.asarray(points_mm, dtype=float))
        lo = np.asarray(self.lo_mm)
        shape = np.asarray(self.shape)
        u = (pts - lo) / self.spacing_mm - 0.5  # continuous voxel index
        if padded:
            u = u + 1.0
            limit = shape + 1  # last ghost index
            dims = shape + 2
        else:
            limit = shape - 1
            dims = shape
        u = np.clip(u, 0.0, limit)
        base = np.minimum(np.floor(u).astype(np.int64), np.maximum(limit - 1, 0))
        frac = u - base
        idx = np.empty((len(pts), 8), dtype=np.int64)
        w = np.empty((len(pts), 8))
        corner = 0
        for di in (0, 1):
            for dj in (0, 1):
                for dk in (0, 1):
                    ii = np.minimum(base[:, 0] + di, dims[0] - 1)
                    jj = np.minimum(base[:, 1] + dj, dims[1] - 1)
                    kk = np.minimum(base[:, 2] + dk, dims[2] - 1)
                    idx[:, corner] = (ii * dims[1] + jj) * dims[2] + kk
                    w[:, corner] = (
                        (frac[:, 0] if di else 1.0 - frac[:, 0])
                        * (frac[:, 1] if dj else 1.0 - frac[:, 1])
                        * (frac[:, 2] if dk else 1.0 - frac[:, 2])
                    )
                    corner += 1
        return idx, w

    def sample(self, field: np.ndarray, points_mm: np.ndarray, *, padded: bool = False) -> np.ndarray:
        idx, w = self.trilinear_stencil(points_mm, padded=padded)
        return (field.reshape(-1)[idx] * w).sum(axis=1)

"""Ablation metrics after a run: what was coagulated, where, and what got too hot.

Extents are measured on lines through the lesion: Omega is interpolated trilinearly in
log10(Omega) (Omega falls by decades per millimetre at the lesion edge, so its logarithm is the
smooth quantity) and the Omega = 1 crossing is found between samples a quarter voxel apart.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .grid import cross, perpendicular
from .model import EnergyBalance, TissueModel

LOG_OMEGA_FLOOR = -12.0  # log10 Omega where there is no damage at all (below the Arrhenius threshold)
ACROSS_DIRECTIONS = 8  # lines through the lesion centre, perpendicular to the fibre, 22.5 degrees apart
SAMPLES_PER_VOXEL = 4


@dataclass(frozen=True, kw_only=True)
class FibreMetrics:
    channel: int
    power_w: float
    along_mm: float  # coagulated length along the fibre axis, through the light's source point
    across_mm: float  # mean coagulated diameter perpendicular to the fibre, through the lesion's middle
    across_min_mm: float
    across_max_mm: float
    tip_max_temp_c: float
    char_fraction: float


@dataclass(frozen=True, kw_only=True)
class TumourMetrics:
    radius_mm: float
    margin_mm: float
    tumour_coagulated_fraction: float
    target_coagulated_fraction: float  # tumour plus margin
    target_volume_ml: float


@dataclass(frozen=True, kw_only=True)
class ProtectedMetrics:
    name: str
    max_temp_c: float | None  # None: the structure has no voxel at this grid
    max_cem43_min: float | None


@dataclass(frozen=True, kw_only=True)
class ProbeMetrics:
    channel: int
    name: str
    role: str
    final_temp_c: float
    max_temp_c: float


@dataclass(frozen=True, kw_only=True)
class AblationResult:
    scenario: str
    seconds: float
    grid_mm: float
    grid_shape: tuple[int, int, int]
    powers_w: dict[int, float]
    energy_j: float
    coagulated_volume_ml: float
    max_tip_temp_c: float
    fibres: tuple[FibreMetrics, ...]
    tumour: TumourMetrics | None
    protected: tuple[ProtectedMetrics, ...]
    probes: tuple[ProbeMetrics, ...]
    energy_balance: EnergyBalance
    light_escaped_fraction: float
    wall_s: float = 0.0
    performance: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["powers_w"] = {str(k): v for k, v in self.powers_w.items()}
        d["grid_shape"] = list(self.grid_shape)
        eb = self.energy_balance
        d["energy_balance"] = {**asdict(eb), "residual_j": eb.residual_j, "residual_fraction": eb.residual_fraction}
        return _rounded(d)

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def _rounded(value: Any) -> Any:
    """Round floats to 6 significant digits for a readable JSON (never NaN or inf)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


# --- lines through the lesion ----------------------------------------------------------------------


def log_omega(model: TissueModel) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.maximum(np.log10(model.omega), LOG_OMEGA_FLOOR)


def coagulated_run(model: TissueModel, point_mm: Any, direction: Any, *, logw: np.ndarray | None = None) -> tuple[float, float]:
    """(s_minus, s_plus): how far the coagulated region reaches from point_mm along -direction and
    +direction, following it continuously from the point. (0, 0) if the point is not coagulated."""
    grid = model.grid
    logw = log_omega(model) if logw is None else logw
    p = np.asarray(point_mm, dtype=float)
    d = np.asarray(direction, dtype=float)
    d = d / np.linalg.norm(d)
    step = grid.spacing_mm / SAMPLES_PER_VOXEL
    reach = float(np.linalg.norm(np.asarray(grid.size_mm)))
    s = np.arange(-reach, reach + step / 2, step)
    pts = p + s[:, None] * d
    lo, hi = np.asarray(grid.lo_mm), np.asarray(grid.hi_mm)
    inside = np.all((pts >= lo) & (pts <= hi), axis=1)
    s, pts = s[inside], pts[inside]
    if len(s) == 0:
        return 0.0, 0.0
    values = grid.sample(logw, pts)
    centre = int(np.argmin(np.abs(s)))
    if values[centre] < 0.0:
        return 0.0, 0.0
    return -_edge(s[centre::-1], values[centre::-1]), _edge(s[centre:], values[centre:])


def _edge(s: np.ndarray, v: np.ndarray) -> float:
    """Distance |s| at which v first drops below 0 (log10 Omega = 0), interpolated; the end if never."""
    below = np.nonzero(v < 0.0)[0]
    if len(below) == 0:
        return float(abs(s[-1]))
    i = below[0]
    f = v[i - 1] / (v[i - 1] - v[i])
    return float(abs(s[i - 1] + f * (s[i] - s[i - 1])))


def fibre_extents(model: TissueModel, fibre_index: int, *, logw: np.ndarray | None = None) -> tuple[float, float, float, float]:
    """(along, across_mean, across_min, across_max) in mm for one fibre."""
    logw = log_omega(model) if logw is None else logw
    f = model.fibres[fibre_index]
    d = np.asarray(f.spec.direction)
    src = np.asarray(f.source_mm)
    s_minus, s_plus = coagulated_run(model, src, d, logw=logw)
    along = s_plus - s_minus
    if along <= 0.0:
        return 0.0, 0.0, 0.0, 0.0
    middle = src + 0.5 * (s_plus + s_minus) * d
    u = np.asarray(perpendicular(tuple(d)))
    v = np.asarray(cross(d, u))
    spans = []
    for k in range(ACROSS_DIRECTIONS):
        theta = math.pi * k / ACROSS_DIRECTIONS
        a, b = coagulated_run(model, middle, math.cos(theta) * u + math.sin(theta) * v, logw=logw)
        spans.append(b - a)
    return along, float(np.mean(spans)), float(np.min(spans)), float(np.max(spans))


def equivalent_diameter_mm(volume_mm3: float) -> float:
    return (6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0)


# --- everything -----------------------------------------------------------------------------------


def ablation_result(model: TissueModel, *, powers_w: dict[int, float], seconds: float, wall_s: float = 0.0) -> AblationResult:
    grid, scenario = model.grid, model.scenario
    coag = model.coagulated
    dv = grid.voxel_volume_mm3
    logw = log_omega(model)
    fibres = []
    for i, f in enumerate(model.fibres):
        along, across, a_min, a_max = fibre_extents(model, i, logw=logw)
        fibres.append(
            FibreMetrics(
                channel=f.spec.channel,
                power_w=powers_w.get(f.spec.channel, 0.0),
                along_mm=along,
                across_mm=across,
                across_min_mm=a_min,
                across_max_mm=a_max,
                tip_max_temp_c=f.tip_max_c,
                char_fraction=f.char,
            )
        )
    tumour = None
    if scenario.tumour is not None:
        t = scenario.tumour
        in_tumour = grid.sphere_mask(t.center_mm, t.radius_mm)
        in_target = grid.sphere_mask(t.center_mm, t.target_radius_mm)
        tumour = TumourMetrics(
            radius_mm=t.radius_mm,
            margin_mm=t.margin_mm,
            tumour_coagulated_fraction=_fraction(coag, in_tumour),
            target_coagulated_fraction=_fraction(coag, in_target),
            target_volume_ml=float(in_target.sum()) * dv / 1000.0,
        )
    max_t = model.protected_max_temp_c()
    max_cem = model.protected_max_cem43_min()
    protected = tuple(
        ProtectedMetrics(name=s.name, max_temp_c=_finite(max_t[s.name]), max_cem43_min=_finite(max_cem[s.name])) for s in scenario.protected
    )
    final = model.probe_temperature_c()
    probes = tuple(
        ProbeMetrics(channel=p.channel, name=p.name, role=p.role, final_temp_c=float(final[p.channel] or 0.0), max_temp_c=model.probe_max_c[i])
        for i, p in enumerate(scenario.probes)
    )
    eb = model.energy_balance()
    performance: dict[str, float] = {}
    if wall_s > 0:
        performance = {
            "real_time_factor": seconds / wall_s,
            "mvoxel_updates_per_s": model.voxel_updates / wall_s / 1e6,
            "threads": float(model.threads),
            "time_step_s": model.stable_dt_s,
        }
    return AblationResult(
        scenario=scenario.name,
        seconds=seconds,
        grid_mm=grid.spacing_mm,
        grid_shape=grid.shape,
        powers_w=dict(powers_w),
        energy_j=eb.in_j,
        coagulated_volume_ml=float(coag.sum()) * dv / 1000.0,
        max_tip_temp_c=max(model.tip_max_temp_c, default=model.props.body_temp_c),
        fibres=tuple(fibres),
        tumour=tumour,
        protected=protected,
        probes=probes,
        energy_balance=eb,
        light_escaped_fraction=model.escaped_light_fraction,
        wall_s=wall_s,
        performance=performance,
    )


def tissue_truth(model: TissueModel) -> dict[str, Any]:
    """The patient's side of the simulator's ground truth (cheap enough for every bench `state`)."""
    scenario, grid = model.scenario, model.grid
    target = None
    if scenario.tumour is not None:
        t = scenario.tumour
        target = _fraction(model.coagulated, grid.sphere_mask(t.center_mm, t.target_radius_mm))
    return {
        "scenario": scenario.name,
        "time_s": round(model.time_s, 3),
        "pulled_back_mm": round(model.pulled_back_mm, 4),
        "pullback_remaining_mm": round(model.pullback_remaining_mm, 4),
        "tips_mm": {str(f.spec.channel): [round(v, 3) for v in f.spec.tip_mm] for f in model.fibres},
        "tip_max_temp_c": {str(f.spec.channel): round(f.tip_max_c, 2) for f in model.fibres},
        "char_fraction": {str(f.spec.channel): round(f.char, 4) for f in model.fibres},
        "probe_max_temp_c": {str(p.channel): round(m, 2) for p, m in zip(scenario.probes, model.probe_max_c)},
        "protected_max_temp_c": {k: _finite(v) for k, v in model.protected_max_temp_c().items()},
        "protected_max_cem43_min": {k: _finite(v) for k, v in model.protected_max_cem43_min().items()},
        "coagulated_ml": round(float(model.coagulated.sum()) * grid.voxel_volume_mm3 / 1000.0, 4),
        "target_coagulated_fraction": None if target is None else round(target, 5),
    }


def _fraction(coag: np.ndarray, mask: np.ndarray) -> float:
    n = int(mask.sum())
    return float((coag & mask).sum()) / n if n else 0.0


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None

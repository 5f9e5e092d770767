"""The patient: Pennes bioheat on a voxel grid, heated by the fibres' light, with thermal damage.

    rho c dT/dt = k lap(T) - w rho_b c_b (T - T_body) + Q_light

Explicit (FTCS) time stepping at a stable step; the compiled kernel (cython_ext.bioheat) fuses
conduction, perfusion, light, vessels and damage in one pass; cython_ext.bioheat_ref is its numpy
twin. The grid boundary is held at body temperature (Dirichlet, half a voxel outside the grid);
large vessels are voxels held at body temperature. TissueModel implements sim.thermal.ThermalModel.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .grid import Grid
from .light import DenseBasis, SparseBasis, ball_basis, diffuse_basis, point_basis
from .scenario import FT8_CHANNELS, LS4_CHANNELS, MAX_PULLBACK_MM, FibreSpec, ProbeSpec, Scenario, StructureSpec
from .threads import ThreadChooser

# Explicit stability: 6 a + dt w' <= 1 keeps every update a convex combination (no overshoot,
# a discrete maximum principle); a margin below it damps the checkerboard mode.
STABILITY_FRACTION = 0.9
# Damage, CEM43, peak temperature, char and protected-structure maxima are updated once per
# sweep; a sweep fuses up to MAX_STEPS_PER_SWEEP steps but spans at most DAMAGE_INTERVAL_S
# (the rectangle rule over 2.5 s: temperatures at the lesion edge move by well under 1 degC in it).
DAMAGE_INTERVAL_S = 2.5
MAX_STEPS_PER_SWEEP = 8
# Only re-sum the light field when a char fraction moved this much (the total power deposited is
# exact either way: the char and diffuse parts each sum to the fibre's power).
CHAR_REFRESH_STEP = 0.01
MAX_THREADS = 8
# A hand withdraws a fibre in seconds, not instantly: 10 mm in 10 s (our choice, docs/physics.md).
# A tip probe riding on it then sweeps the ~18 degC/mm gradient beside a charred tip at ~18 degC/s,
# inside what the FT-8's plausibility check accepts of a real probe.
PULLBACK_SPEED_MM_S = 1.0
# A tip probe rides on its fibre's introducer when it sits this close to the tip (it is pulled
# back with the fibre); other probes stay where they were placed.
TIP_PROBE_RIDES_WITHIN_MM = 5.0

KernelFn = Callable[..., tuple[float, float, float, int]]


def _kernel(name: str) -> KernelFn:
    if name == "compiled":
        from cython_ext.bioheat import sweep
    elif name == "numpy":
        from cython_ext.bioheat_ref import sweep
    else:
        raise ValueError(f"kernel must be 'compiled' or 'numpy', got {name!r}")
    return sweep


def _workspace_shape(kernel: str, shape: tuple[int, int, int], steps: int, threads: int) -> tuple[int, ...]:
    """The kernel's workspace (its `ring` argument) for sweeps of up to `steps` steps."""
    if kernel == "compiled":
        from cython_ext.bioheat import workspace_shape

        return tuple(workspace_shape(shape, steps, threads))
    _, ny, nz = shape
    return (max(steps - 1, 1), 3, ny + 2, nz + 2)


def default_threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, n))


@dataclass(frozen=True)
class EnergyBalance:
    """Joules since the start: what went in and where it is now."""

    in_j: float  # light (or heat) delivered at the fibre tips
    char_loss_j: float  # absorbed by char but lost to steam and the burning fibre tip (never heats tissue)
    stored_j: float  # rho c integral (T - T_body) dV
    perfusion_j: float  # carried off by capillary perfusion
    vessels_j: float  # taken by the large vessels (held at body temperature)
    boundary_j: float  # conducted out through the grid boundary

    @property
    def residual_j(self) -> float:
        return self.in_j - self.char_loss_j - self.stored_j - self.perfusion_j - self.vessels_j - self.boundary_j

    @property
    def residual_fraction(self) -> float:
        return self.residual_j / self.in_j if self.in_j else 0.0


def _back(point_mm: Sequence[float], direction: Sequence[float], distance_mm: float) -> tuple[float, float, float]:
    x, y, z = (p - distance_mm * d for p, d in zip(point_mm, direction))
    return (x, y, z)


def _fmt(point_mm: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in point_mm) + ")"


def _riding_fibre(probe: ProbeSpec, fibres: Sequence[_Fibre]) -> _Fibre | None:
    best = min(fibres, key=lambda f: math.dist(f.spec.tip_mm, probe.position_mm), default=None)
    if best is None or math.dist(best.spec.tip_mm, probe.position_mm) > TIP_PROBE_RIDES_WITHIN_MM:
        return None
    return best


class _Fibre:
    def __init__(self, spec: FibreSpec, model: TissueModel) -> None:
        self._place(spec, model)
        self.char = 0.0  # carbonised fraction of the tip, 0..1, never decreases
        self.tip_max_c = model.props.body_temp_c

    def place_light(self, model: TissueModel) -> None:
        """Light bases for where the tip is now (after a pull-back); char and tip maximum stay."""
        self._place(self.spec, model)

    def _place(self, spec: FibreSpec, model: TissueModel) -> None:
        self.spec = spec
        self.light_stale = False
        props, grid = model.props, model.grid
        self.source_mm = tuple(t + props.transport_mean_free_path_mm * d for t, d in zip(spec.tip_mm, spec.direction))
        self.point: SparseBasis | None = None
        self.diffuse: DenseBasis | None = None
        if spec.emission == "point_heat":
            self.point = point_basis(grid, point_mm=spec.tip_mm)
            self.source_mm = spec.tip_mm
        else:
            self.diffuse = diffuse_basis(grid, source_mm=self.source_mm, mu_eff_1_mm=props.mu_eff_1_mm)
        self.char_ball = ball_basis(grid, center_mm=spec.tip_mm, radius_mm=props.char_radius_mm)

    @property
    def escaped(self) -> float:
        return self.diffuse.escaped if self.diffuse is not None else 0.0


class TissueModel:
    """Liver with fibres, probes, vessels and protected structures, from a scenario."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        grid_mm: float | None = None,
        threads: int | None = None,
        max_dt_s: float | None = None,
        kernel: str = "compiled",
    ) -> None:
        self.scenario = scenario
        self.props = props = scenario.tissue
        self.grid = grid = scenario.grid.grid(grid_mm)
        self.threads = threads or default_threads()  # at most; the chooser picks 1 when that is faster
        self._chooser = ThreadChooser(self.threads)
        self._sweep = _kernel(kernel)
        self.kernel = kernel
        h_m = grid.spacing_mm / 1000.0
        self._alpha_over_h2 = props.diffusivity_m2_s / (h_m * h_m)
        self._voxel_heat_capacity_j_k = props.volumetric_heat_capacity_j_m3_k * h_m**3
        perf_rate = props.perfusion_rate_1_s
        self.stable_dt_s = STABILITY_FRACTION / (6.0 * self._alpha_over_h2 + perf_rate)
        self.preferred_dt_s = min(self.stable_dt_s, max_dt_s) if max_dt_s else self.stable_dt_s
        body = props.body_temp_c
        nx, ny, nz = grid.shape
        padded = (nx + 2, ny + 2, nz + 2)
        self._t = np.full(padded, body)
        self._t_next = np.full(padded, body)
        self._ring = np.full(_workspace_shape(kernel, grid.shape, MAX_STEPS_PER_SWEEP, self.threads), body)
        self._heat_k_s = np.zeros(grid.shape)
        self._scratch = np.empty(grid.shape)
        self.omega = np.zeros(grid.shape)
        self.cem43_min = np.zeros(grid.shape)
        self.peak_temp_c = np.full(grid.shape, body)
        self._vessel = np.zeros(grid.shape, dtype=np.uint8)
        for v in scenario.vessels:
            self._vessel |= grid.cylinder_mask(point_mm=v.point_mm, direction=v.direction, radius_mm=v.radius_mm, length_mm=v.length_mm)
        self._vessel_rows = np.ascontiguousarray(self._vessel.any(axis=2), dtype=np.uint8)
        self._perfusion = np.full(grid.shape, perf_rate)
        self._perfusion[self._vessel.astype(bool)] = 0.0  # blood in a vessel: held, not perfused
        self.fibres = [_Fibre(spec, self) for spec in scenario.fibres]
        self._probe_channels = [p.channel for p in scenario.probes]
        self.probe_max_c = [props.body_temp_c] * len(scenario.probes)  # scenario probe order
        self._place_stencils()
        self.pulled_back_mm = 0.0
        self.pullback_remaining_mm = 0.0
        self._riders: dict[int, int] = {}  # tip probe channel -> the LS-4 channel of the fibre it rides on
        self._protected = [_Protected(s, grid) for s in scenario.protected]
        self._applied: tuple[tuple[float, float], ...] | None = None
        self._powers_w = (0.0,) * LS4_CHANNELS
        self.time_s = 0.0
        self._in_j = self._char_loss_j = self._perfusion_j = self._vessels_j = self._boundary_j = 0.0
        self._char_loss_w = 0.0
        self.sweeps = 0
        self.voxel_updates = 0

    # --- fields --------------------------------------------------------------------------------------

    @property
    def temperature_c(self) -> np.ndarray:
        """Tissue temperature now, shape grid.shape (a view: do not write)."""
        return self._t[1:-1, 1:-1, 1:-1]

    @property
    def coagulated(self) -> np.ndarray:
        return self.omega >= 1.0

    @property
    def vessel_mask(self) -> np.ndarray:
        return self._vessel.astype(bool)

    @property
    def heat_w_m3(self) -> np.ndarray:
        """The light absorbed now, W/m3."""
        return self._heat_k_s * self.props.volumetric_heat_capacity_j_m3_k

    @property
    def escaped_light_fraction(self) -> float:
        """Worst fibre: the share of its light the infinite-medium solution puts beyond the grid (redistributed)."""
        return max((f.escaped for f in self.fibres), default=0.0)

    # --- ThermalModel ------------------------------------------------------------------------------

    def step(self, dt_s: float, tip_power_w: Sequence[float]) -> None:
        """Advance dt_s with the mean optical power (W) at each LS-4 channel's tip."""
        if dt_s <= 0.0:
            return
        if self.pullback_remaining_mm > 0.0:
            self._advance_pullback(dt_s)
        powers = tuple(max(0.0, float(p)) for p in list(tip_power_w)[:LS4_CHANNELS]) + (0.0,) * max(0, LS4_CHANNELS - len(tip_power_w))
        self._powers_w = powers
        n = max(1, math.ceil(dt_s / self.stable_dt_s - 1e-9))
        h = dt_s / n
        a = self._alpha_over_h2 * h
        block = max(1, min(MAX_STEPS_PER_SWEEP, int(DAMAGE_INTERVAL_S / h + 1e-9)))
        self._refresh_heat()
        p_in = sum(powers[f.spec.channel] for f in self.fibres)
        props = self.props
        done = 0
        while done < n:
            m = min(block, n - done)
            threads = self._chooser.next()
            started = time.perf_counter()
            perf_k, vessel_k, boundary_k, _ = self._sweep(
                self._t, self._t_next, self._ring, self._heat_k_s, self._perfusion, self._vessel, self._vessel_rows,
                self.omega, self.cem43_min, self.peak_temp_c,
                steps=m, a=a, dt_s=h, body_c=props.body_temp_c,
                arrhenius_min_c=props.arrhenius_min_temp_c, cem_min_c=props.cem_min_temp_c,
                ln_a=math.log(props.arrhenius_a_1_s), ea_over_r=props.arrhenius_ea_over_r_k,
                coagulated_omega=1.0 if props.perfusion_stops_when_coagulated else math.inf,
                threads=threads, split=self._chooser.split_for(threads), thread_seconds=self._chooser.thread_seconds,
                pin=self._chooser.pin,
            )  # fmt: skip
            self._chooser.record(threads, time.perf_counter() - started, m * self.grid.voxel_count)
            self._t, self._t_next = self._t_next, self._t
            c = self._voxel_heat_capacity_j_k
            self._in_j += p_in * m * h
            self._char_loss_j += self._char_loss_w * m * h
            self._perfusion_j += perf_k * c
            self._vessels_j += vessel_k * c
            self._boundary_j += boundary_k * c
            self.time_s += m * h
            self.sweeps += 1
            self.voxel_updates += m * self.grid.voxel_count
            done += m
            self._after_sweep(m * h)

    def probe_temperature_c(self) -> tuple[float | None, ...]:
        out: list[float | None] = [None] * FT8_CHANNELS
        for ch, v in zip(self._probe_channels, self._probe_values()):
            out[ch] = float(v)
        return tuple(out)

    def _probe_values(self) -> np.ndarray:
        if not self._probe_channels:
            return np.zeros(0)
        idx, w = self._probe_stencil
        return (self._t.reshape(-1)[idx] * w).sum(axis=1)

    # --- more state ----------------------------------------------------------------------------------

    def tip_temperature_c(self) -> list[float]:
        """Tissue temperature at each fibre's tip, in scenario fibre order."""
        idx, w = self._tip_stencil
        return [float(v) for v in (self._t.reshape(-1)[idx] * w).sum(axis=1)]

    @property
    def char_fraction(self) -> list[float]:
        return [f.char for f in self.fibres]

    @property
    def tip_max_temp_c(self) -> list[float]:
        return [f.tip_max_c for f in self.fibres]

    def protected_max_temp_c(self) -> dict[str, float]:
        return {p.spec.name: p.max_temp_c(self) for p in self._protected}

    def protected_max_cem43_min(self) -> dict[str, float]:
        return {p.spec.name: p.max_cem43(self) for p in self._protected}

    def energy_balance(self) -> EnergyBalance:
        stored = float((self.temperature_c - self.props.body_temp_c).sum()) * self._voxel_heat_capacity_j_k
        return EnergyBalance(in_j=self._in_j, char_loss_j=self._char_loss_j, stored_j=stored, perfusion_j=self._perfusion_j, vessels_j=self._vessels_j, boundary_j=self._boundary_j)

    def run(self, seconds: float, powers_w: Sequence[float], *, progress: Callable[[float], None] | None = None, chunk_s: float = 10.0) -> None:
        """Advance `seconds` at fixed powers, in chunks (progress(time_s) after each)."""
        end = self.time_s + seconds
        while end - self.time_s > 1e-9:
            self.step(min(chunk_s, end - self.time_s), powers_w)
            if progress is not None:
                progress(self.time_s)

    def truth(self) -> dict[str, object]:
        from .metrics import tissue_truth  # metrics reads the model; imported late to keep the module order simple

        return tissue_truth(self)

    def pull_back(self, distance_mm: float) -> None:
        """Begin withdrawing every fibre distance_mm along its axis (between illuminations).

        The fibres move at PULLBACK_SPEED_MM_S while the model steps (a hand pulls a fibre back
        in seconds, and a tip probe riding on it sweeps through the tissue it passes); the tissue
        keeps its temperature and damage; the char crust stays on the fibre end; a tip probe within
        TIP_PROBE_RIDES_WITHIN_MM of a tip moves with its fibre. ValueError (one line) if the
        distance is out of range, a tip would leave the grid or a pull-back is under way."""
        if self.pullback_remaining_mm > 0.0:
            raise ValueError(f"a pull-back is under way ({self.pullback_remaining_mm:.1f} mm to go)")
        if not 0.0 < distance_mm <= MAX_PULLBACK_MM:
            raise ValueError(f"pull-back distance must be in (0, {MAX_PULLBACK_MM:g}] mm, got {distance_mm:g}")
        for f in self.fibres:
            end = _back(f.spec.tip_mm, f.spec.direction, distance_mm)
            if not self.grid.contains(end):
                raise ValueError(f"pulling fibre {f.spec.channel} back {distance_mm:g} mm puts its tip at {_fmt(end)} mm, outside the grid")
        self._riders = {p.channel: rider.spec.channel for p in self.scenario.probes if p.role == "tip" and (rider := _riding_fibre(p, self.fibres)) is not None}
        self.pullback_remaining_mm = distance_mm

    @property
    def pullback_time_s(self) -> float:
        """Tissue time until the pull-back under way is complete."""
        return self.pullback_remaining_mm / PULLBACK_SPEED_MM_S

    def _advance_pullback(self, dt_s: float) -> None:
        step_mm = min(self.pullback_remaining_mm, PULLBACK_SPEED_MM_S * dt_s)
        direction = {f.spec.channel: f.spec.direction for f in self.fibres}
        specs = [replace(f.spec, tip_mm=_back(f.spec.tip_mm, f.spec.direction, step_mm)) for f in self.fibres]
        probes = tuple(
            replace(p, position_mm=_back(p.position_mm, direction[self._riders[p.channel]], step_mm)) if p.channel in self._riders else p
            for p in self.scenario.probes
        )
        for f, spec in zip(self.fibres, specs):
            f.spec = spec
            f.light_stale = True  # re-placed when it next shines (the laser is off while fibres move)
        self.scenario = replace(self.scenario, fibres=tuple(specs), probes=probes)
        self.pulled_back_mm += step_mm
        self.pullback_remaining_mm = max(0.0, self.pullback_remaining_mm - step_mm)
        if self.pullback_remaining_mm < 1e-9:
            self.pullback_remaining_mm = 0.0
        self._place_stencils()
        self._applied = None

    # --- internals ---------------------------------------------------------------------------------

    def _place_stencils(self) -> None:
        tips = np.asarray([f.spec.tip_mm for f in self.fibres], dtype=float)
        self._tip_stencil = self.grid.trilinear_stencil(tips, padded=True)
        if self.scenario.probes:
            self._probe_stencil = self.grid.trilinear_stencil(np.asarray([p.position_mm for p in self.scenario.probes]), padded=True)

    def _refresh_heat(self) -> None:
        """Re-sum the light field if any fibre's power changed or its char moved enough."""
        props = self.props
        wanted = tuple((self._powers_w[f.spec.channel], f.char) for f in self.fibres)
        if self._applied is not None and all(
            p == ap and abs(ch - ach) < CHAR_REFRESH_STEP and (ch == 0.0) == (ach == 0.0)
            for (p, ch), (ap, ach) in zip(wanted, self._applied)
        ):
            return
        heat = self._heat_k_s
        heat.fill(0.0)
        char_loss_w = 0.0
        flat = heat.reshape(-1)
        for f, (power, char) in zip(self.fibres, wanted):
            if power == 0.0:
                continue
            if f.light_stale:
                f.place_light(self)
            k_per_s = power / self._voxel_heat_capacity_j_k
            if f.point is not None:
                flat[f.point.index] += k_per_s * f.point.fraction
                continue
            assert f.diffuse is not None
            charred = props.char_absorbed_fraction_max * char
            if charred < 1.0:
                np.multiply(f.diffuse.fraction, k_per_s * (1.0 - charred), out=self._scratch)
                heat += self._scratch
            if charred > 0.0:
                kept = 1.0 - props.char_loss_fraction
                flat[f.char_ball.index] += k_per_s * charred * kept * f.char_ball.fraction
                char_loss_w += power * charred * props.char_loss_fraction
        self._applied = wanted
        self._char_loss_w = char_loss_w

    def _after_sweep(self, dt_s: float) -> None:
        props = self.props
        tips = self.tip_temperature_c()
        for f, t in zip(self.fibres, tips):
            f.tip_max_c = max(f.tip_max_c, t)
            if t >= props.char_onset_c and f.spec.emission == "diffuse":
                # irreversible: the crust grows while the tissue at the tip boils
                f.char += (1.0 - f.char) * (1.0 - math.exp(-dt_s / props.char_time_constant_s))
        for p in self._protected:
            p.sample(self)
        for i, v in enumerate(self._probe_values()):
            self.probe_max_c[i] = max(self.probe_max_c[i], float(v))
        self._refresh_heat()


class _Protected:
    def __init__(self, spec: StructureSpec, grid: Grid) -> None:
        self.spec = spec
        mask = spec.mask(grid)
        self.index = np.flatnonzero(mask)
        ii, jj, kk = np.nonzero(mask)
        nx, ny, nz = grid.shape
        self.padded_index = ((ii + 1) * (ny + 2) + (jj + 1)) * (nz + 2) + (kk + 1)
        self._max_c: float | None = None

    def sample(self, model: TissueModel) -> None:
        if len(self.padded_index):
            now = float(model._t.reshape(-1)[self.padded_index].max())
            self._max_c = now if self._max_c is None else max(self._max_c, now)

    def max_temp_c(self, model: TissueModel) -> float:
        if not len(self.index):
            return math.nan
        peak = float(model.peak_temp_c.reshape(-1)[self.index].max())
        sampled = self._max_c if self._max_c is not None else model.props.body_temp_c
        return max(peak, sampled)

    def max_cem43(self, model: TissueModel) -> float:
        if not len(self.index):
            return math.nan
        return float(model.cem43_min.reshape(-1)[self.index].max())

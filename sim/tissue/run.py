"""Open-loop runs: fixed powers for a fixed time, as fast as the physics allows (no Modbus).

With `tip_cap=TipCap(...)`, `simulate` instead emulates laserd's FIXED_POWER delivery under the
plan's tip temperature cap: each fibre at its plan power, lowered by the safety layer's
`tip_temp_backoff` law on its tip probe, each position ending when every fibre has delivered its
energy budget (docs/planning.md, "The tip cap").
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

import numpy as np

from safety.limits import DEFAULT_TIP_BACKOFF_MARGIN_C

from .metrics import AblationResult, ablation_result
from .model import TissueModel
from .scenario import LS4_CHANNELS, MAX_ILLUMINATIONS, Scenario, load_scenario

MAX_POWER_W = 10.0  # the LS-4's maximum per channel (protocol.ls4.MAX_CHANNEL_POWER_MW)
MAX_SECONDS = 3600.0  # tissue time of one run, illuminations and cool-down included
PROGRESS_CHUNK_S = 10.0

# --- laserd's delivery under the tip cap (TipCap) ------------------------------------------------------
# The emulated control step (_BackoffLaw): laserd decides every 100 ms on the FT-8's readings; the
# emulation decides from the model's tip-probe temperatures every MIN_CONTROL_STEP_S (laserd's
# cycle) to CONTROL_STEP_MAX_S of tissue time (TipCap.control_step_s), adaptively: near the
# back-off band the step starts at MIN_CONTROL_STEP_S, halves whenever a guarded tip probe moved
# more than STEP_TOL_C in one step and grows by STEP_GROWTH while they move less than a third of
# that; far below the band (APPROACH_BAND_C under the temperature where the ceiling starts to
# bite) it is up to OPEN_STEP_MAX_S, shortened so that the probe's present heating rate covers at
# most APPROACH_FRACTION of the way to that band. Pull-backs are stepped at MIN_CONTROL_STEP_S: a
# tip probe riding on its fibre sweeps steep gradients, and at the cap laserd trips.
# Measured (single_fibre, 3 W, 900 J, cap 95): 434.1 s on 1 mm, 472.0 s on 2 mm, against 433.9 and
# 472.0 s with every decision at 0.1 s; the real closed loop on 2 mm (tests/control_rig.py) took
# 472.0 s. A fixed 1 s step overshoots the cap when the tip chars (the probe climbs ~1.7 degC/s).
CONTROL_STEP_MAX_S = 4.0
MIN_CONTROL_STEP_S = 0.1
STEP_TOL_C = 0.1
STEP_GROWTH = 1.25
APPROACH_BAND_C = 10.0
APPROACH_FRACTION = 0.5
OPEN_STEP_MAX_S = 2.0
PULLBACK_STEP_NO_TRIP_S = 1.0  # pull-back steps when a probe at the cap does not trip (TipCap.trip_at_cap False)
# The longest laserd session a site may configure (controller.config.SESSION_DURATION_RANGE_S):
# the most tissue time one emulated session may take (its cool-down comes on top).
MAX_SESSION_S = 4 * 3600.0
# A budget counts as delivered within this (the safety layer itself stops a fibre within 0.06 J of it).
BUDGET_EPSILON_J = 1e-6


def tip_backoff_ceiling_w(temp_c: float, *, cap_c: float, margin_c: float, full_scale_w: float) -> float:
    """The most a fibre may emit with its tip probe at `temp_c`, by safety.supervisor's rule
    `tip_temp_backoff` (SafetySupervisor._temperature_limits): within `margin_c` below the cap the
    ceiling falls linearly from the channel's full scale (its max_power_mw: the plan fibre's
    max_power_w, else the site's max_channel_power_w) to 0 at the cap, in whole mW; inf below the
    band; 0 at or above the cap, where laserd trips (rule `tip_temp_cap`)."""
    if temp_c >= cap_c:
        return 0.0
    if temp_c > cap_c - margin_c:
        return int(round(full_scale_w * 1000.0) * (cap_c - temp_c) / margin_c) / 1000.0
    return math.inf


@dataclass(frozen=True, kw_only=True)
class TipCap:
    """laserd's FIXED_POWER delivery under a plan's tip cap, for `simulate(..., tip_cap=...)`.

    Every fibre shines at its power from `powers_w` unless the back-off law on its tip probe
    allows less; a fibre stops when it has delivered `energy_budget_j` in this position; a position
    ends when every fibre has stopped (laserd's `all_fibres_at_budget` per illumination) or after
    `position_time_cap_s` (the delivery is then not complete, the next position follows); the
    pull-back takes the model's hand time with the light off; the session stops (light off, no
    further position) at `session_limit_s` of tissue time from the first light, like laserd's
    `session_time` trip, or at once if a tip probe reaches the cap (laserd's `tip_temp_cap` trip)."""

    cap_c: float
    energy_budget_j: float  # per fibre per position
    margin_c: float = DEFAULT_TIP_BACKOFF_MARGIN_C  # safety.limits: the plan cannot lower it
    full_scale_w: float = MAX_POWER_W  # the back-off law's full scale (see tip_backoff_ceiling_w)
    tip_probes: Mapping[int, int] | None = None  # FT-8 probe -> LS-4 channel it guards; None: each "tip" probe its nearest fibre
    position_time_cap_s: float | None = None
    session_limit_s: float | None = None
    control_step_s: float = CONTROL_STEP_MAX_S  # the longest control step (see CONTROL_STEP_MAX_S)
    step_tol_c: float = STEP_TOL_C  # the step halves when a guarded tip probe moves more than this in one
    # A tip probe at the cap trips laserd (the session ends). On a coarse grid (2-3 mm voxels) a
    # probe 2 mm from a 300 degC charred tip is interpolated across the tip's voxel, and a pull-back
    # moving it 0.25 mm can lift it over the cap for a moment: False records that (cap_reached_s)
    # and goes on, the fibre held at 0 W while its probe is at the cap.
    trip_at_cap: bool = True

    def check(self) -> None:
        if not math.isfinite(self.cap_c):
            raise ValueError(f"tip cap: expected a temperature, got {self.cap_c:g}")
        if not (math.isfinite(self.energy_budget_j) and self.energy_budget_j > 0.0):
            raise ValueError(f"tip cap: energy budget per fibre per position must be above 0 J, got {self.energy_budget_j:g}")
        if not (math.isfinite(self.margin_c) and self.margin_c > 0.0):
            raise ValueError(f"tip cap: back-off margin must be above 0 degC, got {self.margin_c:g}")
        if not 0.0 < self.full_scale_w <= MAX_POWER_W:
            raise ValueError(f"tip cap: full scale must be in (0, {MAX_POWER_W:g}] W, got {self.full_scale_w:g}")
        if not MIN_CONTROL_STEP_S <= self.control_step_s <= 10.0:
            raise ValueError(f"tip cap: control step must be in [{MIN_CONTROL_STEP_S:g}, 10] s, got {self.control_step_s:g}")
        if not 0.0 < self.step_tol_c <= 5.0:
            raise ValueError(f"tip cap: step tolerance must be in (0, 5] degC, got {self.step_tol_c:g}")
        for name, v in (("position time cap", self.position_time_cap_s), ("session limit", self.session_limit_s)):
            if v is not None and not 0.0 < v <= MAX_SESSION_S:
                raise ValueError(f"tip cap: {name} must be in (0, {MAX_SESSION_S:g}] s, got {v:g}")


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """What the emulated laserd delivered (simulate with tip_cap)."""

    end: str  # "budget" (every position's budgets delivered) | "position_time_cap" (some position cut, all run) | "session_limit" | "tip_cap_trip"
    positions_planned: int
    positions_done: int  # positions in which every fibre delivered its budget
    position_s: tuple[float, ...]  # light phase of each position begun (first light to its end)
    pullback_s: float  # the hand's time, all pull-backs
    session_s: float  # from the first light to the end of the last position (or the stop): laserd's session clock without the operator
    energy_j: dict[int, tuple[float, ...]]  # per channel, per position begun
    backed_off_s: float  # tissue time during which the back-off held some fibre below its power
    cap_reached_s: float  # tissue time with a tip probe at or above the cap (0 unless TipCap.trip_at_cap is False, or the trip itself)
    tip_probe_max_c: float  # the highest tip-probe temperature seen at a control step (the model's, no FT-8 lag)
    tip_probes: dict[int, int] = field(default_factory=dict)  # probe -> channel, as emulated

    @property
    def complete(self) -> bool:
        return self.end == "budget"

    @property
    def total_energy_j(self) -> float:
        return sum(sum(v) for v in self.energy_j.values())

    @property
    def light_s(self) -> float:
        return sum(self.position_s)


def guarded_channels(scenario: Scenario) -> dict[int, int]:
    """Each probe of role "tip" -> the LS-4 channel of its nearest fibre (as bench/bench_control.py
    writes plans: a tip probe guards the fibre it sits beside)."""
    out: dict[int, int] = {}
    for p in scenario.probes:
        if p.role == "tip" and scenario.fibres:
            near = min(scenario.fibres, key=lambda f: math.dist(f.tip_mm, p.position_mm))
            out[p.channel] = near.channel
    return out


def check_powers(scenario: Scenario, powers_w: Mapping[int, float]) -> dict[int, float]:
    """Channel -> W, each channel 0-3 with a fibre in the scenario, 0 to MAX_POWER_W."""
    out: dict[int, float] = {}
    for ch, w in powers_w.items():
        if not isinstance(ch, int) or not 0 <= ch < LS4_CHANNELS:
            raise ValueError(f"power channel {ch!r}: expected an LS-4 channel 0-{LS4_CHANNELS - 1}")
        if scenario.fibre_on(ch) is None:
            raise ValueError(f"power channel {ch}: scenario {scenario.name} has no fibre on LS-4 channel {ch}")
        w = float(w)
        if not 0.0 <= w <= MAX_POWER_W:
            raise ValueError(f"power channel {ch}: expected 0 to {MAX_POWER_W:g} W, got {w:g}")
        out[ch] = w
    return out


@overload
def simulate(
    scenario: Scenario | str | Path, powers_w: Mapping[int, float], seconds: float, *, grid_mm: float | None = ..., threads: int | None = ...,
    kernel: str = ..., progress: Callable[[float], None] | None = ..., illuminations: int = ..., pullback_mm: float = ...,
    cooldown_s: float = ..., tip_cap: None = ...,
) -> tuple[TissueModel, AblationResult]: ...  # fmt: skip
@overload
def simulate(
    scenario: Scenario | str | Path, powers_w: Mapping[int, float], seconds: float | None, *, grid_mm: float | None = ..., threads: int | None = ...,
    kernel: str = ..., progress: Callable[[float], None] | None = ..., illuminations: int = ..., pullback_mm: float = ...,
    cooldown_s: float = ..., tip_cap: TipCap,
) -> tuple[TissueModel, AblationResult, Delivery]: ...  # fmt: skip
def simulate(
    scenario: Scenario | str | Path,
    powers_w: Mapping[int, float],
    seconds: float | None,
    *,
    grid_mm: float | None = None,
    threads: int | None = None,
    kernel: str = "compiled",
    progress: Callable[[float], None] | None = None,
    illuminations: int = 1,
    pullback_mm: float = 0.0,
    cooldown_s: float = 0.0,
    tip_cap: TipCap | None = None,
) -> tuple[TissueModel, AblationResult] | tuple[TissueModel, AblationResult, Delivery]:
    """Run fixed powers for `seconds` per illumination, pulling every fibre back `pullback_mm`
    between illuminations, then `cooldown_s` with the light off (the dose keeps accumulating while
    the tissue cools). Returns the model (fields for images) and the metrics.

    `tip_cap`: emulate laserd instead (TipCap): the powers are the plan's, lowered by the tip
    back-off, each illumination lasts until every fibre has delivered tip_cap.energy_budget_j
    (`seconds` is not used and may be None). Returns (model, metrics, Delivery); the metrics'
    `seconds` is the tissue time used, cool-down included, and their `energy_j` what was delivered."""
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    powers = check_powers(sc, powers_w)
    if not 1 <= illuminations <= MAX_ILLUMINATIONS:
        raise ValueError(f"illuminations: expected 1 to {MAX_ILLUMINATIONS}, got {illuminations}")
    if illuminations > 1 and not pullback_mm > 0.0:
        raise ValueError(f"pullback: {illuminations} illuminations need a pull-back distance above 0 mm")
    if not 0.0 <= cooldown_s:
        raise ValueError(f"cooldown: expected 0 s or more, got {cooldown_s:g}")
    if tip_cap is not None:
        tip_cap.check()
        if cooldown_s > MAX_SECONDS:
            raise ValueError(f"cooldown: expected at most {MAX_SECONDS:g} s, got {cooldown_s:g}")
        model = TissueModel(sc, grid_mm=grid_mm, threads=threads, kernel=kernel)
        start = time.perf_counter()
        delivery = _deliver_under_cap(model, powers, tip_cap, illuminations=illuminations, pullback_mm=pullback_mm, progress=progress)
        if cooldown_s > 0.0:
            model.run(cooldown_s, [0.0] * LS4_CHANNELS, progress=progress, chunk_s=PROGRESS_CHUNK_S)
        wall = time.perf_counter() - start
        return model, ablation_result(model, powers_w=powers, seconds=model.time_s, wall_s=wall), delivery
    if seconds is None:
        raise ValueError("seconds: needed without tip_cap")
    total_s = seconds * illuminations + cooldown_s
    if not 0.0 < seconds or total_s > MAX_SECONDS:
        raise ValueError(f"seconds: expected more than 0 and at most {MAX_SECONDS:g} in all (illuminations x seconds + cooldown), got {total_s:g}")
    model = TissueModel(sc, grid_mm=grid_mm, threads=threads, kernel=kernel)
    tip = [powers.get(ch, 0.0) for ch in range(LS4_CHANNELS)]
    start = time.perf_counter()
    for i in range(illuminations):
        if i:
            model.pull_back(pullback_mm)
            model.run(model.pullback_time_s, [0.0] * LS4_CHANNELS)  # the light is off while the hand moves the fibres
        model.run(seconds, tip, progress=progress, chunk_s=PROGRESS_CHUNK_S)
    if cooldown_s > 0.0:
        model.run(cooldown_s, [0.0] * LS4_CHANNELS, progress=progress, chunk_s=PROGRESS_CHUNK_S)
    wall = time.perf_counter() - start
    return model, ablation_result(model, powers_w=powers, seconds=total_s, wall_s=wall)


def _deliver_under_cap(
    model: TissueModel,
    powers: Mapping[int, float],
    cap: TipCap,
    *,
    illuminations: int,
    pullback_mm: float,
    progress: Callable[[float], None] | None,
) -> Delivery:
    """laserd's FIXED_POWER session on the model, one control step at a time (TipCap)."""
    guards = dict(cap.tip_probes) if cap.tip_probes is not None else guarded_channels(model.scenario)
    channels = [ch for ch, w in sorted(powers.items()) if w > 0.0]
    budget = cap.energy_budget_j
    session_limit = cap.session_limit_s if cap.session_limit_s is not None else MAX_SESSION_S
    position_cap = cap.position_time_cap_s if cap.position_time_cap_s is not None else math.inf
    law = _BackoffLaw(model, cap, guards)
    t0 = model.time_s
    position_s: list[float] = []
    energy: dict[int, list[float]] = {ch: [] for ch in channels}
    pullback_s = backed_off_s = cap_reached_s = 0.0
    tip_max = -math.inf
    done = 0
    end = "budget"
    cut = False  # some position ended at position_time_cap_s
    last_progress = t0

    def at_cap(dt_s: float) -> bool:
        """Look at the tip probes after a step of dt_s: True if laserd trips on them now."""
        nonlocal tip_max, cap_reached_s
        temps = model.probe_temperature_c()
        hot = False
        for p in guards:
            t = temps[p]
            if t is not None:
                tip_max = max(tip_max, t)
                hot = hot or t >= cap.cap_c
        if hot:
            cap_reached_s += dt_s
        return hot and cap.trip_at_cap

    def tip_temps() -> dict[int, float]:
        temps = model.probe_temperature_c()
        return {p: t for p in guards if (t := temps[p]) is not None}

    for i in range(illuminations):
        if i:
            model.pull_back(pullback_mm)
            started = model.time_s
            step = MIN_CONTROL_STEP_S if cap.trip_at_cap else PULLBACK_STEP_NO_TRIP_S
            while model.pullback_remaining_mm > 0.0 and end == "budget":  # the light is off while the hand moves the fibres
                dt = min(step, model.pullback_time_s)
                model.step(dt, [0.0] * LS4_CHANNELS)
                if at_cap(dt):
                    end = "tip_cap_trip"
            pullback_s += model.time_s - started
            if end == "budget" and model.time_s - t0 >= session_limit - 1e-9:
                end = "session_limit"
            if end != "budget":
                break
        got = dict.fromkeys(channels, 0.0)
        begun = model.time_s
        capped = False
        law.restart()
        while True:
            left = {ch: budget - got[ch] for ch in channels if budget - got[ch] > BUDGET_EPSILON_J}
            if not left:
                break
            now_s = model.time_s
            if now_s - t0 >= session_limit - 1e-9:
                end = "session_limit"
                break
            if now_s - begun >= position_cap - 1e-9:
                capped = True
                break
            dt, p = law.decide(now_s, tip_temps(), {ch: powers[ch] for ch in left})
            dt = min(dt, session_limit - (now_s - t0), position_cap - (now_s - begun))
            for ch, w in p.items():  # no fibre overshoots its budget: the step ends when the first one is in
                if w > 0.0:
                    dt = min(dt, left[ch] / w)
            dt = max(dt, 1e-6)
            if any(p[ch] < powers[ch] for ch in left):
                backed_off_s += dt
            model.step(dt, [p.get(ch, 0.0) for ch in range(LS4_CHANNELS)])
            law.applied(p)
            for ch, w in p.items():
                got[ch] += w * dt
            if at_cap(dt):
                end = "tip_cap_trip"
                break
            if progress is not None and model.time_s - last_progress >= PROGRESS_CHUNK_S:
                last_progress = model.time_s
                progress(model.time_s)
        position_s.append(model.time_s - begun)
        for ch in channels:
            energy[ch].append(got[ch])
        if end != "budget":
            break
        if capped:
            cut = True
        else:
            done += 1
    if end == "budget" and cut:
        end = "position_time_cap"
    return Delivery(
        end=end,
        positions_planned=illuminations,
        positions_done=done,
        position_s=tuple(position_s),
        pullback_s=pullback_s,
        session_s=model.time_s - t0,
        energy_j={ch: tuple(v) for ch, v in energy.items()},
        backed_off_s=backed_off_s,
        cap_reached_s=cap_reached_s,
        tip_probe_max_c=tip_max if math.isfinite(tip_max) else model.props.body_temp_c,
        tip_probes=guards,
    )


class _BackoffLaw:
    """The tip back-off, decided once per control step from the model's tip-probe temperatures.

    laserd applies tip_backoff_ceiling_w every 100 ms to each tip probe's reading. Its gain is
    high (full scale / margin: 2 W/degC at 10 W and 5 degC) and the probe 2 mm from a charring tip
    answers a watt within a second, so the law applied once per step (the ceiling at the start of
    the step) overshoots and oscillates at steps much above half a second. Two things keep the
    emulation on laserd's trajectory at longer steps:

    * implicit direct light: the ceiling is taken at the probe's temperature predicted for the END
      of the step, the present one plus the step times (the rate it was heating at, less the light
      it absorbed itself at the old power, plus that light at the new power; the light read from
      the model's heat field at the probe, all of it attributed to the fibre the probe guards). At
      a steady temperature this is exactly the safety layer's law (P = ceiling(T)).
    * an adaptive step: near the band it starts at MIN_CONTROL_STEP_S (laserd's cycle), halves
      whenever a guarded tip probe moved more than STEP_TOL_C in one step, and grows by
      STEP_GROWTH up to TipCap.control_step_s while they move less than a third of that. Far below
      the band (APPROACH_BAND_C) steps are up to OPEN_STEP_MAX_S, shortened so the present heating
      rate would not cross into it."""

    def __init__(self, model: TissueModel, cap: TipCap, guards: Mapping[int, int]) -> None:
        self.model, self.cap, self.guards = model, cap, dict(guards)
        self.rho_c = model.props.volumetric_heat_capacity_j_m3_k
        self.full_w = int(round(cap.full_scale_w * 1000.0)) / 1000.0  # the supervisor's max_power_mw
        self.q: dict[int, float] = {}  # K/s per W of light absorbed at each probe (the last known)
        self._stencil: tuple[tuple[tuple[float, float, float], ...], tuple[np.ndarray, np.ndarray]] | None = None
        self.restart()

    def restart(self) -> None:
        """A new position: nothing is known of the rates yet."""
        self.last: tuple[float, dict[int, float]] | None = None  # (time, tip temps) at the previous decision
        self.powers: dict[int, float] = {}  # applied in the previous step
        self.band_dt = MIN_CONTROL_STEP_S

    def _direct_k_s(self) -> dict[int, float]:
        """Each guarded probe's heating rate (K/s) from the light absorbed where it sits, at the powers applied last."""
        probes = [p for p in self.model.scenario.probes if p.channel in self.guards]
        if not probes:
            return {}
        where = tuple(p.position_mm for p in probes)
        if self._stencil is None or self._stencil[0] != where:  # the probes move only with a pull-back
            self._stencil = (where, self.model.grid.trilinear_stencil(np.asarray(where), padded=False))
        idx, w = self._stencil[1]
        heat = self.model.heat_w_m3.reshape(-1)
        return {p.channel: float(heat[idx[k]] @ w[k]) / self.rho_c for k, p in enumerate(probes)}

    def decide(self, now_s: float, temps: Mapping[int, float], want: Mapping[int, float]) -> tuple[float, dict[int, float]]:
        """(step length, power of each fibre in `want`) for the next step."""
        cap = self.cap
        watched = {p: t for p, t in temps.items() if self.guards[p] in want}
        rate: dict[int, float] = {}
        direct: dict[int, float] = {}
        if self.last is not None and now_s > self.last[0]:
            t_prev, temps_prev = self.last
            moved = max((abs(t - temps_prev[p]) for p, t in watched.items() if p in temps_prev), default=0.0)
            if moved > cap.step_tol_c:
                self.band_dt = max(MIN_CONTROL_STEP_S, self.band_dt / 2.0)
            elif moved < cap.step_tol_c / 3.0:
                self.band_dt = min(cap.control_step_s, self.band_dt * STEP_GROWTH)
            rate = {p: (t - temps_prev[p]) / (now_s - t_prev) for p, t in watched.items() if p in temps_prev}
            if any(t > cap.cap_c - cap.margin_c - APPROACH_BAND_C for t in watched.values()):  # only near the band is it used
                direct = self._direct_k_s()
        self.last = (now_s, dict(temps))
        near = False
        dt = OPEN_STEP_MAX_S
        for p, t in watched.items():
            w = want[self.guards[p]]
            onset = cap.cap_c - cap.margin_c * min(1.0, w / self.full_w)  # the ceiling bites above this
            if t > onset - APPROACH_BAND_C:
                near = True
            elif rate.get(p, 0.0) > 0.0:
                dt = min(dt, max(MIN_CONTROL_STEP_S, APPROACH_FRACTION * (onset - APPROACH_BAND_C - t) / rate[p]))
        if near:
            dt = self.band_dt
        power = dict(want)
        for p, t in watched.items():
            ch = self.guards[p]
            p_old = self.powers.get(ch, 0.0)
            if p_old > 0.0 and p in direct:
                self.q[p] = direct[p] / p_old
            q = self.q.get(p, 0.0)
            drift = rate.get(p, 0.0) - q * p_old  # all but the probe's own absorbed light
            t_end = t + dt * (drift + q * want[ch])  # at the fibre's full power
            if tip_backoff_ceiling_w(t_end, cap_c=cap.cap_c, margin_c=cap.margin_c, full_scale_w=self.full_w) >= want[ch]:
                continue
            # the ceiling at T_end(P) = t + dt (drift + q P), solved for P (linear in the band)
            allowed = self.full_w * (cap.cap_c - t - dt * drift) / (cap.margin_c + self.full_w * dt * q)
            power[ch] = min(power[ch], max(0.0, int(allowed * 1000.0) / 1000.0))
        return dt, power

    def applied(self, powers: Mapping[int, float]) -> None:
        self.powers = dict(powers)


def run_open_loop(
    scenario: Scenario | str | Path,
    powers_w: Mapping[int, float],
    seconds: float,
    grid_mm: float | None = None,
    *,
    threads: int | None = None,
    kernel: str = "compiled",
    progress: Callable[[float], None] | None = None,
) -> AblationResult:
    """The ablation metrics after `seconds` at fixed powers (LS-4 channel -> W at the tip)."""
    return simulate(scenario, powers_w, seconds, grid_mm=grid_mm, threads=threads, kernel=kernel, progress=progress)[1]

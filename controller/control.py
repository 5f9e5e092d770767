"""The per-cycle controller: this cycle's readings in, one Proposal for every fibre out, in every mode.

It proposes; the safety layer decides what is written (docs/safety.md). Per fibre, by the plan:

* FIXED_POWER: the plan's power until the fibre's budget is in (the safety layer stops it there).
* TEMPERATURE: a PID holds the control probe at the target; where the control probe is not the
  fibre's tip probe, a second PID on the tip probe limits the tip below the cap (override: the
  smaller output wins, the other loop's integral tracks it).
* SHAPED (all fibres together): every MPC_PERIOD_S a model-predictive planner chooses every fibre's
  power over the next minutes from the identified model (controller/tune.py), so that every margin
  probe heats toward a lethal dose while every tip and protected probe stays below its limit with a
  margin, per-fibre and total power within their limits; between plans, a tip-limiter PID per fibre
  (10 Hz) cuts the planned power if a tip runs hotter than predicted. The model is refitted during
  treatment on everything recorded (a far probe is learnt once heat reaches it).

The per-cycle work of all channels is one call of the compiled kernel (cython_ext/fibre_control.pyx,
`FibreLoops.step`); the planner's solver is `ShapedMpc.solve` of the same module.

Pauses and transfers are bumpless: while the LS-4 does not emit (footswitch released, not yet
pressed) every channel holds its last output and nothing integrates; when emission resumes, or the
mode of a fibre changes (the end of a tune), the loops restart from the power being applied then.
Anti-windup: every loop's integral tracks what the LS-4 really applies (ACTIVE_SETPOINT), so a
safety clamp, the LS-4's ramp or the other loop winning all bleed it the same way.

Models and auto-tune: TEMPERATURE on a tip probe works without a tune (typical gains); TEMPERATURE
on another probe and SHAPED need the identified model: the controller runs the identification
(a short low-power run, controller/tune.py) at the start of emission when no model is installed,
then switches to closed loop bumplessly. `take_tune_result()` hands the result to the session for
the journal.

Fits run off the event loop: the tune's fit (the model, then a FOPDT per pair for the gains and the
journal record: tens to hundreds of milliseconds) and SHAPED's online refits go to the controller's
one fit worker (a thread) on a snapshot of the record; `step()` never waits for one, and installs
the result on the first cycle after it is done. Until the tune's model is installed (phase
"fitting") every fibre is proposed 0 W, as in the tune's tail. `close()` ends the worker.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from protocol import ft8 as FT8
from protocol import ls4 as LS4
from protocol.ft8 import FT8Snapshot
from protocol.ls4 import DeviceState, LS4Snapshot
from safety.types import Proposal

from .plan import FibreMode, Plan, ProbeRole
from .tune import (
    _STEP_TABLE,
    BASES,
    DEFAULT_TIP_GAINS,
    MODEL_MEMORY_S,
    History,
    IdentificationRun,
    PidGains,
    ThermalModel,
    TuneError,
    TuneResult,
    TuneSettings,
    fit_model,
)

N_CHANNELS = LS4.CHANNEL_COUNT
N_PROBES = FT8.CHANNEL_COUNT
BODY_TEMP_C = 37.0

# --- the cycle ---------------------------------------------------------------------------------------
DEFAULT_PERIOD_S = 0.1
DT_RANGE_S = (0.02, 0.5)  # a late or early cycle still integrates a sane dt
# Power may rise at most this fast from the controller (the LS-4 ramps at 5 W/s by default): the
# tissue near the tip has a few seconds of heat "in the pipe", so a gentler rise overshoots less.
RATE_UP_W_PER_S = 2.0
# Falling is never rate-limited: cutting power is always safe.
RATE_DOWN_W_PER_S = math.inf
# A TEMPERATURE loop approaches its target along a ramp from where the probe is (when emission
# starts, after a pause, after a tune, when the target changes): the pace of a big step is chosen
# here, not left to the loop gains, so it overshoots less. 43 degC (37 -> 80) in about 30 s.
REF_RATE_C_PER_S = 1.5
REF_TAU_S = 8.0  # ... and slows down over the last degrees: first order, this time constant
# The tip limiter holds a tip probe this far below the cap: outside the safety layer's back-off
# band (5 degC by default) by the excursions neighbouring fibres cause, so the safety layer never
# has to derate a healthy loop.
TIP_LIMIT_MARGIN_C = 6.0

# --- SHAPED: the planner -----------------------------------------------------------------------------
MPC_PERIOD_S = 2.0
MPC_REFIT_PERIOD_S = 20.0
# Predicted instants: seconds for the tips, many minutes for the margins (heat takes minutes to
# cross the 10-15 mm to a margin probe; a shorter horizon would see no benefit in heating at all).
MPC_POINTS_S = (2, 4, 6, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 330, 450, 600)
MPC_BLOCKS_S = ((0, 4), (4, 12), (12, 40), (40, 150), (150, 600))  # power held constant over each
MPC_ITERATIONS = 200
# Margin probes are driven toward this temperature (CEM43 of 240 min in about 30 s there).
MARGIN_GOAL_C = 52.0
# Tips are planned this far below the cap, inside the safety layer's back-off band (5 degC by
# default) where that law still allows more than a tip-limited fibre needs (2 W per degC under the
# cap at 10 W full scale; a bare tip in liver holds its probe there with 1.6-2 W). Delivery is
# tip-limited, so a plan further down (6.5 degC until 2026-11) delivered 15-25 % less per hour.
SHAPED_TIP_MARGIN_C = 2.0
# SHAPED's tip limiters (the 10 Hz backstop under the plan) cut at cap - this, 1.5 degC under the
# cap's trip, above the plan so that they act only when a tip runs hotter than planned.
SHAPED_TIP_LIMIT_MARGIN_C = 1.5
# ... and track the applied power slowly (back-calculation 1.2 / Ti instead of 3 / Ti): a limiter
# that is not selected then sits about kp e above the applied power, so it binds within a few
# degrees of its limit even while the tip rises at 1 degC/s (with 3 / Ti it bound 15-20 degC
# early on every rise after a tune, starving the fibre), still following the applied power
# within a Ti when it takes over.
SHAPED_LIMITER_TRACKING_PER_TI = 1.2
# Protected probes: kept this far below their limit, more once their thermal dose grows (CEM43
# doubles per degC above 43: a degree lower halves the dose rate).
PROTECTED_MARGIN_C = 4.0
PROTECTED_DOSE_MARGIN_C = 1.5  # extra, once a quarter of the dose limit is used
PROTECTED_DOSE_FRACTION = 0.25
# Weights of the planner's cost: a degree over a protected limit costs as much as this many degrees
# short at a margin probe, squared. Tips and protected structures first, then the margins.
W_MARGIN = 1.0
W_TIP = 30.0
W_PROTECTED = 300.0
# Every fibre still short of its budget is pushed toward its tip limit (within TIP_DELIVER_BAND_C
# under it): a position ends only when every fibre's budget is in, so a fibre held below what its
# tip allows only stretches the position. Without this the margins were the planner's only reason
# to deliver, and a fibre whose identified coupling to them was small (0.04 degC/W at 15 mm) was
# throttled to 0.5 W with its tip 25 degC under the limit (vessel_protected_4fibres). Small beside
# the protected weight: a structure to spare still throttles a fibre (its probe ends < 0.2 degC
# above its planning limit in the model's equilibrium).
W_TIP_DELIVER = 0.1
TIP_DELIVER_BAND_C = 1.0
ENERGY_WEIGHT_PER_W_S = 1e-3  # ties go to less energy
MOVE_WEIGHT_PER_W2 = 0.5  # the first block's step from the power applied now
# A little on every fibre's power squared: where the model cannot tell fibres apart (tips at their
# limit, margins not yet warm), power is spread evenly instead of piled on one fibre.
SPREAD_WEIGHT_PER_W2 = 0.1
# All fibres together may not exceed this (the sum of the plan's per-fibre caps if lower).
SHAPED_MAX_TOTAL_POWER_W = 20.0


class ControlError(ValueError):
    """A plan the controller cannot run (one line)."""


def kernel_module(kernel: str) -> ModuleType:
    if kernel == "compiled":
        return importlib.import_module("cython_ext.fibre_control")
    if kernel == "reference":
        return importlib.import_module("cython_ext.fibre_control_ref")
    raise ValueError(f"kernel must be 'compiled' or 'reference', got {kernel!r}")


@dataclass(frozen=True, kw_only=True)
class Loop:
    """One PID of the kernel."""

    index: int
    fibre: int  # LS-4 channel
    probe: int  # FT-8 channel
    role: str  # "control" or "tip_limit"
    target_c: float
    gains: PidGains


@dataclass(frozen=True, kw_only=True)
class ControlStatus:
    """For telemetry, the journal and tests."""

    phase: str  # "waiting", "tuning", "fitting" (the tune's model, in the fit worker), "closed_loop"
    output_w: tuple[float, ...]
    requests_w: tuple[float, ...]
    model_source: str | None
    tune_progress: float | None  # 0..1 while tuning (1 while fitting)
    planner_cost: float | None
    predicted_c: dict[int, tuple[float, ...]]  # probe -> prediction at MPC_POINTS_S (SHAPED)


def tip_probes_of(plan: Plan) -> dict[int, tuple[int, ...]]:
    out: dict[int, list[int]] = {}
    for p in plan.probes_with_role(ProbeRole.TIP):
        if p.fibre is not None:
            out.setdefault(p.fibre, []).append(p.channel)
    return {f: tuple(v) for f, v in out.items()}


def needs_model(plan: Plan) -> bool:
    """SHAPED, or TEMPERATURE on a probe other than the fibre's tip: no safe typical gains exist."""
    tips = tip_probes_of(plan)
    for f in plan.fibres:
        if f.mode is FibreMode.SHAPED:
            return True
        if f.mode is FibreMode.TEMPERATURE and f.control_probe not in tips.get(f.channel, ()):
            return True
    return False


def _fit_tune(run: IdentificationRun, control_probes: Mapping[int, int], pairs: Sequence[tuple[int, int]]) -> TuneResult:
    """In the fit worker: the tune's result, and every FOPDT and table that installing the model
    (the loops' gains for `pairs`, (probe, fibre)) and journaling it need."""
    result = run.result(control_probes=control_probes)
    result.model.precompute(pairs)
    return result


def _refit(history: History, prior: ThermalModel | None) -> ThermalModel | None:
    """In the fit worker: SHAPED's online refit (None if the data cannot make one: keep the model)."""
    try:
        model = fit_model(history, source="online", prior=prior)
    except (TuneError, np.linalg.LinAlgError):
        return None
    _ = model.step_table  # the planner's table, computed here rather than in the cycle
    return model


class FibreController:
    """One per session. `step()` once per control cycle; `close()` when the session ends."""

    def __init__(
        self,
        *,
        plan: Plan,
        model: ThermalModel | None = None,
        kernel: str = "compiled",
        tune_settings: TuneSettings | None = None,
        auto_tune: bool = True,
    ) -> None:
        self.plan = plan
        self.kernel_name = kernel
        self._mod = kernel_module(kernel)
        self.fibres = tuple(f.channel for f in plan.fibres)
        self.probes = tuple(p.channel for p in plan.probes)
        self.tips = tip_probes_of(plan)
        self.tune_settings = tune_settings or TuneSettings()
        self.history = History(fibres=self.fibres, probes=self.probes)
        self.model: ThermalModel | None = None
        self.prior: ThermalModel | None = None  # the tune's (or the given) model: online refits lean on it
        self.loops: list[Loop] = []
        self._loops_kernel = self._mod.FibreLoops(N_CHANNELS, 2 * N_CHANNELS)
        for f in plan.fibres:
            rate_up = math.inf if f.mode is FibreMode.FIXED_POWER else RATE_UP_W_PER_S
            self._loops_kernel.set_channel(f.channel, f.max_power_w, rate_up, RATE_DOWN_W_PER_S)
        self.tune: IdentificationRun | None = None
        self._tune_result: TuneResult | None = None
        self.tune_error: str | None = None
        self.phase = "waiting"
        self._last_now: float | None = None
        self._emitting = False
        self._stopped: frozenset[int] = frozenset()
        self._temps = [BODY_TEMP_C] * N_PROBES
        self._out = (0.0,) * N_CHANNELS
        self._requests = [0.0] * N_CHANNELS
        self.planner: ShapedPlanner | None = None
        self._next_plan_s: float | None = None
        self._next_refit_s: float | None = None
        self._auto_tune = auto_tune
        self._shaped = any(f.mode is FibreMode.SHAPED for f in plan.fibres)
        # the fit worker (created on first use) and what it is doing for us
        self._executor: ThreadPoolExecutor | None = None
        self.tune_fit: Future[TuneResult] | None = None  # the finished tune's fit, until installed
        self.refit: Future[ThermalModel | None] | None = None  # SHAPED's online refit, until installed
        if model is not None:
            self.set_model(model)
        elif not needs_model(plan):
            self._build_loops(None)

    # --- the fit worker ------------------------------------------------------------------------------

    def _submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="laserd-fit")
        return self._executor.submit(fn, *args)

    def _drop_fits(self) -> None:
        """Forget pending fits (a result that is still computed is thrown away)."""
        for fut in (self.tune_fit, self.refit):
            if fut is not None:
                fut.cancel()
        self.tune_fit = self.refit = None

    def close(self) -> None:
        """End the fit worker (the session is over). Does not wait for a fit in progress: it is
        thrown away. The controller may still be stepped: a later fit starts a new worker."""
        self._drop_fits()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    @property
    def tune_pending(self) -> bool:
        """A tune is running, or its model is being fitted."""
        return self.tune is not None or self.tune_fit is not None

    def wait_fits(self, timeout: float | None = 60.0) -> None:
        """Block until the pending fits are done (installed by the next step()). Never in laserd:
        for runs on a frozen device clock (tests/control_rig.py), where a fit, like everything
        else, takes no device time, so that a run does not depend on the machine's speed."""
        pending = [fut for fut in (self.tune_fit, self.refit) if fut is not None]
        if pending:
            wait(pending, timeout=timeout)

    # --- configuration ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Closed loop possible: no model is needed, or one is installed."""
        return bool(self.loops) or not any(f.mode is not FibreMode.FIXED_POWER for f in self.plan.fibres)

    def set_model(self, model: ThermalModel) -> None:
        missing = [f for f in self.fibres if f not in model.fibres] + [p for p in self.probes if p not in model.probes]
        if missing:
            raise ControlError(f"model of fibres {list(model.fibres)} / probes {list(model.probes)} does not cover this plan (missing {missing})")
        self.model = model
        if model.source != "online":
            self.prior = model
        self._build_loops(model)
        if self._shaped:
            if self.planner is None:
                self.planner = ShapedPlanner(plan=self.plan, fibres=self.fibres, probes=self.probes, tips=self.tips, mod=self._mod)
            self.planner.set_model(model)

    def _gains(self, model: ThermalModel | None, *, probe: int, fibre: int) -> PidGains:
        if model is not None:
            return model.gains(probe=probe, fibre=fibre)
        return DEFAULT_TIP_GAINS

    def _build_loops(self, model: ThermalModel | None) -> None:
        """(Re)program the kernel's loops; the channels continue from their present output."""
        cap = self.plan.tip_temp_cap_c
        loops: list[Loop] = []
        for f in self.plan.fibres:
            if f.mode is FibreMode.FIXED_POWER:
                continue
            tips = self.tips.get(f.channel, ())
            if f.mode is FibreMode.TEMPERATURE:
                assert f.control_probe is not None and f.target_temp_c is not None
                loops.append(Loop(index=len(loops), fibre=f.channel, probe=f.control_probe, role="control", target_c=f.target_temp_c, gains=self._gains(model, probe=f.control_probe, fibre=f.channel)))
            for tp in tips:
                if f.mode is FibreMode.TEMPERATURE and tp == f.control_probe:
                    continue  # the control loop itself holds this tip, below the cap by the plan's rule
                limit_margin = SHAPED_TIP_LIMIT_MARGIN_C if f.mode is FibreMode.SHAPED else TIP_LIMIT_MARGIN_C
                loops.append(Loop(index=len(loops), fibre=f.channel, probe=tp, role="tip_limit", target_c=cap - limit_margin, gains=self._gains(model, probe=tp, fibre=f.channel)))
        if len(loops) > 2 * N_CHANNELS:
            raise ControlError(f"{len(loops)} loops: at most {2 * N_CHANNELS} (one control loop and one tip limiter per fibre)")
        k = self._loops_kernel
        for loop in loops:
            g = loop.gains
            control = loop.role == "control"  # a limit is a limit at once: no trajectory
            kaw = g.kaw_1_per_s
            if not control and self.plan.fibre(loop.fibre).mode is FibreMode.SHAPED:
                kaw = SHAPED_LIMITER_TRACKING_PER_TI / g.ti_s  # see SHAPED_LIMITER_TRACKING_PER_TI
            k.set_loop(loop.index, loop.fibre, loop.probe, g.kp_w_per_c, g.ki, g.kd, g.tau_d_s, kaw, REF_RATE_C_PER_S if control else math.inf, REF_TAU_S if control else 0.0)
            k.set_target(loop.index, loop.target_c)
        for idx in range(len(loops), 2 * N_CHANNELS):
            k.set_loop(idx, -1, 0, 0.0, 0.0, 0.0, 1.0, 0.0, math.inf, 0.0)
        self.loops = loops
        self._apply_modes(force=True)

    def new_position(self) -> None:
        """The fibres were pulled back (a new illumination): every coupling the model knew is gone.
        A plan that needs a model tunes again at the next emission; TEMPERATURE on tip probes goes
        back to the typical gains. The record restarts."""
        self.model = None
        self.prior = None
        self.planner = None
        self.tune = None
        self._drop_fits()  # a fit of the old position's record is of no use any more
        self.tune_error = None
        self.history = History(fibres=self.fibres, probes=self.probes)
        self._next_plan_s = self._next_refit_s = None
        self.loops = []
        for idx in range(2 * N_CHANNELS):
            self._loops_kernel.set_loop(idx, -1, 0, 0.0, 0.0, 0.0, 1.0, 0.0, math.inf, 0.0)
        self.phase = "waiting"
        if not needs_model(self.plan):
            self._build_loops(None)
        else:
            self._apply_modes(force=True)

    def set_target(self, *, fibre: int, target_c: float) -> None:
        """A new target for a TEMPERATURE fibre (no kick: the derivative acts on the measurement)."""
        cap = self.plan.tip_temp_cap_c
        for loop in self.loops:
            if loop.fibre == fibre and loop.role == "control":
                if loop.probe in self.tips.get(fibre, ()) and target_c > cap - 2.0:
                    raise ControlError(f"target {target_c:g} degC is not 2 degC below the tip cap {cap:g}")
                self.loops[loop.index] = Loop(index=loop.index, fibre=fibre, probe=loop.probe, role="control", target_c=target_c, gains=loop.gains)
                self._loops_kernel.set_target(loop.index, target_c)
                return
        raise ControlError(f"fibre {fibre} has no TEMPERATURE loop")

    # --- tune -------------------------------------------------------------------------------------------

    def start_tune(self, settings: TuneSettings | None = None) -> None:
        """Begin an identification run: it advances while the LS-4 emits, then the model is fitted
        and installed and closed loop continues from the power applied then."""
        if self.tune is not None:
            raise ControlError("a tune is already running")
        if self.tune_fit is not None:
            raise ControlError("the last tune's model is still being fitted")
        if self.refit is not None:  # of the record before this tune: its model must not replace the tune's
            self.refit.cancel()
            self.refit = None
        self.tune = IdentificationRun(
            fibres=self.fibres,
            probes=self.probes,
            max_power_w={f.channel: f.max_power_w for f in self.plan.fibres},
            tip_probes=self.tips,
            tip_cap_c=self.plan.tip_temp_cap_c,
            settings=settings or self.tune_settings,
            history=self.history,
        )
        self.tune_error = None
        self.phase = "tuning"
        self._apply_modes(force=True)

    def take_tune_result(self) -> TuneResult | None:
        result, self._tune_result = self._tune_result, None
        return result

    def control_probes(self) -> dict[int, int]:
        """fibre -> the probe its gains are reported for: the control probe, else its first tip probe."""
        out = {}
        for f in self.plan.fibres:
            if f.mode is FibreMode.TEMPERATURE and f.control_probe is not None:
                out[f.channel] = f.control_probe
            elif self.tips.get(f.channel):
                out[f.channel] = self.tips[f.channel][0]
        return out

    def _gain_pairs(self) -> list[tuple[int, int]]:
        """(probe, fibre) of every loop _build_loops may make: their FOPDTs are fitted in the worker."""
        pairs = []
        for f in self.plan.fibres:
            if f.mode is FibreMode.TEMPERATURE and f.control_probe is not None:
                pairs.append((f.control_probe, f.channel))
            if f.mode is not FibreMode.FIXED_POWER:
                pairs.extend((tp, f.channel) for tp in self.tips.get(f.channel, ()))
        return pairs

    def _finish_tune(self) -> None:
        """The run is over: its fit goes to the worker, on a snapshot of the record (which goes on
        recording), and this cycle returns at once. Until the model is installed (_install_fits)
        every fibre stays at the 0 W of the tune's tail: nothing is proposed without a model, and
        0 W is what the safety layer, the only writer, can always accept."""
        assert self.tune is not None
        run, self.tune = self.tune, None
        run.history = run.history.snapshot()
        self.tune_fit = self._submit(_fit_tune, run, self.control_probes(), self._gain_pairs())
        self.phase = "fitting"
        for f in self.fibres:
            self._requests[f] = 0.0

    def _install_fits(self) -> None:
        """The first cycle after the worker is done with a fit installs its result."""
        fut = self.tune_fit
        if fut is not None and fut.done():
            self.tune_fit = None
            try:
                result = fut.result()
            except (TuneError, np.linalg.LinAlgError) as err:
                self.tune_error = str(err)
                self.phase = "waiting"
                self._apply_modes(force=True)
            else:
                self._tune_result = result
                self.set_model(result.model)
                self.phase = "closed_loop"
                self._apply_modes(force=True)
        fut = self.refit
        if fut is not None and fut.done():
            self.refit = None
            model = fut.result()
            if model is not None and self.planner is not None and not self.tune_pending:
                self.model = model
                self.planner.set_model(model)

    # --- modes -----------------------------------------------------------------------------------------

    def _mode_of(self, fibre_channel: int) -> int:
        mod = self._mod
        if fibre_channel in self._stopped:
            return mod.OFF
        if not self._emitting:
            return mod.HOLD
        if self.tune_pending:
            return mod.PASS
        fibre = self.plan.fibre(fibre_channel)
        if fibre.mode is FibreMode.FIXED_POWER:
            return mod.PASS
        if not self.loops or (self._shaped and self.planner is None):
            return mod.OFF  # closed loop without a model: nothing until the tune is done
        return mod.LOOPS

    def _apply_modes(self, *, force: bool = False) -> None:
        k = self._loops_kernel
        for f in self.fibres:
            mode = self._mode_of(f)
            current, _, last = k.channel_state(f)
            if force or mode != current:
                k.set_mode(f, mode, last if mode != self._mod.OFF else 0.0)

    # --- the cycle --------------------------------------------------------------------------------------

    def step(
        self,
        *,
        now_s: float,
        ls4: LS4Snapshot | None,
        ft8: FT8Snapshot | None,
        stopped: frozenset[int] = frozenset(),
        cem43_min: Mapping[int, float] | None = None,
    ) -> Proposal:
        """This cycle's proposal. `stopped`: fibres the safety layer stopped at their budget;
        `cem43_min`: the thermal dose at each probe so far (the safety layer's books)."""
        dt = DEFAULT_PERIOD_S if self._last_now is None else min(max(now_s - self._last_now, DT_RANGE_S[0]), DT_RANGE_S[1])
        self._last_now = now_s
        if ft8 is not None:
            for p, t in enumerate(ft8.temperature_c):
                if t is not None:
                    self._temps[p] = t  # an invalid reading holds the last one (the safety layer trips on it)
        emitting = ls4 is not None and ls4.device_state is DeviceState.EMITTING
        applied = [a / 1000.0 for a in ls4.active_setpoint_mw] if ls4 is not None else list(self._out)
        output_w = [o / 1000.0 for o in ls4.output_power_mw] if ls4 is not None else [0.0] * N_CHANNELS
        changed = emitting != self._emitting or stopped != self._stopped
        self._emitting, self._stopped = emitting, frozenset(stopped)
        self._install_fits()
        if not self.tune_pending and self._auto_tune and not self.ready and self.tune_error is None and emitting:
            self.start_tune()
        elif changed:
            self._apply_modes()
        bins = 0
        if self.tune is not None:
            powers = self.tune.step(now_s=now_s, emitting=emitting, output_w=output_w, temperature_c=self._temps)
            for f, w in powers.items():
                self._requests[f] = w
            if self.tune.done:
                self._finish_tune()
        else:
            bins = self.history.add(now_s=now_s, power_w=output_w, temperature_c=self._temps)
            if self.loops and self.tune_fit is None:
                self.phase = "closed_loop"
        for f in self.plan.fibres:
            if f.mode is FibreMode.FIXED_POWER and not self.tune_pending:
                self._requests[f.channel] = min(f.power_w or 0.0, f.max_power_w)
            elif f.mode is FibreMode.TEMPERATURE and not self.tune_pending:
                self._requests[f.channel] = f.max_power_w
        if self.planner is not None and not self.tune_pending and emitting:
            self._plan_shaped(now_s=now_s, bins=bins, applied=applied, cem43_min=cem43_min or {})
        k = self._loops_kernel
        for f in self.fibres:
            k.set_request(f, self._requests[f])
        self._out = k.step(dt, self._temps, applied)
        setpoints = tuple(round(w * 1000.0) for w in self._out)
        return Proposal(setpoint_mw=setpoints, enable=tuple(s > 0 for s in setpoints))

    def _plan_shaped(self, *, now_s: float, bins: int, applied: Sequence[float], cem43_min: Mapping[int, float]) -> None:
        planner = self.planner
        assert planner is not None
        if self._next_refit_s is None:
            self._next_refit_s = now_s + MPC_REFIT_PERIOD_S
        if now_s >= self._next_refit_s and self.history.fit_start is not None and self.refit is None:
            self._next_refit_s = now_s + MPC_REFIT_PERIOD_S
            # in the fit worker, on a snapshot; installed by _install_fits on a later cycle (if the
            # data cannot make a model, the one we have stays: a refit is an improvement, never a need)
            self.refit = self._submit(_refit, self.history.snapshot(), self.prior)
        if self._next_plan_s is None or now_s >= self._next_plan_s:
            self._next_plan_s = now_s + MPC_PERIOD_S
            requests = planner.decide(history=self.history, temps=self._temps, applied=applied, stopped=self._stopped, cem43_min=cem43_min)
            for f, w in requests.items():
                self._requests[f] = w

    def status(self) -> ControlStatus:
        planner = self.planner
        return ControlStatus(
            phase=self.phase,
            output_w=tuple(self._out),
            requests_w=tuple(self._requests),
            model_source=self.model.source if self.model is not None else None,
            tune_progress=1.0 if self.tune_fit is not None else None if self.tune is None else min(1.0, self.tune.elapsed_s / self.tune.duration_s),
            planner_cost=None if planner is None else planner.last_cost,
            predicted_c={} if planner is None else dict(planner.last_prediction),
        )


class ShapedPlanner:
    """The SHAPED model-predictive planner: builds the prediction from the model and the record,
    the goals from the plan and the doses so far, and solves with the compiled ShapedMpc."""

    def __init__(self, *, plan: Plan, fibres: Sequence[int], probes: Sequence[int], tips: Mapping[int, Sequence[int]], mod: ModuleType) -> None:
        self.plan = plan
        self.fibres = tuple(fibres)
        self.probes = tuple(probes)
        self.tips = tips
        self.points = np.asarray(MPC_POINTS_S, dtype=int)
        self.blocks = MPC_BLOCKS_S
        n_f, n_p, n_m, n_b = len(self.fibres), len(self.probes), len(self.points), len(self.blocks)
        self.n_rows = n_p * n_m
        self.n_vars = n_b * n_f
        self.solver = mod.ShapedMpc(self.n_rows, self.n_vars, n_f)
        self.x = np.zeros(self.n_vars)
        self.model: ThermalModel | None = None
        self.last_cost: float | None = None
        self.last_prediction: dict[int, tuple[float, ...]] = {}
        self.max_power = np.asarray([plan.fibre(f).max_power_w for f in self.fibres])
        self.total_power_w = min(SHAPED_MAX_TOTAL_POWER_W, float(self.max_power.sum()))
        # pulse_k(tau + n) for every predicted instant: the free response of the past
        n_hist = MODEL_MEMORY_S
        pulse = np.diff(_STEP_TABLE, axis=1)  # (K, N)
        self._free_kernel = np.zeros((len(BASES), n_m, n_hist))
        for m, tau in enumerate(self.points):
            span = max(0, min(n_hist, pulse.shape[1] - tau))
            self._free_kernel[:, m, :span] = pulse[:, tau : tau + span]
        role = {p.channel: p for p in plan.probes}
        self.role = role

    def set_model(self, model: ThermalModel) -> None:
        self.model = model
        idx_p = [model.probes.index(p) for p in self.probes]
        idx_f = [model.fibres.index(f) for f in self.fibres]
        step = model.step_table[np.ix_(idx_p, idx_f)]  # (P, F, N + 1)
        n_max = step.shape[2] - 1
        a = np.zeros((len(self.probes), len(self.points), len(self.blocks), len(self.fibres)))
        for m, tau in enumerate(self.points):
            for b, (s, e) in enumerate(self.blocks):
                hi = step[:, :, min(max(tau - s, 0), n_max)]
                lo = step[:, :, min(max(tau - e, 0), n_max)]
                a[:, m, b, :] = hi - lo
        self.a = a.reshape(self.n_rows, self.n_vars)
        self.theta = model.theta[np.ix_(idx_p, idx_f)]  # (P, F, K)
        self.baseline = np.asarray([model.baseline_c[i] for i in idx_p])
        self.solver.set_matrix(np.ascontiguousarray(self.a))

    def free_response(self, history: History) -> tuple[np.ndarray, np.ndarray]:
        """(now, future): the model's temperature of every probe now, and at every predicted
        instant if every fibre were switched off now (P,) and (P, M)."""
        assert self.model is not None
        idx_f = [history.fibres.index(f) for f in self.fibres]
        u = history.u[:, idx_f]
        n = min(len(u), self._free_kernel.shape[2])
        recent = u[::-1][:n]  # u[T-1], u[T-2], ...
        contrib = np.einsum("kmn,nf->kmf", self._free_kernel[:, :, :n], recent)  # (K, M, F)
        future = self.baseline[:, None] + np.einsum("pfk,kmf->pm", self.theta, contrib)
        phi_now = history.phi[-1].reshape(len(history.fibres), len(BASES))[idx_f] if len(history) else np.zeros((len(self.fibres), len(BASES)))
        now = self.baseline + np.einsum("pfk,fk->p", self.theta, phi_now)
        return now, future

    def goals(self, *, cem43_min: Mapping[int, float], stopped: frozenset[int] = frozenset()) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        n_m = len(self.points)
        fibre_of_tip = {tp: f for f, tps in self.tips.items() for tp in tps}
        goal_lo, w_under = np.zeros(self.n_rows), np.zeros(self.n_rows)
        goal_hi, w_over = np.full(self.n_rows, 1e9), np.zeros(self.n_rows)
        cap = self.plan.tip_temp_cap_c
        margins = [p for p in self.probes if self.role[p].role is ProbeRole.MARGIN]
        open_margins = [p for p in margins if cem43_min.get(p, 0.0) < (self.role[p].lethal_cem43_min or 240.0)]
        for i, p in enumerate(self.probes):
            rows = slice(i * n_m, (i + 1) * n_m)
            probe = self.role[p]
            if probe.role is ProbeRole.MARGIN and p in open_margins:
                goal_lo[rows] = MARGIN_GOAL_C
                w_under[rows] = W_MARGIN / max(1, len(open_margins))
            elif probe.role is ProbeRole.TIP:
                goal_hi[rows] = cap - SHAPED_TIP_MARGIN_C
                w_over[rows] = W_TIP
                if fibre_of_tip.get(p) in self.fibres and fibre_of_tip[p] not in stopped:
                    goal_lo[rows] = cap - SHAPED_TIP_MARGIN_C - TIP_DELIVER_BAND_C
                    w_under[rows] = W_TIP_DELIVER
            elif probe.role is ProbeRole.PROTECTED and probe.max_temp_c is not None:
                limit = probe.max_temp_c - PROTECTED_MARGIN_C
                if probe.max_cem43_min and cem43_min.get(p, 0.0) >= PROTECTED_DOSE_FRACTION * probe.max_cem43_min:
                    limit -= PROTECTED_DOSE_MARGIN_C
                goal_hi[rows] = limit
                w_over[rows] = W_PROTECTED
        return goal_lo, w_under, goal_hi, w_over

    def decide(
        self,
        *,
        history: History,
        temps: Sequence[float],
        applied: Sequence[float],
        stopped: frozenset[int],
        cem43_min: Mapping[int, float],
    ) -> dict[int, float]:
        """Every fibre's power for the next MPC_PERIOD_S (W)."""
        if self.model is None or len(history) == 0:
            return {f: 0.0 for f in self.fibres}
        now, future = self.free_response(history)
        measured = np.asarray([temps[p] for p in self.probes])
        bias = measured - now  # what the model misses now is taken to last (DMC)
        y_free = (future + bias[:, None]).reshape(-1)
        goal_lo, w_under, goal_hi, w_over = self.goals(cem43_min=cem43_min, stopped=stopped)
        n_f, n_b = len(self.fibres), len(self.blocks)
        hi = np.tile(np.asarray([0.0 if f in stopped else self.max_power[j] for j, f in enumerate(self.fibres)]), n_b)
        lo = np.zeros(self.n_vars)
        lengths = np.repeat([e - s for s, e in self.blocks], n_f).astype(float)
        c = ENERGY_WEIGHT_PER_W_S * lengths
        # q (x - x_ref)^2 = MOVE (x - applied)^2 on the first block + SPREAD x^2 everywhere
        q = np.full(self.n_vars, SPREAD_WEIGHT_PER_W2)
        q[:n_f] += MOVE_WEIGHT_PER_W2
        x_ref = np.zeros(self.n_vars)
        x_ref[:n_f] = np.asarray([applied[f] for f in self.fibres]) * MOVE_WEIGHT_PER_W2 / q[:n_f]
        group_max = np.full(n_b, self.total_power_w - 0.001 * n_f)  # each request is rounded to 1 mW
        # warm start: the last plan, one block on
        x = np.concatenate([self.x[n_f:], self.x[-n_f:]]) if n_b > 1 else self.x.copy()
        x = np.ascontiguousarray(x)
        self.last_cost = float(
            self.solver.solve(y_free, goal_lo, w_under, goal_hi, w_over, lo, hi, c, q, x_ref, group_max, MPC_ITERATIONS, x)
        )
        if not np.all(np.isfinite(x)):
            x = np.zeros(self.n_vars)  # a model gone bad must not become power: nothing, until the next plan
        self.x = x
        pred = np.asarray(self.solver.predictions()).reshape(len(self.probes), len(self.points))
        self.last_prediction = {p: tuple(round(float(v), 2) for v in pred[i]) for i, p in enumerate(self.probes)}
        return {f: float(x[j]) for j, f in enumerate(self.fibres)}

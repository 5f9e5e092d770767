"""One treatment session: a loaded plan, its state, its illuminations, and what it asks of the laser.

The session follows the device: it becomes EMITTING when the LS-4 reports EMITTING (the
physical footswitch), PAUSED when the LS-4 falls back to ARMED (footswitch released). It only
*proposes* power; the safety layer decides what is written, and keeps the books: delivered
energy, which fibres have reached their budget, and thermal dose are the supervisor's, read here.

Every cycle the session's controller (controller/control.py) turns the readings into the proposal,
in every mode; an identification run (auto-tune, controller/tune.py) is recorded in the journal
with its fitted model (event `tune_model`, the model in its details).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Final

from protocol.ft8 import FT8Snapshot
from protocol.ls4 import DeviceState, LS4Snapshot
from safety.supervisor import SafetySupervisor
from safety.types import Proposal

from .control import ControlError, FibreController, needs_model
from .journal import Journal, Sample
from .plan import Endpoint, FibreMode, Plan, ProbeRole
from .session_states import TERMINAL_STATES, Event, State, transition
from .tune import ThermalModel, TuneError, TuneResult, TuneSettings

log = logging.getLogger("laserd.session")

N_CHANNELS = 4
N_PROBES = 8
SAMPLE_PERIOD_S = 1.0  # journal samples, in scaled (device) time
# Modes whose controller exists; the others are refused at load with a clear line.
AVAILABLE_MODES = frozenset({FibreMode.FIXED_POWER, FibreMode.TEMPERATURE, FibreMode.SHAPED})
# States in which a tune may be asked for: it then runs while the footswitch is pressed.
TUNE_STATES: Final = (State.LOADED, State.ARMED, State.EMITTING, State.PAUSED)


class _NotGiven:
    """propose() called without the FT-8 snapshot (an older caller): closed loop must not run blind."""


NOT_GIVEN: Final = _NotGiven()


class SessionError(Exception):
    """An operator command the session refuses; the message is one line."""


@dataclass
class TreatmentSession:
    session_id: int
    plan: Plan
    journal: Journal
    safety: SafetySupervisor
    state: State = State.LOADED
    illumination: int = 0
    last_sample_s: float | None = None
    end_reason: str | None = None
    model: ThermalModel | None = None  # a model to start from (e.g. an earlier tune); None: tune when needed
    kernel: str = "compiled"  # "reference": the pure-Python twin (tests)
    controller: FibreController | None = field(default=None, repr=False)
    _blind_warned: bool = field(default=False, repr=False)
    _tune_error_seen: str | None = field(default=None, repr=False)
    tune_message: str | None = None  # the last tune's result, one line

    # --- state ---------------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self.state not in TERMINAL_STATES

    def apply(self, event: Event, reason: str, *, details: dict[str, Any] | None = None) -> State:
        new = transition(self.state, event)
        if event is Event.PULLBACK_CONFIRMED and self.controller is not None:
            self.controller.new_position()  # the fibres moved: what was identified no longer holds
            self.model = None
        # The end books the safety layer's figure: the last 1 Hz sample can be up to a second old.
        final_j = self.safety.delivered_j if new in TERMINAL_STATES else None
        self.journal.set_state(self.session_id, new, reason, details=details, delivered_energy_j=final_j)
        log.info("session=%d event=%s from=%s to=%s reason=%s", self.session_id, event, self.state, new, reason)
        self.state = new
        if new in TERMINAL_STATES:
            self.end_reason = reason
            if self.controller is not None:
                self.controller.close()  # its fit worker
        return new

    # --- the safety layer's books -----------------------------------------------------------

    def fibre_done(self, channel: int) -> bool:
        """This illumination's budget is in: the safety layer stopped the fibre for good."""
        return channel in self.safety.fibres_stopped

    def cem43_min(self, probe: int) -> float:
        return self.safety.cem43_min(probe)

    # --- what the session asks for ---------------------------------------------------------

    def _controller(self) -> FibreController:
        if self.controller is None:
            self.controller = FibreController(plan=self.plan, model=self.model, kernel=self.kernel)
        return self.controller

    def propose(self, ls4: LS4Snapshot | None, ft8: FT8Snapshot | None | _NotGiven = NOT_GIVEN, *, now_s: float | None = None) -> Proposal:
        """Every fibre by its mode (controller/control.py), until its budget for this illumination is in.

        `ft8`: this cycle's FT-8 snapshot (None: the read failed); `now_s`: the host's cycle time
        (default: the LS-4's uptime). Without `ft8` only FIXED_POWER fibres are driven."""
        if ls4 is None or self.state not in (State.ARMED, State.EMITTING, State.PAUSED):
            return Proposal()
        ctl = self._controller()
        blind = isinstance(ft8, _NotGiven)
        proposal = ctl.step(
            now_s=ls4.uptime_ms / 1000.0 if now_s is None else now_s,
            ls4=ls4,
            ft8=None if blind else ft8,  # type: ignore[arg-type]
            stopped=self.safety.fibres_stopped,
            cem43_min={p.channel: self.cem43_min(p.channel) for p in self.plan.probes},
        )
        if blind and any(f.mode is not FibreMode.FIXED_POWER for f in self.plan.fibres):
            if not self._blind_warned:
                log.error("session=%d event=closed-loop-blind: propose() got no FT-8 snapshot; closed-loop fibres held at 0", self.session_id)
                self._blind_warned = True
            setpoints = list(proposal.setpoint_mw)
            for fibre in self.plan.fibres:
                if fibre.mode is not FibreMode.FIXED_POWER:
                    setpoints[fibre.channel] = 0
            proposal = Proposal(setpoint_mw=tuple(setpoints), enable=tuple(s > 0 for s in setpoints))
        result = ctl.take_tune_result()
        if result is not None:
            self._record_tune(result)
        if ctl.tune_error is not None and ctl.tune_error != self._tune_error_seen:
            self._tune_error_seen = ctl.tune_error
            self.journal.record_event("tune_failed", ctl.tune_error, session_id=self.session_id)
        return proposal

    # --- auto-tune -----------------------------------------------------------------------------

    def start_tune(self, *, power_w: float | None = None, settings: TuneSettings | None = None) -> str:
        """The operator's `laserctl tune`: an identification run that proceeds while the footswitch
        is pressed; then the fitted model is recorded and closed loop continues from it.
        `power_w`: the step power (default TUNE_POWER_W); `settings`: every setting."""
        if self.state not in TUNE_STATES:
            raise SessionError(f"tune needs a LOADED, ARMED, EMITTING or PAUSED session; session {self.session_id} is {self.state}")
        try:
            if settings is None:
                settings = TuneSettings() if power_w is None else TuneSettings(power_w=float(power_w))
            ctl = self._controller()
            ctl.start_tune(settings)
        except (ControlError, TuneError) as err:
            raise SessionError(f"tune: {err}") from None
        assert ctl.tune is not None
        message = (
            f"tune started: {len(ctl.fibres)} fibre(s) stepped to {ctl.tune.settings.power_w:g} W in turn, "
            f"{ctl.tune.duration_s:.0f} s of emission (press the footswitch)"
        )
        self.journal.record_event("tune_started", message, session_id=self.session_id, details={"duration_s": ctl.tune.duration_s, "power_w": ctl.tune.settings.power_w})
        return message

    @property
    def tune_running(self) -> bool:
        """A tune runs, or its model is being fitted (it is recorded on the cycle it is installed)."""
        return self.controller is not None and self.controller.tune_pending

    def tune_status(self) -> dict[str, Any]:
        ctl = self.controller
        if ctl is None:
            return {"phase": "waiting", "result": None, "progress": None, "model": None, "needs_model": needs_model(self.plan), "error": None}
        status = ctl.status()
        return {
            "phase": status.phase,
            "result": self.tune_message,
            "progress": None if status.tune_progress is None else round(status.tune_progress, 3),
            "model": status.model_source,
            "needs_model": needs_model(self.plan),
            "error": ctl.tune_error,
        }

    def _record_tune(self, result: TuneResult) -> None:
        self.model = result.model
        self.tune_message = result.message
        self.journal.record_event(
            "tune_model",
            result.message,
            session_id=self.session_id,
            details={
                "model": result.model.to_details(),
                "duration_s": round(result.duration_s, 2),
                "energy_j": [round(e, 2) for e in result.energy_j],
                "gains": {str(f): {"kp_w_per_c": g.kp_w_per_c, "ti_s": g.ti_s, "td_s": g.td_s} for f, g in result.gains.items()},
            },
        )
        log.info("session=%d event=tune-model %s", self.session_id, result.message)

    # --- following the device ----------------------------------------------------------------

    def observe(self, *, now_s: float, ls4: LS4Snapshot | None, ft8: FT8Snapshot | None, setpoint_mw: tuple[int, ...]) -> Event | None:
        """Follow the device's state and record samples; returns the end-of-illumination event to raise, if due."""
        if ls4 is None or not self.open:
            return None
        device = ls4.device_state
        if self.state is State.ARMED and device is DeviceState.EMITTING:
            self.apply(Event.FOOTSWITCH_PRESSED, "footswitch pressed: LS-4 emitting")
        elif self.state is State.EMITTING and device is DeviceState.ARMED:
            self.apply(Event.FOOTSWITCH_RELEASED, "footswitch released: LS-4 armed, not emitting")
        elif self.state is State.PAUSED and device is DeviceState.EMITTING:
            self.apply(Event.FOOTSWITCH_PRESSED, "footswitch pressed again: LS-4 emitting")
        self._sample(now_s, ls4, ft8, setpoint_mw)
        return self._endpoint_event()

    def _endpoint_event(self) -> Event | None:
        if self.state not in (State.EMITTING, State.PAUSED, State.PULLBACK):
            return None
        budgets_in = all(self.fibre_done(f.channel) for f in self.plan.fibres)
        margins = self.plan.probes_with_role(ProbeRole.MARGIN)
        margin_lethal = bool(margins) and all(
            self.cem43_min(p.channel) >= (p.lethal_cem43_min or 240.0) for p in margins
        )
        last = self.illumination >= self.plan.illuminations - 1
        endpoint = self.plan.endpoint
        if margin_lethal and endpoint in (Endpoint.MARGIN_LETHAL, Endpoint.EITHER):
            return Event.ENDPOINT_REACHED
        if budgets_in and self.state is not State.PULLBACK:
            if last and endpoint in (Endpoint.ALL_FIBRES_AT_BUDGET, Endpoint.EITHER):
                return Event.ENDPOINT_REACHED
            if not last:
                return Event.ILLUMINATION_DONE
        return None

    def _sample(self, now_s: float, ls4: LS4Snapshot, ft8: FT8Snapshot | None, setpoint_mw: tuple[int, ...]) -> None:
        if self.last_sample_s is not None and now_s - self.last_sample_s < SAMPLE_PERIOD_S:
            return
        self.last_sample_s = now_s
        temps = ft8.temperature_c if ft8 is not None else (None,) * N_PROBES
        used = {p.channel for p in self.plan.probes}
        self.journal.record_sample(
            self.session_id,
            Sample(
                illumination=self.illumination,
                setpoint_mw=setpoint_mw,
                output_mw=ls4.output_power_mw,
                energy_j=self.safety.delivered_j,
                temperature_c=temps,
                cem43_min=tuple(self.cem43_min(c) if c in used else None for c in range(N_PROBES)),
                device_time_ms=ls4.uptime_ms,
            ),
        )

    def summary(self) -> dict[str, Any]:
        in_use = {f.channel: f for f in self.plan.fibres}
        return {
            "session_id": self.session_id,
            "state": str(self.state),
            "illumination": self.illumination,
            "illuminations": self.plan.illuminations,
            "patient_id": self.plan.patient_id,
            "plan_sha256": self.plan.sha256,
            "session_energy_j": [round(e, 2) for e in self.safety.delivered_j],
            "illumination_energy_j": [round(e, 2) for e in self.safety.fibre_energy_j],
            "budgets_j": [in_use[c].energy_budget_j if c in in_use else None for c in range(N_CHANNELS)],
            "fibres_done": sorted(c for c in in_use if self.fibre_done(c)),
            "cem43_min": {p.channel: round(self.cem43_min(p.channel), 3) for p in self.plan.probes},
            "end_reason": self.end_reason,
        }


def check_modes_available(plan: Plan) -> None:
    for fibre in plan.fibres:
        if fibre.mode not in AVAILABLE_MODES:
            raise SessionError(
                f"plan: fibres[channel {fibre.channel}].mode {fibre.mode} is not available yet (closed-loop control is its own issue); use FIXED_POWER"
            )

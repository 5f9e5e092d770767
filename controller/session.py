"""One treatment session: a loaded plan, its state, its illuminations, and what it asks of the laser.

The session follows the device: it becomes EMITTING when the LS-4 reports EMITTING (the
physical footswitch), PAUSED when the LS-4 falls back to ARMED (footswitch released). It only
*proposes* power; the safety layer decides what is written, and keeps the books: delivered
energy, which fibres have reached their budget, and thermal dose are the supervisor's, read here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from protocol.ft8 import FT8Snapshot
from protocol.ls4 import DeviceState, LS4Snapshot
from safety.supervisor import SafetySupervisor
from safety.types import Proposal

from .journal import Journal, Sample
from .plan import Endpoint, FibreMode, Plan, ProbeRole
from .session_states import TERMINAL_STATES, Event, State, transition

log = logging.getLogger("laserd.session")

N_CHANNELS = 4
N_PROBES = 8
SAMPLE_PERIOD_S = 1.0  # journal samples, in scaled (device) time
# Modes whose controller exists; the others are refused at load with a clear line.
AVAILABLE_MODES = frozenset({FibreMode.FIXED_POWER})


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

    # --- state ---------------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self.state not in TERMINAL_STATES

    def apply(self, event: Event, reason: str, *, details: dict[str, Any] | None = None) -> State:
        new = transition(self.state, event)
        self.journal.set_state(self.session_id, new, reason, details=details)
        log.info("session=%d event=%s from=%s to=%s reason=%s", self.session_id, event, self.state, new, reason)
        self.state = new
        if new in TERMINAL_STATES:
            self.end_reason = reason
        return new

    # --- the safety layer's books -----------------------------------------------------------

    def fibre_done(self, channel: int) -> bool:
        """This illumination's budget is in: the safety layer stopped the fibre for good."""
        return channel in self.safety.fibres_stopped

    def cem43_min(self, probe: int) -> float:
        return self.safety.cem43_min(probe)

    # --- what the session asks for ---------------------------------------------------------

    def propose(self, ls4: LS4Snapshot | None) -> Proposal:
        """FIXED_POWER: each fibre at its power until its budget for this illumination is in."""
        if ls4 is None or self.state not in (State.ARMED, State.EMITTING, State.PAUSED):
            return Proposal()
        setpoints = [0] * N_CHANNELS
        enables = [False] * N_CHANNELS
        for fibre in self.plan.fibres:
            if fibre.mode is FibreMode.FIXED_POWER and fibre.power_w is not None and not self.fibre_done(fibre.channel):
                setpoints[fibre.channel] = round(min(fibre.power_w, fibre.max_power_w) * 1000.0)
                enables[fibre.channel] = True
        return Proposal(setpoint_mw=tuple(setpoints), enable=tuple(enables))

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

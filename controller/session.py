"""One treatment session: a loaded plan, its state, its illuminations, and what it asks of the laser.

The session follows the device: it becomes EMITTING when the LS-4 reports EMITTING (the
physical footswitch), PAUSED when the LS-4 falls back to ARMED (footswitch released). It only
*proposes* power; the safety layer decides what is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from protocol.ft8 import FT8Snapshot
from protocol.ls4 import DeviceState, LS4Snapshot
from safety.dose import Cem43Accumulator
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
    state: State = State.LOADED
    illumination: int = 0
    #: LS-4 energy counters (J) when the session and the current illumination began
    session_baseline_j: tuple[float, ...] = (0.0,) * N_CHANNELS
    illumination_baseline_j: tuple[float, ...] = (0.0,) * N_CHANNELS
    dose: Cem43Accumulator = field(default_factory=Cem43Accumulator)
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

    # --- energy --------------------------------------------------------------------------------

    def session_energy_j(self, ls4: LS4Snapshot) -> tuple[float, ...]:
        return tuple(max(0.0, e / 1000.0 - b) for e, b in zip(ls4.energy_mj, self.session_baseline_j))

    def illumination_energy_j(self, ls4: LS4Snapshot) -> tuple[float, ...]:
        return tuple(max(0.0, e / 1000.0 - b) for e, b in zip(ls4.energy_mj, self.illumination_baseline_j))

    def fibre_done(self, channel: int, ls4: LS4Snapshot) -> bool:
        fibre = self.plan.fibre(channel)
        return self.illumination_energy_j(ls4)[channel] >= fibre.energy_budget_j

    def start_illumination(self, ls4: LS4Snapshot) -> None:
        self.illumination_baseline_j = tuple(e / 1000.0 for e in ls4.energy_mj)

    # --- what the session asks for ---------------------------------------------------------

    def propose(self, ls4: LS4Snapshot | None) -> Proposal:
        """FIXED_POWER: each fibre at its power until its budget for this illumination is in."""
        if ls4 is None or self.state not in (State.ARMED, State.EMITTING, State.PAUSED):
            return Proposal()
        setpoints = [0] * N_CHANNELS
        enables = [False] * N_CHANNELS
        for fibre in self.plan.fibres:
            if fibre.mode is FibreMode.FIXED_POWER and fibre.power_w is not None and not self.fibre_done(fibre.channel, ls4):
                setpoints[fibre.channel] = round(min(fibre.power_w, fibre.max_power_w) * 1000.0)
                enables[fibre.channel] = True
        return Proposal(setpoint_mw=tuple(setpoints), enable=tuple(enables))

    # --- following the device ----------------------------------------------------------------

    def observe(self, *, now_s: float, ls4: LS4Snapshot | None, ft8: FT8Snapshot | None, setpoint_mw: tuple[int, ...]) -> Event | None:
        """Update dose and state from this cycle's readings; returns the end-of-illumination event to raise, if due."""
        if ft8 is not None:
            for probe in self.plan.probes:
                temp = ft8.temperature_c[probe.channel]
                if temp is not None:
                    self.dose.add(probe.channel, time_s=now_s, temp_c=temp)
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
        return self._endpoint_event(ls4)

    def _endpoint_event(self, ls4: LS4Snapshot) -> Event | None:
        if self.state not in (State.EMITTING, State.PAUSED, State.PULLBACK):
            return None
        budgets_in = all(self.fibre_done(f.channel, ls4) for f in self.plan.fibres)
        margins = self.plan.probes_with_role(ProbeRole.MARGIN)
        margin_lethal = bool(margins) and all(
            self.dose.value_min(p.channel) >= (p.lethal_cem43_min or 240.0) for p in margins
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
                energy_j=self.session_energy_j(ls4),
                temperature_c=temps,
                cem43_min=tuple(self.dose.value_min(c) if c in used else None for c in range(N_PROBES)),
                device_time_ms=ls4.uptime_ms,
            ),
        )

    def summary(self, ls4: LS4Snapshot | None) -> dict[str, Any]:
        energy = self.session_energy_j(ls4) if ls4 is not None else None
        illum = self.illumination_energy_j(ls4) if ls4 is not None else None
        return {
            "session_id": self.session_id,
            "state": str(self.state),
            "illumination": self.illumination,
            "illuminations": self.plan.illuminations,
            "patient_id": self.plan.patient_id,
            "plan_sha256": self.plan.sha256,
            "session_energy_j": None if energy is None else [round(e, 2) for e in energy],
            "illumination_energy_j": None if illum is None else [round(e, 2) for e in illum],
            "budgets_j": [self.plan.fibre(c).energy_budget_j if c in {f.channel for f in self.plan.fibres} else None for c in range(N_CHANNELS)],
            "cem43_min": {p.channel: round(self.dose.value_min(p.channel), 3) for p in self.plan.probes},
            "end_reason": self.end_reason,
        }


def check_modes_available(plan: Plan) -> None:
    for fibre in plan.fibres:
        if fibre.mode not in AVAILABLE_MODES:
            raise SessionError(
                f"plan: fibres[channel {fibre.channel}].mode {fibre.mode} is not available yet (closed-loop control is its own issue); use FIXED_POWER"
            )

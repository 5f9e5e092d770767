"""The safety rules as one declarative table, in the spirit of the People's Ventilator Project's
alarm rules: what each rule reads, how it acts, how long it waits, and what it says.

The supervisor makes every Finding through `RULES[name].finding(...)`, so a rule that is not in
this table cannot fire; docs/safety.md carries `markdown_table()` verbatim (a test holds the two
together), and the UI can read the same rows.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from . import limits as L
from .types import Finding, Severity


class Effect(enum.Enum):
    CLAMP = "clamp"  # the proposal is limited this cycle
    HOLD = "hold"  # no channel may rise above the last cycle's decision
    FIBRE_STOP = "fibre stop"  # that fibre is off for the rest of the session
    TRIP = "trip"  # the one latched shutdown: all off until an operator ack
    RECORD = "record"  # journal only


class Reset(enum.Enum):
    CYCLE = "next cycle"  # soft: gone when the condition is
    ACK = "ack once gone"  # hard: an operator ack, once the condition has cleared
    SESSION = "new session"  # the cause cannot clear within a session (a dose is never undone)


@dataclass(frozen=True, kw_only=True)
class Rule:
    name: str
    severity: Severity
    effect: Effect
    reads: str
    message: str  # str.format template: {channel} {value} {limit} and rule-specific fields
    window: str = ""  # the SafetyLimits field that holds its persistence window; "" = immediate
    window_bound: str = "immediate"  # the stated upper bound on that window
    reset: Reset = Reset.ACK

    def finding(
        self,
        *,
        channel: int | None = None,
        value: float | None = None,
        limit: float | None = None,
        time_s: float | None = None,
        **fields: Any,
    ) -> Finding:
        message = self.message.format(channel=channel, value=value, limit=limit, **fields)
        return Finding(
            rule=self.name, severity=self.severity, message=message, channel=channel, value=value, limit=limit, time_s=time_s
        )


SOFT, HARD = Severity.SOFT, Severity.HARD
_CYCLE = "cycle period"

RULE_LIST: tuple[Rule, ...] = (
    # --- soft: clamp or back off, reported -------------------------------------------------------
    Rule(name="no_session", severity=SOFT, effect=Effect.CLAMP, reset=Reset.CYCLE,
         reads="proposal", message="no session begun: all channels held at 0 mW"),
    Rule(name="channel_not_in_plan", severity=SOFT, effect=Effect.CLAMP, reset=Reset.CYCLE,
         reads="proposal, energy_budget_j",
         message="channel {channel}: not in the plan: held at 0 mW"),
    Rule(name="power_clamp", severity=SOFT, effect=Effect.CLAMP, reset=Reset.CYCLE,
         reads="proposal, max_power_mw",
         message="channel {channel}: proposed {value:.0f} mW outside 0..{limit:.0f} mW: clamped"),
    Rule(name="reading_missing", severity=SOFT, effect=Effect.HOLD, reset=Reset.CYCLE,
         reads="LS-4 / FT-8 read result",
         message="{what} read failed: no channel may rise until fresh readings"),
    Rule(name="tip_temp_backoff", severity=SOFT, effect=Effect.CLAMP, reset=Reset.CYCLE,
         reads="FT-8 TEMPERATURE of tip probes",
         message="probe {channel} (tip of channel {guarded}): {value:.1f} °C within {margin:g} °C of the cap {limit:.1f} °C: channel {guarded} backed off to {ceiling_mw} mW"),
    Rule(name="protected_temp_backoff", severity=SOFT, effect=Effect.CLAMP, reset=Reset.CYCLE,
         reads="FT-8 TEMPERATURE of protected probes",
         message="protected probe {channel}: {value:.1f} °C within {margin:g} °C of its limit {limit:.1f} °C: all channels backed off to {ceiling_mw} mW"),
    Rule(name="cem43_warning", severity=SOFT, effect=Effect.HOLD, reset=Reset.SESSION,
         reads="CEM43 of protected probes",
         message="protected probe {channel}: CEM43 {value:.2f} min past {fraction:.0%} of its limit {limit:g} min: no channel may rise"),
    Rule(name="fibre_energy_taper", severity=SOFT, effect=Effect.CLAMP, reset=Reset.CYCLE,
         reads="LS-4 ENERGY, host integral, energy_budget_j",
         message="channel {channel}: {value:.2f} J left of its budget: power tapered to {ceiling_mw} mW"),
    Rule(name="fibre_energy_budget", severity=SOFT, effect=Effect.FIBRE_STOP, reset=Reset.SESSION,
         reads="LS-4 ENERGY, host integral, energy_budget_j",
         message="channel {channel}: energy budget reached ({value:.2f} of {limit:.2f} J): fibre stopped for the rest of the session"),
    Rule(name="session_energy_taper", severity=SOFT, effect=Effect.CLAMP, reset=Reset.CYCLE,
         reads="LS-4 ENERGY, host integral, session_energy_budget_j",
         message="session: {value:.2f} J left of its budget: total power tapered to {ceiling_mw} mW"),
    Rule(name="latch_reset", severity=SOFT, effect=Effect.RECORD, reset=Reset.CYCLE,
         reads="operator ack",
         message="operator ack: latch reset (cause was {cause})"),
    # --- hard: the latched shutdown ----------------------------------------------------------------
    Rule(name="session_energy_budget", severity=HARD, effect=Effect.TRIP, reset=Reset.SESSION,
         reads="LS-4 ENERGY, host integral, session_energy_budget_j",
         message="session energy budget reached ({value:.2f} of {limit:.2f} J): all channels stopped"),
    Rule(name="session_time", severity=HARD, effect=Effect.TRIP, reset=Reset.SESSION,
         reads="host clock since begin_session",
         message="session time {value:.1f} s past its limit {limit:.1f} s"),
    Rule(name="energy_crosscheck", severity=HARD, effect=Effect.TRIP, reset=Reset.SESSION,
         reads="LS-4 ENERGY vs host trapezoid of OUTPUT_POWER",
         message="channel {channel}: LS-4 counter says {value:.2f} J, host integral {host_j:.2f} J: apart by more than {limit:.2f} J"),
    Rule(name="energy_counter_backwards", severity=HARD, effect=Effect.TRIP, reset=Reset.SESSION,
         reads="LS-4 ENERGY",
         message="channel {channel}: LS-4 energy counter went back from {limit:.3f} J to {value:.3f} J"),
    Rule(name="power_above_limit", severity=HARD, effect=Effect.TRIP,
         reads="LS-4 OUTPUT_POWER, max_power_mw",
         message="channel {channel}: measured {value:.0f} mW above its limit {limit:.0f} mW (+{tolerance:.0%})"),
    Rule(name="power_mismatch", severity=HARD, effect=Effect.TRIP,
         window="power_mismatch_window_s", window_bound=f"{L.POWER_MISMATCH_WINDOW_MAX_S:g} s + one {_CYCLE} (< the LS-4's own 0.5 s); none beyond ±{L.POWER_GROSS_MISMATCH_FRACTION:.0%}",
         reads="LS-4 OUTPUT_POWER vs ACTIVE_SETPOINT",
         message="channel {channel}: measured {value:.0f} mW vs commanded {limit:.0f} mW: more than {tolerance:.0%} apart"),
    Rule(name="uncontrolled_emission", severity=HARD, effect=Effect.TRIP,
         window="uncommanded_window_s", window_bound=f"{L.UNCOMMANDED_WINDOW_MAX_S:g} s + one {_CYCLE}",
         reads="LS-4 OUTPUT_POWER, ACTIVE_SETPOINT vs what the host wrote",
         message="channel {channel}: {what} {value:.0f} mW where the host allows {limit:.0f} mW"),
    Rule(name="tip_temp_cap", severity=HARD, effect=Effect.TRIP,
         reads="FT-8 TEMPERATURE of tip probes",
         message="probe {channel} (tip of channel {guarded}): {value:.1f} °C at or above the cap {limit:.1f} °C"),
    Rule(name="protected_temp_limit", severity=HARD, effect=Effect.TRIP,
         reads="FT-8 TEMPERATURE of protected probes",
         message="protected probe {channel}: {value:.1f} °C at or above its limit {limit:.1f} °C"),
    Rule(name="protected_cem43_limit", severity=HARD, effect=Effect.TRIP, reset=Reset.SESSION,
         reads="CEM43 of protected probes",
         message="protected probe {channel}: CEM43 {value:.2f} min at or above its limit {limit:g} min"),
    Rule(name="probe_stale", severity=HARD, effect=Effect.TRIP,
         window="stale_after_periods", window_bound=f"stale_after_periods × SAMPLE_PERIOD_ACTUAL, at most {L.STALE_WINDOW_MAX_S:g} s, + one {_CYCLE}",
         reads="FT-8 SAMPLE_COUNTER",
         message="FT-8 SAMPLE_COUNTER unchanged for {value:.2f} s (limit {limit:.2f} s): readings stale"),
    Rule(name="probe_invalid", severity=HARD, effect=Effect.TRIP,
         reads="FT-8 STATUS, TEMPERATURE (0x8000), PROBE_STATUS",
         message="probe {channel}: no valid reading ({why})"),
    Rule(name="probe_implausible", severity=HARD, effect=Effect.TRIP,
         reads="FT-8 TEMPERATURE, SAMPLE_COUNTER",
         message="probe {channel}: {why}"),
    Rule(name="probe_frozen", severity=HARD, effect=Effect.TRIP,
         window="probe_frozen_reads", window_bound=f"at most {L.PROBE_FROZEN_READS_RANGE[1]} fresh samples",
         reads="FT-8 TEMPERATURE, SAMPLE_COUNTER",
         message="probe {channel}: {value:.0f} fresh samples all read exactly {reading:.2f} °C: probe stuck"),
    Rule(name="ls4_fault", severity=HARD, effect=Effect.TRIP,
         reads="LS-4 DEVICE_STATE, FAULT_CODE, FAULT_CHANNEL",
         message="LS-4 fault {fault}{where}"),
    Rule(name="ls4_unexpected_state", severity=HARD, effect=Effect.TRIP,
         reads="LS-4 DEVICE_STATE vs the state the host asked for",
         message="LS-4 is {state}; the host asked for {expected}"),
    Rule(name="ls4_rebooted", severity=HARD, effect=Effect.TRIP,
         reads="LS-4 UPTIME",
         message="LS-4 UPTIME went back from {limit:.0f} ms to {value:.0f} ms: the device restarted"),
    Rule(name="wrong_device", severity=HARD, effect=Effect.TRIP,
         reads="LS-4 / FT-8 MAP_VERSION, FIRMWARE_VERSION, CHANNEL_COUNT, MAX_CHANNEL_POWER",
         message="{device}: {what} is {got}, expected {expected}: not the device this host was built for"),
    Rule(name="link_lost", severity=HARD, effect=Effect.TRIP,
         window="link_loss_window_s", window_bound=f"{L.LINK_LOSS_WINDOW_MAX_S:g} s + one {_CYCLE} (< the LS-4 watchdog)",
         reads="link result of every request",
         message="link lost: {what} for {value:.2f} s"),
    Rule(name="cycle_overrun", severity=HARD, effect=Effect.TRIP,
         reads="control cycle start vs its schedule",
         message="control cycle started {value:.3f} s late (bound {limit:.3f} s)"),
    Rule(name="shutdown_unconfirmed", severity=HARD, effect=Effect.TRIP,
         reads="LS-4 read-back after the shutdown writes",
         message="shutdown not confirmed by the LS-4 ({why}): heartbeat stopped so its watchdog stops emission"),
    Rule(name="writer_refused_decision", severity=HARD, effect=Effect.TRIP,
         reads="the decision handed to the writer",
         message="writer refused a decision: {why}"),
    Rule(name="operator_stop", severity=HARD, effect=Effect.TRIP,
         reads="operator command",
         message="operator stop: {why}"),
    Rule(name="host_error", severity=HARD, effect=Effect.TRIP,
         reads="the daemon",
         message="host error: {why}"),
)

RULES: dict[str, Rule] = {r.name: r for r in RULE_LIST}
assert len(RULES) == len(RULE_LIST), "rule names must be unique"


def markdown_table() -> str:
    """The rule table as docs/safety.md shows it."""
    lines = [
        "| rule | level | effect | persistence window (upper bound) | reads | reset |",
        "|---|---|---|---|---|---|",
    ]
    for r in RULE_LIST:
        window = f"`{r.window}` ({r.window_bound})" if r.window else r.window_bound
        lines.append(f"| `{r.name}` | {r.severity.value} | {r.effect.value} | {window} | {r.reads} | {r.reset.value} |")
    return "\n".join(lines)

"""Values that cross the boundary between the controller and the safety layer.

The controller *proposes* per-channel power; the safety layer *decides* what is written to the
LS-4 and is the only code that writes its setpoint and enable registers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from protocol import ls4

N_CHANNELS = ls4.CHANNEL_COUNT


class Severity(enum.Enum):
    SOFT = "soft"  # clamped or backed off, reported, emission goes on
    HARD = "hard"  # trip: the latched shutdown


@dataclass(frozen=True, kw_only=True)
class Proposal:
    """What the controller would like written this cycle."""

    setpoint_mw: tuple[int, ...] = (0,) * N_CHANNELS
    enable: tuple[bool, ...] = (False,) * N_CHANNELS


@dataclass(frozen=True, kw_only=True)
class Finding:
    """One rule's verdict: a soft clamp, or a hard trip."""

    rule: str  # stable identifier, e.g. "fibre_energy_budget", "probe_stale"
    severity: Severity
    message: str  # one line, for the operator and the journal
    channel: int | None = None  # LS-4 channel, or FT-8 channel for probe rules
    value: float | None = None  # the measured value that broke the rule
    limit: float | None = None
    time_s: float | None = None  # host time of the check that found it (the daemon's scaled monotonic clock)

    @property
    def key(self) -> tuple[str, int | None]:
        """One condition: a rule on one channel. Reported once when it appears, not every cycle."""
        return (self.rule, self.channel)


@dataclass(frozen=True, kw_only=True)
class Decision:
    """What the safety layer lets through this cycle."""

    setpoint_mw: tuple[int, ...]
    enable: tuple[bool, ...]
    findings: tuple[Finding, ...] = field(default=())

    @property
    def trips(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.HARD)


SAFE_OUTPUT = Decision(setpoint_mw=(0,) * N_CHANNELS, enable=(False,) * N_CHANNELS)

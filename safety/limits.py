"""Dose limits and the bounded tunables of the safety layer.

Two sources make one `SafetyLimits`: the device hard limits from the site config, and the plan's
limits, which may only lower them (`SafetyLimits.lowered_by`). Every tunable has a stated bound
below (UPPER_CASE, unit in the name); a value outside it is refused when the limits are built,
never discovered during a treatment. Nothing here reads a file: the numbers that come from the
datasheets are taken from `protocol.ls4` / `protocol.ft8`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from protocol import ft8, ls4

N_CHANNELS = ls4.CHANNEL_COUNT
N_PROBES = ft8.CHANNEL_COUNT

# --- bounds on the tunables ------------------------------------------------------------------
# The LS-4 trips on its own after 500 ms of a >20 % power deviation. The host's window plus one
# 100 ms cycle plus the 10 ms stop must stay below that, so the host is first (issue: "caught by
# the host before the device's own fault").
POWER_MISMATCH_WINDOW_MAX_S = 0.30
# IEC 60601-2-22 allows +-20 % output accuracy; a tolerance wider than the device's own is useless.
POWER_TOLERANCE_FRACTION_MAX = ls4.POWER_DEVIATION_FRACTION
# Below this the relative check is noise-dominated; above the device's 500 mW it would be later
# than the device. (The simulator's photodiode noise floor is 2 mW, 0.5 %.)
POWER_CHECK_MIN_MW_RANGE = (50, ls4.POWER_DEVIATION_MIN_SETPOINT_MW)
# A deviation this large cannot be noise: it trips at once, without the window above.
POWER_GROSS_MISMATCH_FRACTION = 0.50
# Output on a channel the host commanded to 0: the LS-4 stops within 10 ms of a lowered setpoint,
# so two consecutive observations (one 100 ms cycle apart) are the most this may wait.
UNCOMMANDED_WINDOW_MAX_S = 0.10
UNCOMMANDED_POWER_MW_MAX = 200
# Two missed 100 ms cycles are RS-485 noise (one CRC error, one timeout); three are a lost link.
# Must stay below the LS-4 watchdog, so the host latches (and journals) before the device trips.
LINK_LOSS_WINDOW_MAX_S = 0.30
# An FT-8 reading older than this is no temperature monitoring at all: at ~20 degC/s near a
# bare fibre, 0.5 s is 10 degC unseen.
STALE_WINDOW_MAX_S = 0.50
STALE_AFTER_PERIODS_RANGE = (2, 10)  # 1 would trip on phase jitter between host cycle and FT-8 sampling
# Identical consecutive fresh samples of a probe (a frozen / stuck reading). 50 samples at the
# FT-8's 20 Hz is 2.5 s.
PROBE_FROZEN_READS_RANGE = (5, 50)
# The late start of a control cycle: measurements older than cycle + overrun drive the decision.
# Must stay below the LS-4 watchdog minus one cycle.
MAX_CYCLE_OVERRUN_MAX_S = 0.25
# Physics: tissue beside a bare fibre heats at most ~10-20 degC/s at 10 W (the default thermal
# model gives 7.5 degC/s at the tip at 10 W). Below 5 the rate check would trip on real heating;
# above 100 it would catch nothing the range check does not.
PROBE_RATE_C_PER_S_RANGE = (5.0, 100.0)
# Added to rate x dt: the FT-8's +-0.3 degC accuracy on each of two samples, plus noise.
PROBE_RATE_ALLOWANCE_C = 1.0
PROBE_RANGE_C = ft8.MEASURING_RANGE_C  # a valid FT-8 reading is always inside it
# Energy cross-check, LS-4 counter vs host trapezoid of OUTPUT_POWER (see docs/safety.md): a
# step of P within a cycle dt costs at most P*dt/2 of trapezoid error (0.5 J at 10 W, 100 ms).
ENERGY_CROSSCHECK_TOLERANCE_J_RANGE = (0.5, 10.0)
ENERGY_CROSSCHECK_TOLERANCE_FRACTION_MAX = 0.10
WATCHDOG_TIMEOUT_MS_RANGE = (50, 2000)  # LS-4 datasheet, holding register 2
TIP_TEMP_CAP_C_MAX = ft8.MEASURING_RANGE_C[1]
BACKOFF_MARGIN_C_RANGE = (0.5, 20.0)
CEM43_WARN_FRACTION_RANGE = (0.1, 1.0)
# The longest a session may be configured to last: a day would be nonsense for a liver ablation.
MAX_SESSION_S_MAX = 4 * 3600.0
# Defaults, each justified where its bound is.
DEFAULT_WATCHDOG_TIMEOUT_MS = 500  # the LS-4 default
DEFAULT_POWER_CHECK_MIN_MW = 200  # 20 % of 200 mW = 40 mW, 20x the simulator's 2 mW noise floor
DEFAULT_POWER_MISMATCH_WINDOW_S = 0.20
DEFAULT_UNCOMMANDED_POWER_MW = 50
DEFAULT_UNCOMMANDED_WINDOW_S = 0.05
DEFAULT_LINK_LOSS_WINDOW_S = 0.25
# 5 x 50 ms = 250 ms: no shorter than the link-loss window, or one noisy bus cycle would read as stale
DEFAULT_STALE_AFTER_PERIODS = 5
DEFAULT_PROBE_FROZEN_READS = 20
DEFAULT_MAX_CYCLE_OVERRUN_S = 0.15
DEFAULT_MAX_PROBE_RATE_C_PER_S = 30.0  # 1.5x the ~20 degC/s physical maximum
DEFAULT_ENERGY_CROSSCHECK_TOLERANCE_J = 2.0
DEFAULT_ENERGY_CROSSCHECK_TOLERANCE_FRACTION = 0.05
DEFAULT_TIP_BACKOFF_MARGIN_C = 5.0
DEFAULT_PROTECTED_BACKOFF_MARGIN_C = 3.0
DEFAULT_CEM43_WARN_FRACTION = 0.5


class LimitsError(ValueError):
    """Limits that are inconsistent, out of their bounds, or a plan that raises a device limit (one line)."""


@dataclass(frozen=True, kw_only=True)
class SafetyLimits:
    """Everything the supervisor enforces. Units are in the names; channels are LS-4 0-3, probes FT-8 0-7."""

    # --- dose limits (device hard limits, which a plan may lower) ---
    max_power_mw: tuple[int, ...]  # per LS-4 channel
    energy_budget_j: tuple[float | None, ...]  # per fibre; None = channel not in use (held off)
    session_energy_budget_j: float
    tip_temp_cap_c: float
    max_session_s: float
    tip_probes: Mapping[int, int] = field(default_factory=dict)  # FT-8 channel -> LS-4 channel it guards
    protected_probes: Mapping[int, tuple[float, float]] = field(default_factory=dict)  # FT-8 ch -> (max_temp_c, max_cem43_min)
    monitored_probes: frozenset[int] = frozenset()  # must be valid and fresh; tip and protected probes are added
    # --- the LS-4's own watchdog: also the longest one write can stay in force ---
    watchdog_timeout_ms: int = DEFAULT_WATCHDOG_TIMEOUT_MS
    # --- plausibility and persistence (bounded tunables) ---
    power_tolerance_fraction: float = ls4.POWER_DEVIATION_FRACTION
    power_check_min_mw: int = DEFAULT_POWER_CHECK_MIN_MW
    power_mismatch_window_s: float = DEFAULT_POWER_MISMATCH_WINDOW_S
    uncommanded_power_mw: int = DEFAULT_UNCOMMANDED_POWER_MW
    uncommanded_window_s: float = DEFAULT_UNCOMMANDED_WINDOW_S
    link_loss_window_s: float = DEFAULT_LINK_LOSS_WINDOW_S
    stale_after_periods: int = DEFAULT_STALE_AFTER_PERIODS
    probe_frozen_reads: int = DEFAULT_PROBE_FROZEN_READS
    max_cycle_overrun_s: float = DEFAULT_MAX_CYCLE_OVERRUN_S
    probe_range_c: tuple[float, float] = PROBE_RANGE_C
    max_probe_rate_c_per_s: float = DEFAULT_MAX_PROBE_RATE_C_PER_S
    energy_crosscheck_tolerance_j: float = DEFAULT_ENERGY_CROSSCHECK_TOLERANCE_J
    energy_crosscheck_tolerance_fraction: float = DEFAULT_ENERGY_CROSSCHECK_TOLERANCE_FRACTION
    # --- soft levels ---
    tip_backoff_margin_c: float = DEFAULT_TIP_BACKOFF_MARGIN_C
    protected_backoff_margin_c: float = DEFAULT_PROTECTED_BACKOFF_MARGIN_C
    cem43_warn_fraction: float = DEFAULT_CEM43_WARN_FRACTION

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "max_power_mw", tuple(int(p) for p in self.max_power_mw))
        set_(self, "energy_budget_j", tuple(None if b is None else float(b) for b in self.energy_budget_j))
        set_(self, "tip_probes", MappingProxyType({int(k): int(v) for k, v in dict(self.tip_probes).items()}))
        set_(
            self,
            "protected_probes",
            MappingProxyType({int(k): (float(v[0]), float(v[1])) for k, v in dict(self.protected_probes).items()}),
        )
        # more monitoring is never less safe: a probe that guards something is monitored
        set_(self, "monitored_probes", frozenset(int(p) for p in self.monitored_probes) | set(self.tip_probes) | set(self.protected_probes))
        set_(self, "probe_range_c", (float(self.probe_range_c[0]), float(self.probe_range_c[1])))
        problems = _problems(self)
        if problems:
            raise LimitsError("safety limits: " + "; ".join(problems))

    # --- derived ---------------------------------------------------------------------------

    @property
    def watchdog_timeout_s(self) -> float:
        return self.watchdog_timeout_ms / 1000.0

    @property
    def write_horizon_s(self) -> float:
        """The longest one cycle write can stay in force: the LS-4 stops by itself when the
        heartbeat has not changed for WATCHDOG_TIMEOUT, plus its 10 ms stop. The energy taper
        never authorises more than the budget's remainder over this horizon."""
        return self.watchdog_timeout_s + ls4.STOP_WITHIN_MS / 1000.0

    def in_plan(self, channel: int) -> bool:
        return self.energy_budget_j[channel] is not None and self.max_power_mw[channel] > 0

    # --- a plan lowers, never raises -----------------------------------------------------------

    def lowered_by(self, **plan: Any) -> SafetyLimits:
        """These (device hard) limits lowered by a plan's; refuse (LimitsError) a plan that raises anything.

        Keyword names are the fields of SafetyLimits. Each field has a direction that is "safer":
        lower for limits, windows and tolerances; narrower for ranges; larger for back-off margins;
        more probes guarded and monitored. A plan value in the other direction is refused, all
        offences listed in one line.
        """
        merged: dict[str, Any] = {}
        problems: list[str] = []
        for name, value in plan.items():
            merge = _TIGHTER.get(name)
            if merge is None:
                raise LimitsError(f"plan: unknown limit {name!r}; known: {', '.join(sorted(_TIGHTER))}")
            result, offences = merge(name, getattr(self, name), value)
            problems.extend(offences)
            merged[name] = result
        if problems:
            raise LimitsError("plan raises device limits: " + "; ".join(problems))
        return dataclasses.replace(self, **merged)


# --- validation ---------------------------------------------------------------------------------


def _within(problems: list[str], name: str, value: float, lo: float, hi: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and lo <= value <= hi):
        problems.append(f"{name} {value!r} outside {lo:g}..{hi:g}")


def _problems(lim: SafetyLimits) -> list[str]:
    p: list[str] = []
    if len(lim.max_power_mw) != N_CHANNELS or len(lim.energy_budget_j) != N_CHANNELS:
        p.append(f"max_power_mw and energy_budget_j need {N_CHANNELS} entries each")
        return p
    for c, mw in enumerate(lim.max_power_mw):
        _within(p, f"max_power_mw[{c}]", mw, 0, ls4.MAX_CHANNEL_POWER_MW)
    for c, b in enumerate(lim.energy_budget_j):
        if b is not None:
            _within(p, f"energy_budget_j[{c}]", b, 0.0, 1e7)
    _within(p, "session_energy_budget_j", lim.session_energy_budget_j, 0.0, 1e7)
    _within(p, "tip_temp_cap_c", lim.tip_temp_cap_c, 37.0, TIP_TEMP_CAP_C_MAX)
    _within(p, "max_session_s", lim.max_session_s, 0.0, MAX_SESSION_S_MAX)
    for probe, guarded in lim.tip_probes.items():
        if not 0 <= probe < N_PROBES or not 0 <= guarded < N_CHANNELS:
            p.append(f"tip_probes {probe}->{guarded}: probe must be 0-{N_PROBES - 1}, channel 0-{N_CHANNELS - 1}")
    for probe, (max_c, max_cem) in lim.protected_probes.items():
        if not 0 <= probe < N_PROBES:
            p.append(f"protected_probes {probe}: probe must be 0-{N_PROBES - 1}")
        _within(p, f"protected_probes[{probe}] max_temp_c", max_c, 37.0, PROBE_RANGE_C[1])
        _within(p, f"protected_probes[{probe}] max_cem43_min", max_cem, 0.0, 1e6)
    for probe in lim.monitored_probes:
        if not 0 <= probe < N_PROBES:
            p.append(f"monitored_probes {probe}: must be 0-{N_PROBES - 1}")
    _within(p, "watchdog_timeout_ms", lim.watchdog_timeout_ms, *WATCHDOG_TIMEOUT_MS_RANGE)
    _within(p, "power_tolerance_fraction", lim.power_tolerance_fraction, 0.01, POWER_TOLERANCE_FRACTION_MAX)
    _within(p, "power_check_min_mw", lim.power_check_min_mw, *POWER_CHECK_MIN_MW_RANGE)
    _within(p, "power_mismatch_window_s", lim.power_mismatch_window_s, 0.0, POWER_MISMATCH_WINDOW_MAX_S)
    _within(p, "uncommanded_power_mw", lim.uncommanded_power_mw, 1, UNCOMMANDED_POWER_MW_MAX)
    _within(p, "uncommanded_window_s", lim.uncommanded_window_s, 0.0, UNCOMMANDED_WINDOW_MAX_S)
    _within(p, "link_loss_window_s", lim.link_loss_window_s, 0.0, LINK_LOSS_WINDOW_MAX_S)
    _within(p, "stale_after_periods", lim.stale_after_periods, *STALE_AFTER_PERIODS_RANGE)
    _within(p, "probe_frozen_reads", lim.probe_frozen_reads, *PROBE_FROZEN_READS_RANGE)
    _within(p, "max_cycle_overrun_s", lim.max_cycle_overrun_s, 0.0, MAX_CYCLE_OVERRUN_MAX_S)
    lo, hi = lim.probe_range_c
    if not (PROBE_RANGE_C[0] <= lo < hi <= PROBE_RANGE_C[1]):
        p.append(f"probe_range_c {lim.probe_range_c} must lie within the FT-8 range {PROBE_RANGE_C}")
    _within(p, "max_probe_rate_c_per_s", lim.max_probe_rate_c_per_s, *PROBE_RATE_C_PER_S_RANGE)
    _within(p, "energy_crosscheck_tolerance_j", lim.energy_crosscheck_tolerance_j, *ENERGY_CROSSCHECK_TOLERANCE_J_RANGE)
    _within(p, "energy_crosscheck_tolerance_fraction", lim.energy_crosscheck_tolerance_fraction, 0.0, ENERGY_CROSSCHECK_TOLERANCE_FRACTION_MAX)
    _within(p, "tip_backoff_margin_c", lim.tip_backoff_margin_c, *BACKOFF_MARGIN_C_RANGE)
    _within(p, "protected_backoff_margin_c", lim.protected_backoff_margin_c, *BACKOFF_MARGIN_C_RANGE)
    _within(p, "cem43_warn_fraction", lim.cem43_warn_fraction, *CEM43_WARN_FRACTION_RANGE)
    # a window must end before the device's own watchdog would have stopped emission
    if lim.link_loss_window_s >= lim.watchdog_timeout_s:
        p.append(f"link_loss_window_s {lim.link_loss_window_s:g} must be below the watchdog {lim.watchdog_timeout_s:g} s")
    if lim.max_cycle_overrun_s >= lim.watchdog_timeout_s:
        p.append(f"max_cycle_overrun_s {lim.max_cycle_overrun_s:g} must be below the watchdog {lim.watchdog_timeout_s:g} s")
    return p


# --- "tighter" per field, for lowered_by ------------------------------------------------------------

Merge = Callable[[str, Any, Any], tuple[Any, list[str]]]


def _lower(name: str, device: Any, plan: Any) -> tuple[Any, list[str]]:
    return plan, ([] if plan <= device else [f"{name} {plan:g} > {device:g}"])


def _higher(name: str, device: Any, plan: Any) -> tuple[Any, list[str]]:
    return plan, ([] if plan >= device else [f"{name} {plan:g} < {device:g} (a smaller margin is less safe)"])


def _lower_each(name: str, device: tuple[Any, ...], plan: Any) -> tuple[Any, list[str]]:
    plan = tuple(plan)
    if len(plan) != len(device):
        return device, [f"{name} needs {len(device)} entries"]
    out: list[str] = []
    for c, (d, v) in enumerate(zip(device, plan)):
        if v is None:
            continue  # a channel not in use is always allowed
        if d is None:
            out.append(f"{name}[{c}] {v:g} on a channel the device limits do not allow")
        elif v > d:
            out.append(f"{name}[{c}] {v:g} > {d:g}")
    return plan, out


def _narrower(name: str, device: tuple[float, float], plan: Any) -> tuple[Any, list[str]]:
    lo, hi = plan
    return (lo, hi), ([] if lo >= device[0] and hi <= device[1] else [f"{name} {plan} wider than {device}"])


def _more_probes(name: str, device: Mapping[int, Any], plan: Any) -> tuple[Any, list[str]]:
    """Guards are added, never removed; a tip probe cannot be re-assigned to another channel."""
    merged = dict(device)
    out: list[str] = []
    for k, v in dict(plan).items():
        k = int(k)
        if name == "tip_probes":
            if k in merged and merged[k] != int(v):
                out.append(f"tip_probes {k} guards channel {merged[k]} in the device limits, not {v}")
            merged[k] = int(v)
        else:
            max_c, max_cem = float(v[0]), float(v[1])
            if k in merged:
                d_c, d_cem = merged[k]
                if max_c > d_c:
                    out.append(f"protected_probes[{k}] max_temp_c {max_c:g} > {d_c:g}")
                if max_cem > d_cem:
                    out.append(f"protected_probes[{k}] max_cem43_min {max_cem:g} > {d_cem:g}")
            merged[k] = (max_c, max_cem)
    return merged, out


def _union(name: str, device: frozenset[int], plan: Any) -> tuple[Any, list[str]]:
    return frozenset(device) | frozenset(int(p) for p in plan), []


_TIGHTER: dict[str, Merge] = {
    "max_power_mw": _lower_each,
    "energy_budget_j": _lower_each,
    "session_energy_budget_j": _lower,
    "tip_temp_cap_c": _lower,
    "max_session_s": _lower,
    "tip_probes": _more_probes,
    "protected_probes": _more_probes,
    "monitored_probes": _union,
    "watchdog_timeout_ms": _lower,
    "power_tolerance_fraction": _lower,
    "power_check_min_mw": _lower,
    "power_mismatch_window_s": _lower,
    "uncommanded_power_mw": _lower,
    "uncommanded_window_s": _lower,
    "link_loss_window_s": _lower,
    "stale_after_periods": _lower,
    "probe_frozen_reads": _lower,
    "max_cycle_overrun_s": _lower,
    "probe_range_c": _narrower,
    "max_probe_rate_c_per_s": _lower,
    "energy_crosscheck_tolerance_j": _lower,
    "energy_crosscheck_tolerance_fraction": _lower,
    "tip_backoff_margin_c": _higher,
    "protected_backoff_margin_c": _higher,
    "cem43_warn_fraction": _lower,
}
assert set(_TIGHTER) == {f.name for f in dataclasses.fields(SafetyLimits)}, "every limit needs a tighter direction"

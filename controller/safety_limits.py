"""From the site config and a plan to the limits the safety layer enforces.

The config holds the device hard limits; a plan can only lower them (`SafetyLimits.lowered_by`
refuses anything else). Without a plan no fibre is in use: every channel is held off.
"""

from __future__ import annotations

import math

from protocol import ft8, ls4
from safety.limits import SafetyLimits

from .config import DaemonConfig
from .plan import Plan, ProbeRole


def device_limits(config: DaemonConfig) -> SafetyLimits:
    lim = config.limits
    per_channel_mw = min(ls4.MAX_CHANNEL_POWER_MW, round(lim.max_channel_power_w * 1000.0))
    sample_period_ms = config.ft8.sample_period_ms
    return SafetyLimits(
        max_power_mw=(per_channel_mw,) * ls4.CHANNEL_COUNT,
        energy_budget_j=(lim.max_fibre_energy_j,) * ls4.CHANNEL_COUNT,
        session_energy_budget_j=lim.max_session_energy_j,
        tip_temp_cap_c=lim.tip_temp_cap_c,
        max_session_s=float(lim.max_session_duration_s),
        watchdog_timeout_ms=config.ls4.watchdog_timeout_ms,
        power_tolerance_fraction=lim.power_tolerance_fraction,
        power_mismatch_window_s=lim.power_tolerance_persist_ms / 1000.0,
        stale_after_periods=max(2, math.ceil(lim.probe_stale_ms / sample_period_ms)),
        max_probe_rate_c_per_s=lim.max_temp_rate_c_per_s,
        energy_crosscheck_tolerance_j=lim.energy_crosscheck_tolerance_j,
        energy_crosscheck_tolerance_fraction=lim.energy_crosscheck_tolerance_fraction,
        probe_range_c=ft8.MEASURING_RANGE_C,
        max_cycle_overrun_s=lim.max_cycle_overrun_ms / 1000.0,
    )


def idle_limits(config: DaemonConfig) -> SafetyLimits:
    """No plan loaded: no channel may emit."""
    return device_limits(config).lowered_by(energy_budget_j=(None,) * ls4.CHANNEL_COUNT, max_power_mw=(0,) * ls4.CHANNEL_COUNT)


def plan_limits(config: DaemonConfig, plan: Plan) -> SafetyLimits:
    in_use = {f.channel: f for f in plan.fibres}
    budgets = tuple(in_use[c].energy_budget_j if c in in_use else None for c in range(ls4.CHANNEL_COUNT))
    powers = tuple(round(in_use[c].max_power_w * 1000.0) if c in in_use else 0 for c in range(ls4.CHANNEL_COUNT))
    return device_limits(config).lowered_by(
        max_power_mw=powers,
        energy_budget_j=budgets,
        session_energy_budget_j=plan.max_session_energy_j,
        tip_temp_cap_c=plan.tip_temp_cap_c,
        max_session_s=float(plan.max_duration_s),
        tip_probes={p.channel: p.fibre for p in plan.probes_with_role(ProbeRole.TIP) if p.fibre is not None},
        protected_probes={
            p.channel: (p.max_temp_c, p.max_cem43_min)
            for p in plan.probes_with_role(ProbeRole.PROTECTED)
            if p.max_temp_c is not None and p.max_cem43_min is not None
        },
        monitored_probes=frozenset(p.channel for p in plan.probes),
    )

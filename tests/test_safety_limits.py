"""SafetyLimits: bounded tunables, and a plan that may only lower the device hard limits."""

from __future__ import annotations

import dataclasses

import pytest

from safety import limits as L
from safety.limits import LimitsError, SafetyLimits

DEVICE = SafetyLimits(
    max_power_mw=(10000, 10000, 10000, 0),
    energy_budget_j=(5000.0, 5000.0, 5000.0, None),
    session_energy_budget_j=15000.0,
    tip_temp_cap_c=100.0,
    max_session_s=3600.0,
    protected_probes={6: (45.0, 30.0)},
)


def test_a_plan_that_lowers_everything_is_accepted() -> None:
    lim = DEVICE.lowered_by(
        max_power_mw=(8000, 5000, 0, 0),
        energy_budget_j=(1200.0, 800.0, None, None),
        session_energy_budget_j=2000.0,
        tip_temp_cap_c=90.0,
        max_session_s=900.0,
        tip_probes={0: 0, 1: 1},
        protected_probes={4: (44.0, 20.0), 6: (43.0, 10.0)},
        power_mismatch_window_s=0.1,
        tip_backoff_margin_c=8.0,
    )
    assert lim.max_power_mw == (8000, 5000, 0, 0) and lim.energy_budget_j == (1200.0, 800.0, None, None)
    assert dict(lim.protected_probes) == {4: (44.0, 20.0), 6: (43.0, 10.0)}
    assert lim.monitored_probes == {0, 1, 4, 6}, "probes that guard something are monitored"
    assert not lim.in_plan(2) and not lim.in_plan(3) and lim.in_plan(0)


@pytest.mark.parametrize(
    ("plan", "offence"),
    [
        ({"max_power_mw": (10001, 0, 0, 0)}, "max_power_mw[0]"),
        ({"energy_budget_j": (10.0, 10.0, 10.0, 10.0)}, "energy_budget_j[3]"),
        ({"energy_budget_j": (6000.0, None, None, None)}, "energy_budget_j[0]"),
        ({"session_energy_budget_j": 20000.0}, "session_energy_budget_j"),
        ({"tip_temp_cap_c": 105.0}, "tip_temp_cap_c"),
        ({"max_session_s": 7200.0}, "max_session_s"),
        ({"protected_probes": {6: (50.0, 10.0)}}, "max_temp_c"),
        ({"protected_probes": {6: (40.0, 60.0)}}, "max_cem43_min"),
        ({"power_tolerance_fraction": 0.2 + 1e-6}, "power_tolerance_fraction"),
        ({"link_loss_window_s": 0.3}, "link_loss_window_s"),
        ({"stale_after_periods": 6}, "stale_after_periods"),
        ({"probe_range_c": (-30.0, 150.0)}, "probe_range_c"),
        ({"max_probe_rate_c_per_s": 40.0}, "max_probe_rate_c_per_s"),
        ({"tip_backoff_margin_c": 2.0}, "tip_backoff_margin_c"),
        ({"energy_crosscheck_tolerance_j": 3.0}, "energy_crosscheck_tolerance_j"),
    ],
)
def test_a_plan_that_raises_anything_is_refused(plan: dict, offence: str) -> None:
    with pytest.raises(LimitsError, match=offence.replace("[", r"\[").replace("]", r"\]")) as err:
        DEVICE.lowered_by(**plan)
    assert "\n" not in str(err.value)


def test_a_plan_cannot_reassign_a_tip_probe() -> None:
    lim = DEVICE.lowered_by(tip_probes={0: 0})
    with pytest.raises(LimitsError, match="tip_probes 0"):
        lim.lowered_by(tip_probes={0: 1})


def test_a_plan_cannot_drop_a_guard_of_the_device_limits() -> None:
    lim = DEVICE.lowered_by(protected_probes={4: (44.0, 20.0)})
    assert 6 in lim.protected_probes, "the config's protected probe stays"


def test_all_offences_in_one_line() -> None:
    with pytest.raises(LimitsError) as err:
        DEVICE.lowered_by(tip_temp_cap_c=120.0, max_session_s=99999.0)
    assert "tip_temp_cap_c" in str(err.value) and "max_session_s" in str(err.value)


def test_unknown_plan_key_is_refused() -> None:
    with pytest.raises(LimitsError, match="unknown limit"):
        DEVICE.lowered_by(max_powr_mw=(1, 1, 1, 1))


@pytest.mark.parametrize(
    "change",
    [
        {"power_mismatch_window_s": L.POWER_MISMATCH_WINDOW_MAX_S + 0.01},
        {"uncommanded_window_s": L.UNCOMMANDED_WINDOW_MAX_S + 0.01},
        {"link_loss_window_s": L.LINK_LOSS_WINDOW_MAX_S + 0.01},
        {"max_cycle_overrun_s": L.MAX_CYCLE_OVERRUN_MAX_S + 0.01},
        {"stale_after_periods": 1},
        {"probe_frozen_reads": 1000},
        {"power_tolerance_fraction": 0.5},
        {"power_check_min_mw": 1000},
        {"max_probe_rate_c_per_s": 1.0},
        {"watchdog_timeout_ms": 20},
        {"watchdog_timeout_ms": 200, "link_loss_window_s": 0.25},
        {"max_power_mw": (10001, 0, 0, 0)},
        {"max_power_mw": (1, 2, 3)},
        {"tip_probes": {8: 0}},
        {"tip_probes": {0: 4}},
        {"tip_temp_cap_c": 200.0},
        {"probe_range_c": (50.0, 40.0)},
    ],
)
def test_every_tunable_has_a_stated_bound(change: dict) -> None:
    with pytest.raises(LimitsError):
        dataclasses.replace(DEVICE, **change)


def test_write_horizon_is_the_watchdog_plus_the_device_stop() -> None:
    assert DEVICE.write_horizon_s == pytest.approx(0.51)
    assert dataclasses.replace(DEVICE, watchdog_timeout_ms=1000).write_horizon_s == pytest.approx(1.01)


def test_every_field_has_a_tighter_direction() -> None:
    assert set(L._TIGHTER) == {f.name for f in dataclasses.fields(SafetyLimits)}


def test_limits_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEVICE.tip_temp_cap_c = 200.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        DEVICE.tip_probes[3] = 0  # type: ignore[index]

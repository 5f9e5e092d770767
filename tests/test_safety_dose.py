"""Dose arithmetic: CEM43 (Sapareto & Dewey) and the host's trapezoid of OUTPUT_POWER."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safety.dose import (
    Cem43Accumulator,
    PowerIntegrator,
    cem43_increment_min,
    cem43_rate_min_per_s,
    energy_ceiling_mw,
    uptime_delta_ms,
)


@pytest.mark.parametrize(
    ("temp_c", "minutes_per_minute"),
    [(43.0, 1.0), (44.0, 2.0), (46.0, 8.0), (42.0, 0.25), (41.0, 0.0625), (37.0, 0.25**6)],
)
def test_cem43_rate_uses_r_half_at_or_above_43_and_quarter_below(temp_c: float, minutes_per_minute: float) -> None:
    assert cem43_rate_min_per_s(temp_c) * 60.0 == pytest.approx(minutes_per_minute)


def test_cem43_accumulates_from_valid_readings_over_time() -> None:
    acc = Cem43Accumulator()
    for k in range(61):
        acc.add(4, time_s=k * 1.0, temp_c=44.0)
    assert acc.value_min(4) == pytest.approx(2.0)
    assert acc.value_min(5) == 0.0


@given(st.floats(30.0, 90.0), st.floats(30.0, 90.0), st.floats(0.01, 5.0))
def test_cem43_increment_never_undercounts_a_ramp_between_readings(t0: float, t1: float, dt: float) -> None:
    steps = 200
    exact = sum(cem43_rate_min_per_s(t0 + (t1 - t0) * (k + 0.5) / steps) * dt / steps for k in range(steps))
    assert cem43_increment_min(t0, t1, dt) >= exact * (1 - 1e-9)


def test_trapezoid_is_exact_for_constant_power_and_ramps() -> None:
    integ = PowerIntegrator()
    integ.start(uptime_ms=1000, output_power_mw=(0, 1000, 0, 0))
    for k in range(1, 11):
        integ.add(uptime_ms=1000 + 100 * k, output_power_mw=(500 * k, 1000, 0, 0))
    assert integ.energy_j[1] == pytest.approx(1.0)  # 1 W for 1 s
    assert integ.energy_j[0] == pytest.approx(0.5 * 5.0 * 1.0)  # ramp 0 -> 5 W over 1 s


def test_trapezoid_skips_an_uptime_that_went_back() -> None:
    integ = PowerIntegrator()
    integ.start(uptime_ms=50_000, output_power_mw=(1000, 0, 0, 0))
    assert integ.add(uptime_ms=100, output_power_mw=(1000, 0, 0, 0)) is False
    assert integ.energy_j[0] == 0.0
    assert integ.add(uptime_ms=1100, output_power_mw=(1000, 0, 0, 0)) is True
    assert integ.energy_j[0] == pytest.approx(1.0)


def test_uptime_wrap_is_not_a_reboot() -> None:
    assert uptime_delta_ms((1 << 32) - 40, 60) == 100
    assert uptime_delta_ms(500_000, 100) is None
    assert uptime_delta_ms(100, 250) == 150


@given(st.floats(0.0, 10_000.0), st.floats(0.05, 2.0), st.floats(1.0, 4.0))
def test_energy_ceiling_never_authorises_more_than_the_remainder(remaining_j: float, horizon_s: float, gain: float) -> None:
    ceiling = energy_ceiling_mw(remaining_j, horizon_s=horizon_s, gain=gain)
    assert ceiling >= 0
    assert ceiling / 1000.0 * horizon_s * gain <= remaining_j + 1e-9
    assert ceiling + 1 > math.floor(remaining_j * 1000.0 / (horizon_s * gain))


def test_energy_ceiling_is_zero_when_nothing_is_left() -> None:
    assert energy_ceiling_mw(0.0, horizon_s=0.5, gain=1.2) == 0
    assert energy_ceiling_mw(-3.0, horizon_s=0.5, gain=1.2) == 0

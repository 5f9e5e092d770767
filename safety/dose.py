"""Dose arithmetic: thermal dose (CEM43) per probe and the host's own integral of optical power.

Pure functions and two small accumulators; no I/O, no clock of their own: every time comes in
as an argument, so the tests drive them exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

# Sapareto & Dewey (1984): CEM43 = sum over t of R^(43 - T) dt, in minutes.
CEM43_REFERENCE_C = 43.0
CEM43_R_AT_OR_ABOVE = 0.5
CEM43_R_BELOW = 0.25
UPTIME_WRAP_MS = 1 << 32  # LS-4 UPTIME is a uint32 of ms (wraps after 49.7 days)
# An UPTIME that went back by less than this near the top of its range is a wrap, not a reboot.
UPTIME_WRAP_WINDOW_MS = 60_000


def cem43_rate_min_per_s(temp_c: float) -> float:
    """Equivalent minutes at 43 degC accumulated per second at temp_c."""
    r = CEM43_R_AT_OR_ABOVE if temp_c >= CEM43_REFERENCE_C else CEM43_R_BELOW
    return r ** (CEM43_REFERENCE_C - temp_c) / 60.0


def cem43_increment_min(t0_c: float, t1_c: float, dt_s: float) -> float:
    """Dose over an interval between two readings, taken at the hotter end.

    The rate grows monotonically with temperature, so the hotter end bounds the true dose from
    above whatever the temperature did in between (as long as it stayed between the two readings,
    which the probe-rate check enforces): the dose is never under-counted.
    """
    if dt_s <= 0.0:
        return 0.0
    return cem43_rate_min_per_s(max(t0_c, t1_c)) * dt_s


@dataclass
class Cem43Accumulator:
    """CEM43 per probe, from valid readings only. A gap (invalid or stale readings) is bridged at
    the hotter of the readings either side of it: conservative, and the gap itself trips anyway."""

    minutes: dict[int, float] = field(default_factory=dict)
    _last: dict[int, tuple[float, float]] = field(default_factory=dict)  # probe -> (time_s, temp_c)

    def add(self, probe: int, *, time_s: float, temp_c: float) -> float:
        last = self._last.get(probe)
        total = self.minutes.get(probe, 0.0)
        if last is not None:
            total += cem43_increment_min(last[1], temp_c, time_s - last[0])
        self.minutes[probe] = total
        self._last[probe] = (time_s, temp_c)
        return total

    def value_min(self, probe: int) -> float:
        return self.minutes.get(probe, 0.0)


def uptime_delta_ms(before_ms: int, after_ms: int) -> int | None:
    """ms between two LS-4 UPTIME readings; None if UPTIME went backwards (the device rebooted)."""
    if after_ms >= before_ms:
        return after_ms - before_ms
    if before_ms > UPTIME_WRAP_MS - UPTIME_WRAP_WINDOW_MS and after_ms < UPTIME_WRAP_WINDOW_MS:
        return after_ms + UPTIME_WRAP_MS - before_ms
    return None


@dataclass
class PowerIntegrator:
    """The host's energy per channel: trapezoid of OUTPUT_POWER over the LS-4's own UPTIME.

    The LS-4 integrates the same photodiode reading every 10 ms; the host samples it once a cycle.
    The difference comes from steps inside a cycle (footswitch, a lowered setpoint, a fault stop):
    at most P*dt/2 per step, which the cross-check tolerance covers (docs/safety.md).
    """

    energy_j: list[float] = field(default_factory=list)
    _last_uptime_ms: int | None = None
    _last_power_mw: tuple[int, ...] = ()

    def start(self, *, uptime_ms: int, output_power_mw: Sequence[int]) -> None:
        self.energy_j = [0.0] * len(output_power_mw)
        self._last_uptime_ms = uptime_ms
        self._last_power_mw = tuple(output_power_mw)

    def gap_ms(self, uptime_ms: int) -> int | None:
        """ms since the last sample (None: UPTIME went backwards, or no sample yet)."""
        if self._last_uptime_ms is None:
            return None
        return uptime_delta_ms(self._last_uptime_ms, uptime_ms)

    def bridge(self, *, uptime_ms: int, output_power_mw: Sequence[int], energy_j: Sequence[float]) -> None:
        """Cross a gap the host did not see with energies taken from elsewhere (the caller bounds them)."""
        for c, e in enumerate(energy_j):
            self.energy_j[c] += e
        self._last_uptime_ms, self._last_power_mw = uptime_ms, tuple(output_power_mw)

    def add(self, *, uptime_ms: int, output_power_mw: Sequence[int]) -> bool:
        """Integrate up to this sample; False (nothing integrated) if UPTIME went backwards."""
        if self._last_uptime_ms is None:
            self.start(uptime_ms=uptime_ms, output_power_mw=output_power_mw)
            return True
        dt_ms = uptime_delta_ms(self._last_uptime_ms, uptime_ms)
        if dt_ms is None:
            self._last_uptime_ms, self._last_power_mw = uptime_ms, tuple(output_power_mw)
            return False
        for c, (p0, p1) in enumerate(zip(self._last_power_mw, output_power_mw)):
            self.energy_j[c] += (p0 + p1) / 2.0 * dt_ms / 1e6  # mW * ms = uJ
        self._last_uptime_ms, self._last_power_mw = uptime_ms, tuple(output_power_mw)
        return True


def energy_ceiling_mw(remaining_j: float, *, horizon_s: float, gain: float) -> int:
    """The highest setpoint (mW) that cannot spend more than `remaining_j` within `horizon_s`.

    `gain` is how much optical power one commanded mW may really give: at least 1 + the power
    tolerance (the device's own +-20 %), more if the channel has been seen delivering more.
    """
    if remaining_j <= 0.0 or horizon_s <= 0.0:
        return 0
    return max(0, math.floor(remaining_j * 1000.0 / (horizon_s * max(gain, 1.0))))

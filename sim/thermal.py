"""Thermal models the simulator can plug between the LS-4's light and the FT-8's probes.

A thermal model is the patient: it takes the optical power that reaches each fibre tip and
returns the tissue temperature at each FT-8 probe. The FT-8 model adds the probe's own lag
and noise on top; the LS-4 model decides how much light reaches the tip (none through a broken
fibre).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

BODY_TEMP_C = 37.0
LS4_CHANNELS = 4
FT8_CHANNELS = 8


class ThermalModel(Protocol):
    #: the time step the model wants; the simulator calls `step` with steps of about this size
    preferred_dt_s: float

    def step(self, dt_s: float, tip_power_w: Sequence[float]) -> None:
        """Advance by dt_s with the given mean optical power (W) at each LS-4 channel's fibre tip."""
        ...

    def probe_temperature_c(self) -> Sequence[float | None]:
        """Tissue temperature at each FT-8 probe (8 entries; None where no probe is placed)."""
        ...


@dataclass
class FirstOrderProbe:
    """One probe heated by one LS-4 channel: tau dT/dt = 37 + gain * P - T."""

    channel: int
    gain_c_per_w: float
    tau_s: float


# A plain placement used when no scenario is given: probes 0-3 sit near tips 0-3, probes 4-7
# further out. Gains and time constants are round numbers of the order the tissue model gives
# for a bare fibre in liver (tip about +15 degC/W, 10 mm out about +3 degC/W); the tissue
# model replaces this whenever a scenario is loaded.
DEFAULT_PROBES: tuple[FirstOrderProbe, ...] = (
    FirstOrderProbe(channel=0, gain_c_per_w=15.0, tau_s=20.0),
    FirstOrderProbe(channel=1, gain_c_per_w=15.0, tau_s=20.0),
    FirstOrderProbe(channel=2, gain_c_per_w=15.0, tau_s=20.0),
    FirstOrderProbe(channel=3, gain_c_per_w=15.0, tau_s=20.0),
    FirstOrderProbe(channel=0, gain_c_per_w=3.0, tau_s=60.0),
    FirstOrderProbe(channel=1, gain_c_per_w=3.0, tau_s=60.0),
    FirstOrderProbe(channel=2, gain_c_per_w=3.0, tau_s=60.0),
    FirstOrderProbe(channel=3, gain_c_per_w=3.0, tau_s=60.0),
)


class FirstOrderThermal:
    """Each probe follows its channel's power through a first-order lag (exact discretisation)."""

    preferred_dt_s = 0.05

    def __init__(self, probes: Sequence[FirstOrderProbe] = DEFAULT_PROBES) -> None:
        if len(probes) != FT8_CHANNELS:
            raise ValueError(f"need {FT8_CHANNELS} probes, got {len(probes)}")
        self.probes = tuple(probes)
        self.temperature_c = [BODY_TEMP_C] * FT8_CHANNELS

    def step(self, dt_s: float, tip_power_w: Sequence[float]) -> None:
        for i, probe in enumerate(self.probes):
            target = BODY_TEMP_C + probe.gain_c_per_w * tip_power_w[probe.channel]
            alpha = 1.0 - math.exp(-dt_s / probe.tau_s)
            self.temperature_c[i] += alpha * (target - self.temperature_c[i])

    def probe_temperature_c(self) -> Sequence[float | None]:
        return tuple(self.temperature_c)

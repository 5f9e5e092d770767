"""FT-8 eight-channel fibre-optic thermometer, modelled to its datasheet (register map 1, firmware 1.3).

Tissue temperature comes from the plugged-in thermal model; the probe adds its own 0.2 s
first-order lag and noise, and the device samples all channels every SAMPLE_PERIOD ms.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cython_ext.lag import lag_step
from protocol import ft8 as P
from protocol.registers import Table, encode_block
from protocol.validation import ExceptionCode, check_values, writes_by_row

from .device import Identity
from .thermal import BODY_TEMP_C

PROBE_NOISE_C = 0.03  # 1 sigma, well inside the +-0.3 degC accuracy


class Health(enum.Enum):
    OK = "ok"
    HUNG = "hung"  # registers still answer, SAMPLE_COUNTER stops: stale readings
    FAULT = "fault"  # STATUS.FAULT set, no measurement


@dataclass
class ProbeFaults:
    """Bench-controlled failures of each probe."""

    connected: list[bool] = field(default_factory=lambda: [True] * P.CHANNEL_COUNT)
    signal_ok: list[bool] = field(default_factory=lambda: [True] * P.CHANNEL_COUNT)
    stuck_at_c: list[float | None] = field(default_factory=lambda: [None] * P.CHANNEL_COUNT)
    noise_c: list[float] = field(default_factory=lambda: [PROBE_NOISE_C] * P.CHANNEL_COUNT)
    offset_c: list[float] = field(default_factory=lambda: [0.0] * P.CHANNEL_COUNT)
    forced_tissue_c: list[float | None] = field(default_factory=lambda: [None] * P.CHANNEL_COUNT)


class FT8Device:
    regmap = P.REGISTER_MAP
    identity = Identity(vendor_name=P.VENDOR_NAME, product_code=P.PRODUCT_CODE, revision=P.REVISION)

    def __init__(self, *, unit_id: int = P.UNIT_ID, seed: int = 1) -> None:
        self.unit_id = unit_id
        self.faults = ProbeFaults()
        self.health = Health.OK
        self._rng = random.Random(seed)
        self._tissue_c: list[float | None] = [BODY_TEMP_C] * P.CHANNEL_COUNT
        self._probe_c = np.full(P.CHANNEL_COUNT, BODY_TEMP_C)
        self._power_on()

    def _power_on(self) -> None:
        self.sample_period_ms = P.DEFAULT_SAMPLE_PERIOD_MS
        self.sample_counter = 0
        self._since_sample_s = 0.0
        self.temperature_raw = [P.INVALID_READING] * P.CHANNEL_COUNT
        self.probe_status = [P.ProbeStatus(0)] * P.CHANNEL_COUNT
        self._take_sample(count=False)

    def reboot(self) -> None:
        self._power_on()

    def set_tissue_temperatures(self, tissue_c: Sequence[float | None]) -> None:
        self._tissue_c = list(tissue_c)

    def tissue_c(self, channel: int) -> float | None:
        forced = self.faults.forced_tissue_c[channel]
        return forced if forced is not None else self._tissue_c[channel]

    def advance(self, dt_s: float) -> None:
        target = np.array([t if (t := self.tissue_c(c)) is not None else BODY_TEMP_C for c in range(P.CHANNEL_COUNT)])
        lag_step(self._probe_c, target, dt_s, P.PROBE_TIME_CONSTANT_S)
        if self.health is not Health.OK:
            return
        self._since_sample_s += dt_s
        period_s = self.sample_period_ms / 1000.0
        if self._since_sample_s >= period_s - 1e-9:
            self._since_sample_s -= period_s
            self._since_sample_s = min(self._since_sample_s, period_s)  # a long gap yields one fresh sample, not a burst
            self._take_sample(count=True)

    def _take_sample(self, *, count: bool) -> None:
        lo, hi = P.MEASURING_RANGE_C
        f = self.faults
        raws, statuses = [], []
        for c in range(P.CHANNEL_COUNT):
            status = P.ProbeStatus(0)
            placed = self.tissue_c(c) is not None
            if f.connected[c] and placed:
                status |= P.ProbeStatus.CONNECTED
            if status and f.signal_ok[c]:
                status |= P.ProbeStatus.SIGNAL_OK
            value = f.stuck_at_c[c]
            if value is None:
                value = float(self._probe_c[c]) + f.offset_c[c] + self._rng.gauss(0.0, f.noise_c[c])
            if status and not lo <= value <= hi:
                status |= P.ProbeStatus.OUT_OF_RANGE
            raws.append(round(value * 100) if P.reading_is_valid(status) else P.INVALID_READING)
            statuses.append(status)
        self.temperature_raw, self.probe_status = raws, statuses
        if count:
            self.sample_counter = (self.sample_counter + 1) & 0xFFFF

    def status(self) -> P.Status:
        if self.health is Health.FAULT:
            return P.Status.FAULT
        return P.Status.MEASURING

    def input_words(self) -> list[int]:
        fault = self.health is Health.FAULT
        return encode_block(
            P.REGISTER_MAP,
            Table.INPUT,
            {
                "STATUS": int(self.status()),
                "SAMPLE_COUNTER": self.sample_counter,
                "SAMPLE_PERIOD_ACTUAL": self.sample_period_ms,
                "TEMPERATURE": tuple(P.INVALID_READING if fault else t for t in self.temperature_raw),
                "PROBE_STATUS": tuple(0 if fault else int(s) for s in self.probe_status),
            },
        )

    def holding_words(self) -> list[int]:
        return encode_block(P.REGISTER_MAP, Table.HOLDING, {"SAMPLE_PERIOD": self.sample_period_ms})

    def write_holding(self, address: int, values: list[int]) -> ExceptionCode | None:
        current = {"SAMPLE_PERIOD": self.sample_period_ms}
        if (code := check_values(P.REGISTER_MAP, address, values, current)) is not None:
            return code
        for name, elements in writes_by_row(P.REGISTER_MAP, address, values).items():
            if name == "SAMPLE_PERIOD":
                self.sample_period_ms = elements[0]
        return None

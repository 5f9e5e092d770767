"""FT-8 eight-channel fibre-optic thermometer: register map version 1, firmware 1.3 (from its datasheet)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from .registers import Kind, Register, RegisterMap, Table, decode_block

UNIT_ID = 2
MAP_VERSION = 1
FIRMWARE_VERSION = 0x0103
CHANNEL_COUNT = 8
VENDOR_NAME = "OpenAblation"
PRODUCT_CODE = "FT-8"
REVISION = "1.3"
INVALID_READING = -0x8000  # 0x8000 on the wire
MEASURING_RANGE_C = (-20.0, 150.0)
ACCURACY_C = 0.3
RESOLUTION_C = 0.01
PROBE_TIME_CONSTANT_S = 0.2
DEFAULT_SAMPLE_PERIOD_MS = 50


class Status(enum.IntFlag):
    MEASURING = 1 << 0
    FAULT = 1 << 1


class ProbeStatus(enum.IntFlag):
    CONNECTED = 1 << 0
    SIGNAL_OK = 1 << 1
    OUT_OF_RANGE = 1 << 2


_I, _H = Table.INPUT, Table.HOLDING
N = CHANNEL_COUNT

REGISTER_MAP = RegisterMap(
    "FT-8",
    (
        Register(name="STATUS", address=0, kind=Kind.BITS, table=_I, bits=Status),
        Register(name="MAP_VERSION", address=1, kind=Kind.UINT16, table=_I, default=MAP_VERSION),
        Register(name="FIRMWARE_VERSION", address=2, kind=Kind.UINT16, table=_I, default=FIRMWARE_VERSION),
        Register(name="CHANNEL_COUNT", address=3, kind=Kind.UINT16, table=_I, default=CHANNEL_COUNT),
        Register(name="SAMPLE_COUNTER", address=4, kind=Kind.UINT16, table=_I),
        Register(name="SAMPLE_PERIOD_ACTUAL", address=5, kind=Kind.UINT16, table=_I, unit="ms", default=DEFAULT_SAMPLE_PERIOD_MS),
        Register(name="TEMPERATURE", address=6, kind=Kind.INT16, table=_I, length=N, scale=0.01, unit="degC", default=INVALID_READING),
        Register(name="PROBE_STATUS", address=14, kind=Kind.BITS, table=_I, length=N, bits=ProbeStatus),
        Register(name="SAMPLE_PERIOD", address=0, kind=Kind.UINT16, table=_H, unit="ms", minimum=10, maximum=1000, default=DEFAULT_SAMPLE_PERIOD_MS),
    ),
)

INPUT_FIRST, INPUT_COUNT = REGISTER_MAP.span(Table.INPUT)  # 0, 22
HOLDING_FIRST, HOLDING_COUNT = REGISTER_MAP.span(Table.HOLDING)  # 0, 1


def reading_is_valid(status: ProbeStatus) -> bool:
    return ProbeStatus.CONNECTED in status and ProbeStatus.SIGNAL_OK in status and ProbeStatus.OUT_OF_RANGE not in status


@dataclass(frozen=True, slots=True)
class FT8Snapshot:
    """Every FT-8 input register, decoded from one block read of addresses 0-21.

    `temperature_c[i]` is None when the probe has no valid reading (0x8000 on the wire).
    """

    status: Status
    map_version: int
    firmware_version: int
    channel_count: int
    sample_counter: int
    sample_period_actual_ms: int
    temperature_c: tuple[float | None, ...]
    probe_status: tuple[ProbeStatus, ...]

    @classmethod
    def from_words(cls, words: Sequence[int]) -> FT8Snapshot:
        raw = decode_block(REGISTER_MAP, Table.INPUT, words)
        return cls(
            status=Status(raw["STATUS"]),
            map_version=raw["MAP_VERSION"],
            firmware_version=raw["FIRMWARE_VERSION"],
            channel_count=raw["CHANNEL_COUNT"],
            sample_counter=raw["SAMPLE_COUNTER"],
            sample_period_actual_ms=raw["SAMPLE_PERIOD_ACTUAL"],
            temperature_c=tuple(None if t == INVALID_READING else round(t * 0.01, 2) for t in raw["TEMPERATURE"]),
            probe_status=tuple(ProbeStatus(v) for v in raw["PROBE_STATUS"]),
        )

"""LS-4 four-channel laser source: register map version 1, firmware 2.1 (from its datasheet)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from .registers import Kind, Register, RegisterMap, Table, decode_block

UNIT_ID = 1
MAP_VERSION = 1
FIRMWARE_VERSION = 0x0201
CHANNEL_COUNT = 4
MAX_CHANNEL_POWER_MW = 10_000
VENDOR_NAME = "OpenAblation"
PRODUCT_CODE = "LS-4"
REVISION = "2.1"
SERIAL_BAUD = 115_200
SERIAL_PARITY = "E"
SERIAL_BYTESIZE = 8
SERIAL_STOPBITS = 1

# Thresholds the datasheet states, used by the simulator and checked by the host.
FIBRE_FAULT_BACK_REFLECTION_PERMILLE = 100  # 10.0 % in 0.1 % units
DIODE_OVERTEMP_CENTI_C = 4500  # 45.00 degC
POWER_DEVIATION_FRACTION = 0.20
POWER_DEVIATION_MIN_SETPOINT_MW = 500
POWER_DEVIATION_PERSIST_MS = 500
STOP_WITHIN_MS = 10
UPDATE_PERIOD_MS = 10
FAULT_CHANNEL_NONE = 0xFFFF
# The one function-16 write the host makes every cycle: HEARTBEAT .. CH_ENABLE[3].
CYCLE_WRITE_ADDRESS = 3
CYCLE_WRITE_COUNT = 9


class DeviceState(enum.IntEnum):
    STANDBY = 0
    READY = 1
    ARMED = 2
    EMITTING = 3
    FAULT = 4


class Interlocks(enum.IntFlag):
    KEY_ON = 1 << 0
    ESTOP_PRESSED = 1 << 1
    REMOTE_INTERLOCK_OPEN = 1 << 2
    FOOTSWITCH_PRESSED = 1 << 3
    AIMING_BEAM_ON = 1 << 4
    EMISSION_INDICATOR_ON = 1 << 5


class FaultCode(enum.IntEnum):
    NONE = 0
    WATCHDOG_EXPIRED = 1
    ESTOP = 2
    INTERLOCK_OPEN = 3
    KEY_OFF = 4
    FIBRE_FAULT = 5
    DIODE_OVERTEMP = 6
    POWER_DEVIATION = 7
    HOST_RELEASED = 8
    INTERNAL = 9


class ChannelStatus(enum.IntFlag):
    ENABLED = 1 << 0
    EMITTING = 1 << 1
    FIBRE_CONNECTED = 1 << 2
    FIBRE_FAULT = 1 << 3
    DIODE_OVERTEMP = 1 << 4
    POWER_DEVIATION = 1 << 5
    AT_LIMIT = 1 << 6


class Control(enum.IntFlag):
    HOST_CONTROL = 1 << 0
    EMISSION_ENABLE = 1 << 1
    AIMING_BEAM = 1 << 2


class Command(enum.IntEnum):
    NONE = 0
    FAULT_RESET = 1
    ENERGY_RESET = 2


_I, _H = Table.INPUT, Table.HOLDING
N = CHANNEL_COUNT

REGISTER_MAP = RegisterMap(
    "LS-4",
    (
        # input registers (function 04)
        Register(name="DEVICE_STATE", address=0, kind=Kind.ENUM, table=_I, enum_type=DeviceState),
        Register(name="INTERLOCKS", address=1, kind=Kind.BITS, table=_I, bits=Interlocks),
        Register(name="FAULT_CODE", address=2, kind=Kind.ENUM, table=_I, enum_type=FaultCode),
        Register(name="FAULT_CHANNEL", address=3, kind=Kind.UINT16, table=_I, default=FAULT_CHANNEL_NONE),
        Register(name="MAP_VERSION", address=4, kind=Kind.UINT16, table=_I, default=MAP_VERSION),
        Register(name="FIRMWARE_VERSION", address=5, kind=Kind.UINT16, table=_I, default=FIRMWARE_VERSION),
        Register(name="CHANNEL_COUNT", address=6, kind=Kind.UINT16, table=_I, default=CHANNEL_COUNT),
        Register(name="MAX_CHANNEL_POWER", address=7, kind=Kind.UINT16, table=_I, unit="mW", default=MAX_CHANNEL_POWER_MW),
        Register(name="HEARTBEAT_ECHO", address=8, kind=Kind.UINT16, table=_I),
        Register(name="WATCHDOG_REMAINING", address=9, kind=Kind.UINT16, table=_I, unit="ms"),
        Register(name="UPTIME", address=10, kind=Kind.UINT32, table=_I, unit="ms"),
        Register(name="CABINET_TEMP", address=12, kind=Kind.INT16, table=_I, scale=0.1, unit="degC"),
        Register(name="RESERVED_13", address=13, kind=Kind.RESERVED, table=_I, length=3),
        Register(name="CH_STATUS", address=16, kind=Kind.BITS, table=_I, length=N, bits=ChannelStatus),
        Register(name="OUTPUT_POWER", address=20, kind=Kind.UINT16, table=_I, length=N, unit="mW"),
        Register(name="ACTIVE_SETPOINT", address=24, kind=Kind.UINT16, table=_I, length=N, unit="mW"),
        Register(name="BACK_REFLECTION", address=28, kind=Kind.UINT16, table=_I, length=N, scale=0.1, unit="%"),
        Register(name="DIODE_TEMP", address=32, kind=Kind.INT16, table=_I, length=N, scale=0.01, unit="degC"),
        Register(name="ENERGY", address=36, kind=Kind.UINT32, table=_I, length=N, unit="mJ"),
        Register(name="EMISSION_TIME", address=44, kind=Kind.UINT32, table=_I, length=N, unit="ms"),
        # holding registers (functions 03, 06, 16)
        Register(name="CONTROL", address=0, kind=Kind.BITS, table=_H, bits=Control),
        Register(name="COMMAND", address=1, kind=Kind.ENUM, table=_H, enum_type=Command, minimum=0, maximum=2),
        Register(name="WATCHDOG_TIMEOUT", address=2, kind=Kind.UINT16, table=_H, unit="ms", minimum=50, maximum=2000, default=500),
        Register(name="HEARTBEAT", address=3, kind=Kind.UINT16, table=_H, minimum=0, maximum=0xFFFF),
        Register(name="POWER_SETPOINT", address=4, kind=Kind.UINT16, table=_H, length=N, unit="mW", minimum=0, maximum=MAX_CHANNEL_POWER_MW, maximum_ref="POWER_LIMIT"),
        Register(name="CH_ENABLE", address=8, kind=Kind.UINT16, table=_H, length=N, minimum=0, maximum=1),
        Register(name="POWER_LIMIT", address=12, kind=Kind.UINT16, table=_H, length=N, unit="mW", minimum=0, maximum=MAX_CHANNEL_POWER_MW, default=MAX_CHANNEL_POWER_MW),
        Register(name="RAMP_RATE", address=16, kind=Kind.UINT16, table=_H, length=N, unit="mW/s", minimum=100, maximum=0xFFFF, default=5000),
    ),
)

INPUT_FIRST, INPUT_COUNT = REGISTER_MAP.span(Table.INPUT)  # 0, 52
HOLDING_FIRST, HOLDING_COUNT = REGISTER_MAP.span(Table.HOLDING)  # 0, 20


@dataclass(frozen=True, slots=True)
class LS4Snapshot:
    """Every LS-4 input register, decoded from one block read of addresses 0-51."""

    device_state: DeviceState
    interlocks: Interlocks
    fault_code: FaultCode
    fault_channel: int | None
    map_version: int
    firmware_version: int
    channel_count: int
    max_channel_power_mw: int
    heartbeat_echo: int
    watchdog_remaining_ms: int
    uptime_ms: int
    cabinet_temp_c: float
    ch_status: tuple[ChannelStatus, ...]
    output_power_mw: tuple[int, ...]
    active_setpoint_mw: tuple[int, ...]
    back_reflection_pct: tuple[float, ...]
    diode_temp_c: tuple[float, ...]
    energy_mj: tuple[int, ...]
    emission_time_ms: tuple[int, ...]

    @classmethod
    def from_words(cls, words: Sequence[int]) -> LS4Snapshot:
        raw = decode_block(REGISTER_MAP, Table.INPUT, words)
        return cls(
            device_state=DeviceState(raw["DEVICE_STATE"]),
            interlocks=Interlocks(raw["INTERLOCKS"]),
            fault_code=FaultCode(raw["FAULT_CODE"]),
            fault_channel=None if raw["FAULT_CHANNEL"] == FAULT_CHANNEL_NONE else raw["FAULT_CHANNEL"],
            map_version=raw["MAP_VERSION"],
            firmware_version=raw["FIRMWARE_VERSION"],
            channel_count=raw["CHANNEL_COUNT"],
            max_channel_power_mw=raw["MAX_CHANNEL_POWER"],
            heartbeat_echo=raw["HEARTBEAT_ECHO"],
            watchdog_remaining_ms=raw["WATCHDOG_REMAINING"],
            uptime_ms=raw["UPTIME"],
            cabinet_temp_c=raw["CABINET_TEMP"] * REGISTER_MAP["CABINET_TEMP"].scale,
            ch_status=tuple(ChannelStatus(v) for v in raw["CH_STATUS"]),
            output_power_mw=raw["OUTPUT_POWER"],
            active_setpoint_mw=raw["ACTIVE_SETPOINT"],
            back_reflection_pct=tuple(round(v * 0.1, 1) for v in raw["BACK_REFLECTION"]),
            diode_temp_c=tuple(round(v * 0.01, 2) for v in raw["DIODE_TEMP"]),
            energy_mj=raw["ENERGY"],
            emission_time_ms=raw["EMISSION_TIME"],
        )


@dataclass(frozen=True, slots=True)
class LS4Holding:
    """Every LS-4 holding register, decoded from one block read of addresses 0-19."""

    control: Control
    command: int
    watchdog_timeout_ms: int
    heartbeat: int
    power_setpoint_mw: tuple[int, ...]
    ch_enable: tuple[int, ...]
    power_limit_mw: tuple[int, ...]
    ramp_rate_mw_s: tuple[int, ...]

    @classmethod
    def from_words(cls, words: Sequence[int]) -> LS4Holding:
        raw = decode_block(REGISTER_MAP, Table.HOLDING, words)
        return cls(
            control=Control(raw["CONTROL"]),
            command=raw["COMMAND"],
            watchdog_timeout_ms=raw["WATCHDOG_TIMEOUT"],
            heartbeat=raw["HEARTBEAT"],
            power_setpoint_mw=raw["POWER_SETPOINT"],
            ch_enable=raw["CH_ENABLE"],
            power_limit_mw=raw["POWER_LIMIT"],
            ramp_rate_mw_s=raw["RAMP_RATE"],
        )


def cycle_write_words(heartbeat: int, setpoints_mw: Sequence[int], enables: Sequence[bool]) -> list[int]:
    """The per-cycle function-16 payload for holding 3-11: heartbeat, four setpoints, four enables."""
    if len(setpoints_mw) != N or len(enables) != N:
        raise ValueError(f"need {N} setpoints and {N} enables")
    return [heartbeat & 0xFFFF, *(int(s) for s in setpoints_mw), *(1 if e else 0 for e in enables)]

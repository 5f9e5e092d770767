"""Datasheet write rules that depend only on the register map (ranges, reserved bits, addresses).

Rules that depend on the device's state (SERVER DEVICE BUSY) belong to the device itself.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

from .registers import Kind, RegisterMap, Table


class ExceptionCode(enum.IntEnum):
    ILLEGAL_FUNCTION = 0x01
    ILLEGAL_DATA_ADDRESS = 0x02
    ILLEGAL_DATA_VALUE = 0x03
    SERVER_DEVICE_FAILURE = 0x04
    SERVER_DEVICE_BUSY = 0x06


SUPPORTED_FUNCTION_CODES = frozenset({0x03, 0x04, 0x06, 0x10, 0x2B})
READ_DEVICE_ID_MEI_TYPE = 0x0E
MAX_READ_COUNT = 125  # Modbus application protocol v1.1b3, 6.3/6.4
MAX_WRITE_COUNT = 123  # 6.12


def check_span(regmap: RegisterMap, table: Table, address: int, count: int) -> ExceptionCode | None:
    """02 unless every address in [address, address+count) is in the table's map."""
    first, words = regmap.span(table)
    if count < 1 or address < first or address + count > first + words:
        return ExceptionCode.ILLEGAL_DATA_ADDRESS
    return None


def writes_by_row(regmap: RegisterMap, address: int, values: Sequence[int]) -> dict[str, dict[int, int]]:
    """Split a holding write into {row name: {element index: raw value}} (span already checked)."""
    out: dict[str, dict[int, int]] = {}
    for offset, value in enumerate(values):
        found = regmap.row_at(Table.HOLDING, address + offset)
        assert found is not None, "check_span first"
        row, index = found
        out.setdefault(row.name, {})[index] = value
    return out


def check_values(regmap: RegisterMap, address: int, values: Sequence[int], current: Mapping[str, Any]) -> ExceptionCode | None:
    """03 if any value of the request is out of its range or sets a reserved bit; the request is judged whole.

    A range whose top is another register (POWER_SETPOINT <= POWER_LIMIT) is judged against that
    register's value as it will be once this request is applied, since the request is applied as one.
    """
    updates = writes_by_row(regmap, address, values)

    def after(name: str, index: int) -> int:
        if name in updates and index in updates[name]:
            return updates[name][index]
        value = current[name]
        return value[index] if isinstance(value, tuple) else value

    for name, elements in updates.items():
        row = regmap[name]
        for index, value in elements.items():
            if not 0 <= value <= 0xFFFF:
                return ExceptionCode.ILLEGAL_DATA_VALUE
            if row.kind is Kind.BITS and value & ~row.allowed_bits():
                return ExceptionCode.ILLEGAL_DATA_VALUE
            if row.minimum is not None and value < row.minimum:
                return ExceptionCode.ILLEGAL_DATA_VALUE
            top = row.maximum
            if row.maximum_ref is not None:
                top = after(row.maximum_ref, index)
            if top is not None and value > top:
                return ExceptionCode.ILLEGAL_DATA_VALUE
    return None

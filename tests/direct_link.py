"""An in-process stand-in for the bus owner (controller.modbus_link.BusLink): the same three
coroutines, served straight from a SimWorld's device models, with no sockets and no event loop.

Every write that reaches a device is recorded with whether `safety.writer` made it (found on
the call stack), so a test can prove that nothing else writes the LS-4's control registers.
Link failures are injected per request: the request is lost before the device sees it, or the
reply is lost after the device applied it (what a dropped Modbus response does).
"""

from __future__ import annotations

import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from controller.modbus_link import DeviceRefused, LinkTimeout
from protocol.registers import Table
from protocol.validation import check_span
from sim.world import SimWorld

T = TypeVar("T")
WRITER_MODULE = "safety.writer"


@dataclass(frozen=True)
class Write:
    unit: int
    address: int
    values: tuple[int, ...]
    accepted: bool  # the device took it (no exception response)
    from_writer: bool  # safety.writer was on the call stack
    time_s: float  # device time


def _called_from_writer() -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == WRITER_MODULE:
            return True
        frame = frame.f_back
    return False


class DirectLink:
    def __init__(self, world: SimWorld) -> None:
        self.world = world
        self.writes: list[Write] = []
        self.requests = 0
        self.fail_next = 0  # this many requests fail with LinkTimeout
        self.fail_after_apply = False  # ... with the device having applied them (reply lost)

    def _fails(self) -> bool:
        self.requests += 1
        self.world.sync()
        if self.fail_next > 0:
            self.fail_next -= 1
            return True
        return False

    def _device(self, unit: int) -> Any:
        device = self.world.devices.get(unit)
        if device is None:
            raise LinkTimeout(f"unit {unit}: no reply")
        return device

    def _read(self, unit: int, table: Table, address: int, count: int) -> list[int]:
        if self._fails():
            raise LinkTimeout(f"read {table.value} {address}+{count} unit {unit}: no reply (injected)")
        device = self._device(unit)
        if (code := check_span(device.regmap, table, address, count)) is not None:
            raise DeviceRefused(unit=unit, function=0x04 if table is Table.INPUT else 0x03, code=int(code))
        words = device.input_words() if table is Table.INPUT else device.holding_words()
        first, _ = device.regmap.span(table)
        return list(words[address - first : address - first + count])

    async def read_input(self, *, unit: int, address: int, count: int) -> list[int]:
        return self._read(unit, Table.INPUT, address, count)

    async def read_holding(self, *, unit: int, address: int, count: int) -> list[int]:
        return self._read(unit, Table.HOLDING, address, count)

    async def write_registers(self, *, unit: int, address: int, values: list[int]) -> None:
        failed = self._fails()
        if failed and not self.fail_after_apply:
            raise LinkTimeout(f"write {address}+{len(values)} unit {unit}: no reply (injected, not applied)")
        device = self._device(unit)
        code = check_span(device.regmap, Table.HOLDING, address, len(values))
        if code is None:
            code = device.write_holding(address, list(values))
        self.writes.append(
            Write(
                unit=unit,
                address=address,
                values=tuple(values),
                accepted=code is None,
                from_writer=_called_from_writer(),
                time_s=self.world.time_s,
            )
        )
        if failed:
            raise LinkTimeout(f"write {address}+{len(values)} unit {unit}: no reply (injected, applied)")
        if code is not None:
            raise DeviceRefused(unit=unit, function=0x10, code=int(code))


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never really suspends (everything here answers at once), without a loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("the coroutine suspended: DirectLink callers must not wait on anything else")

"""A bench rig for conformance tests: the simulator served in-process, a real pymodbus client on TCP or RTU.

Device time is frozen at the start; tests move it with `step_ms`, so every timing rule of the
datasheets is checked exactly, without sleeping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

from protocol import ft8, ls4
from sim.world import SimWorld

LS4_UNIT = ls4.UNIT_ID
FT8_UNIT = ft8.UNIT_ID


class ModbusRefused(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"exception response {code:#04x}")
        self.code = code


@dataclass
class Rig:
    world: SimWorld
    client: AsyncModbusTcpClient | AsyncModbusSerialClient
    transport: str
    heartbeat: int = field(default=0)

    # --- raw access, returning the exception code instead of raising ---------------------

    async def read_input(self, address: int, count: int, *, unit: int = LS4_UNIT) -> list[int] | int:
        rr = await self.client.read_input_registers(address, count=count, device_id=unit)
        return rr.exception_code if rr.isError() else list(rr.registers)

    async def read_holding(self, address: int, count: int, *, unit: int = LS4_UNIT) -> list[int] | int:
        rr = await self.client.read_holding_registers(address, count=count, device_id=unit)
        return rr.exception_code if rr.isError() else list(rr.registers)

    async def write(self, address: int, values: Sequence[int], *, unit: int = LS4_UNIT) -> int | None:
        """Function 16. None when accepted, else the exception code."""
        rr = await self.client.write_registers(address, list(values), device_id=unit)
        return rr.exception_code if rr.isError() else None

    async def write1(self, address: int, value: int, *, unit: int = LS4_UNIT) -> int | None:
        """Function 06."""
        rr = await self.client.write_register(address, value, device_id=unit)
        return rr.exception_code if rr.isError() else None

    # --- decoded views ----------------------------------------------------------------------

    async def ls4(self) -> ls4.LS4Snapshot:
        words = await self.read_input(ls4.INPUT_FIRST, ls4.INPUT_COUNT)
        assert isinstance(words, list), f"LS-4 input read refused: {words}"
        return ls4.LS4Snapshot.from_words(words)

    async def ls4_holding(self) -> ls4.LS4Holding:
        words = await self.read_holding(ls4.HOLDING_FIRST, ls4.HOLDING_COUNT)
        assert isinstance(words, list), f"LS-4 holding read refused: {words}"
        return ls4.LS4Holding.from_words(words)

    async def ft8(self) -> ft8.FT8Snapshot:
        words = await self.read_input(ft8.INPUT_FIRST, ft8.INPUT_COUNT, unit=FT8_UNIT)
        assert isinstance(words, list), f"FT-8 input read refused: {words}"
        return ft8.FT8Snapshot.from_words(words)

    # --- the physical world and time ----------------------------------------------------------

    def bench(self, *words: Any) -> dict[str, Any]:
        return self.world.bench([str(w) for w in words])

    def step_ms(self, ms: float) -> None:
        self.bench("clock", "step", ms)

    # --- host habits ------------------------------------------------------------------------

    async def ok(self, address: int, values: Sequence[int]) -> None:
        code = await self.write(address, values)
        assert code is None, f"write at {address} of {list(values)} refused with {code}"

    async def beat(self) -> None:
        self.heartbeat = (self.heartbeat + 1) & 0xFFFF
        await self.ok(3, [self.heartbeat])

    async def take_control(self, *, watchdog_ms: int = 500) -> None:
        await self.ok(2, [watchdog_ms])
        await self.ok(0, [ls4.Control.HOST_CONTROL])

    async def arm(self) -> None:
        await self.ok(0, [ls4.Control.HOST_CONTROL | ls4.Control.EMISSION_ENABLE])

    async def cycle(self, setpoints_mw: Sequence[int], enables: Sequence[bool]) -> None:
        """The per-cycle function-16 write of holding 3-11."""
        self.heartbeat = (self.heartbeat + 1) & 0xFFFF
        await self.ok(ls4.CYCLE_WRITE_ADDRESS, ls4.cycle_write_words(self.heartbeat, setpoints_mw, enables))

    async def run_ms(self, ms: float, *, beat_every_ms: float = 100.0) -> None:
        """Let device time pass while keeping the watchdog fed, as a host would."""
        left = ms
        while left > 1e-9:
            step = min(beat_every_ms, left)
            await self.beat()
            self.step_ms(step)
            left -= step

    async def emit(self, setpoints_mw: Sequence[int], *, watchdog_ms: int = 2000) -> None:
        """Take control, set the setpoints on enabled channels, arm and press the footswitch."""
        await self.take_control(watchdog_ms=watchdog_ms)
        await self.cycle(setpoints_mw, [s > 0 for s in setpoints_mw])
        await self.arm()
        self.bench("footswitch", "press")

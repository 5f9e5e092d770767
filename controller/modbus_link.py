"""One Modbus bus, owned by one task: requests queue up and go out one at a time.

pymodbus does not support concurrent requests on one connection, and on RS-485 the bus itself
is shared by both devices, so every request of the daemon goes through the owner task of its
bus. The owner classifies every failure (timeout, corrupt frame, exception response, connection
lost), keeps counters, and re-creates the client after a run of failures.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException

from protocol.serial_line import line_parity

log = logging.getLogger("laserd.link")

QUEUE_DEPTH = 16  # a cycle makes three requests; anything deeper means the bus is falling behind
CONNECT_TIMEOUT_S = 1.0


class Transport(enum.Enum):
    TCP = "tcp"
    RTU = "rtu"


@dataclass(frozen=True, kw_only=True)
class LinkSettings:
    name: str
    transport: Transport
    host: str = "127.0.0.1"
    port: int = 502
    device: str = ""
    baudrate: int = 115_200
    parity: str = "E"
    stopbits: int = 1
    bytesize: int = 8
    request_timeout_s: float = 0.06
    reconnect_after_failures: int = 3

    def describe(self) -> str:
        if self.transport is Transport.TCP:
            return f"tcp {self.host}:{self.port}"
        return f"rtu {self.device} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"


class LinkError(Exception):
    """A request did not get a good answer."""


class LinkTimeout(LinkError):
    pass


class LinkCorrupt(LinkError):
    """Bytes came back, but no valid frame (a CRC error on RTU)."""


class LinkDown(LinkError):
    """No connection to the bus."""


class DeviceRefused(LinkError):
    """The device answered with a Modbus exception response."""

    def __init__(self, *, unit: int, function: int, code: int) -> None:
        super().__init__(f"unit {unit} refused function {function:#04x} with exception {code:#04x}")
        self.unit, self.function, self.code = unit, function, code


@dataclass
class LinkCounters:
    requests: int = 0
    ok: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    exception_responses: int = 0
    connection_errors: int = 0
    reconnects: int = 0
    consecutive_failures: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Request:
    describe: str
    call: Callable[[Any], Awaitable[Any]]
    future: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class BusLink:
    """Create inside a running loop; `start()` launches the owner task, `stop()` ends it."""

    def __init__(self, settings: LinkSettings) -> None:
        self.settings = settings
        self.counters = LinkCounters()
        self._queue: asyncio.Queue[_Request] = asyncio.Queue(maxsize=QUEUE_DEPTH)
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._received_bytes = 0

    @property
    def up(self) -> bool:
        return self._client is not None and self._client.connected and self.counters.consecutive_failures == 0

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._owner(), name=f"bus-{self.settings.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._close_client()
        while not self._queue.empty():
            request = self._queue.get_nowait()
            if not request.future.done():
                request.future.set_exception(LinkDown(f"bus {self.settings.name} stopped"))

    # --- requests -------------------------------------------------------------------------

    async def read_input(self, *, unit: int, address: int, count: int) -> list[int]:
        return await self._read(0x04, unit=unit, address=address, count=count)

    async def read_holding(self, *, unit: int, address: int, count: int) -> list[int]:
        return await self._read(0x03, unit=unit, address=address, count=count)

    async def _read(self, function: int, *, unit: int, address: int, count: int) -> list[int]:
        table = "input" if function == 0x04 else "holding"
        rr = await self._submit(
            f"read {table} {address}+{count} unit {unit}",
            lambda c: (c.read_input_registers if function == 0x04 else c.read_holding_registers)(address, count=count, device_id=unit),
            unit=unit,
            function=function,
        )
        registers = list(rr.registers)
        if len(registers) != count:
            self.counters.crc_errors += 1
            raise LinkCorrupt(f"unit {unit} answered {len(registers)} registers for {count}")
        return registers

    async def write_registers(self, *, unit: int, address: int, values: list[int]) -> None:
        await self._submit(
            f"write {address}+{len(values)} unit {unit}",
            lambda c: c.write_registers(address, list(values), device_id=unit),
            unit=unit,
            function=0x10,
        )

    async def read_identification(self, *, unit: int) -> dict[int, bytes]:
        rr = await self._submit(
            f"read device identification unit {unit}",
            lambda c: c.read_device_information(device_id=unit),
            unit=unit,
            function=0x2B,
        )
        return dict(rr.information)

    async def _submit(self, describe: str, call: Callable[[Any], Awaitable[Any]], *, unit: int, function: int) -> Any:
        request = _Request(describe=describe, call=call)
        try:
            self._queue.put_nowait(request)
        except asyncio.QueueFull:
            raise LinkDown(f"bus {self.settings.name}: request queue full ({QUEUE_DEPTH}); bus is falling behind") from None
        rr = await request.future
        if rr.isError():
            code = getattr(rr, "exception_code", 0)
            raise DeviceRefused(unit=unit, function=function, code=code)
        return rr

    # --- the owner task ----------------------------------------------------------------------

    async def _owner(self) -> None:
        while True:
            request = await self._queue.get()
            if request.future.cancelled():
                continue
            try:
                result = await self._execute(request)
            except LinkError as err:
                self._failed(err)
                if not request.future.done():
                    request.future.set_exception(err)
            else:
                self.counters.ok += 1
                self.counters.consecutive_failures = 0
                if not request.future.done():
                    request.future.set_result(result)

    async def _execute(self, request: _Request) -> Any:
        self.counters.requests += 1
        client = await self._connected_client()
        self._received_bytes = 0
        try:
            rr = await asyncio.wait_for(request.call(client), timeout=self.settings.request_timeout_s * 2 + 0.05)
        except ConnectionException as err:
            self.counters.connection_errors += 1
            raise LinkDown(f"bus {self.settings.name}: {request.describe}: connection lost") from err
        except (ModbusException, asyncio.TimeoutError) as err:
            if self._received_bytes:
                self.counters.crc_errors += 1
                raise LinkCorrupt(f"bus {self.settings.name}: {request.describe}: corrupt reply") from err
            self.counters.timeouts += 1
            raise LinkTimeout(f"bus {self.settings.name}: {request.describe}: no reply within {self.settings.request_timeout_s * 1000:.0f} ms") from err
        if rr.isError():
            self.counters.exception_responses += 1
        return rr

    def _failed(self, err: LinkError) -> None:
        if isinstance(err, DeviceRefused):
            return  # the bus works; the device said no
        self.counters.consecutive_failures += 1
        if self.counters.consecutive_failures % self.settings.reconnect_after_failures == 0:
            log.warning("bus=%s event=reconnect after=%d failures last=%s", self.settings.name, self.counters.consecutive_failures, err)
            self._close_client()

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._received_bytes += len(data)
        return data

    async def _connected_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        if self._client is None:
            self._client = self._make_client()
            self.counters.reconnects += 1
        if not self._client.connected:
            try:
                ok = await asyncio.wait_for(self._client.connect(), timeout=CONNECT_TIMEOUT_S)
            except (asyncio.TimeoutError, OSError, ModbusException):
                ok = False
            if not ok:
                self.counters.connection_errors += 1
                self._close_client()
                raise LinkDown(f"bus {self.settings.name}: cannot connect to {self.settings.describe()}")
        return self._client

    def _make_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        s = self.settings
        if s.transport is Transport.TCP:
            return AsyncModbusTcpClient(
                s.host, port=s.port, timeout=s.request_timeout_s, retries=0, reconnect_delay=0, trace_packet=self._trace_packet
            )
        return AsyncModbusSerialClient(
            s.device,
            framer=FramerType.RTU,
            baudrate=s.baudrate,
            bytesize=s.bytesize,
            parity=line_parity(s.device, s.parity, baudrate=s.baudrate),
            stopbits=s.stopbits,
            timeout=s.request_timeout_s,
            retries=0,
            reconnect_delay=0,
            trace_packet=self._trace_packet,
        )

    def _close_client(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing a broken client must never raise into the owner
                log.debug("bus=%s event=close-error", self.settings.name, exc_info=True)
            self._client = None

"""The simulator served in-process on a real transport, real clients, and raw byte-level ports.

Used by the fixtures in conftest.py and by transport tests that build frames by hand.
"""


from __future__ import annotations

import asyncio
import os
import struct
import termios
import time
import tty
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.framer import FramerType
from pymodbus.framer.rtu import FramerRTU

from protocol import ls4 as LS4
from rig import Rig
from sim.clock import SimClock
from protocol.serial_line import line_parity
from sim.ptypair import PtyPair
from sim.server import ServerHandle, start_rtu_server, start_tcp_server
from sim.world import SimWorld

CLIENT_TIMEOUT_S = 1.0  # only ever waited out by tests that expect no answer
RAW_TIMEOUT_S = 2.0


async def wait_until(condition: Callable[[], bool], *, timeout_s: float = 5.0, what: str = "condition") -> None:
    """Poll `condition` until it holds; fail the test after `timeout_s` (a deadline, not a delay)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    body = bytes([unit]) + pdu
    return body + FramerRTU.compute_CRC(body).to_bytes(2, "big")


def tcp_frame(transaction_id: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", transaction_id, 0, len(pdu) + 1, unit) + pdu


@dataclass(frozen=True)
class Reply:
    """One response frame off the wire."""

    unit: int
    pdu: bytes
    transaction_id: int = 0

    @property
    def function_code(self) -> int:
        return self.pdu[0]

    @property
    def exception_code(self) -> int | None:
        return self.pdu[1] if self.pdu[0] & 0x80 and len(self.pdu) == 2 else None


class RawTcp:
    """A raw Modbus/TCP connection: whatever bytes a test likes, and whole response frames back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._tid = 0

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def request(self, unit: int, pdu: bytes, *, timeout_s: float = RAW_TIMEOUT_S) -> Reply | None:
        self._tid = (self._tid + 1) & 0xFFFF
        await self.send(tcp_frame(self._tid, unit, pdu))
        reply = await self.receive(timeout_s=timeout_s)
        assert reply is None or reply.transaction_id == self._tid, f"reply to transaction {reply.transaction_id}, not {self._tid}"
        return reply

    async def receive(self, *, timeout_s: float = RAW_TIMEOUT_S) -> Reply | None:
        """The next response frame, or None if the server closed the connection or said nothing in time."""
        try:
            header = await asyncio.wait_for(self.reader.readexactly(7), timeout_s)
            tid, protocol_id, length, unit = struct.unpack(">HHHB", header)
            assert protocol_id == 0 and 2 <= length <= 254, f"bad MBAP header in a response: {header.hex()}"
            pdu = await asyncio.wait_for(self.reader.readexactly(length - 1), timeout_s)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            return None
        return Reply(unit=unit, pdu=pdu, transaction_id=tid)

    async def closed_by_server(self, *, timeout_s: float = RAW_TIMEOUT_S) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), timeout_s) == b""
        except (asyncio.TimeoutError, ConnectionError):
            return False

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


def _rtu_response_size(buf: bytes) -> int | None:
    """Length of the response frame at the start of `buf`, if it can be told yet."""
    if len(buf) < 3:
        return None
    fc = buf[1]
    if fc & 0x80:
        return 5
    if fc in (0x03, 0x04):
        return 5 + buf[2]
    if fc in (0x06, 0x10):
        return 8
    if fc == 0x2B:  # unit fc mei code conformity more next count {id len value}* crc
        if len(buf) < 8:
            return None
        size = 8
        for _ in range(buf[7]):
            if len(buf) < size + 2:
                return None
            size += 2 + buf[size + 1]
        return size + 2
    raise AssertionError(f"unexpected RTU response function code 0x{fc:02X}: {buf.hex()}")


class RawRtu:
    """The client end of the pty, raw: whatever bytes a test likes, and whole response frames back."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        termios.tcflush(self.fd, termios.TCIOFLUSH)  # nothing left over from an earlier client
        self.buffer = bytearray()
        self._arrived = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            self.buffer += os.read(self.fd, 4096)
        except BlockingIOError:
            return
        self._arrived.set()

    async def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    async def request(self, unit: int, pdu: bytes, *, timeout_s: float = RAW_TIMEOUT_S) -> Reply | None:
        await self.send(rtu_frame(unit, pdu))
        return await self.receive(timeout_s=timeout_s)

    async def receive(self, *, timeout_s: float = RAW_TIMEOUT_S) -> Reply | None:
        deadline = time.monotonic() + timeout_s
        while (size := _rtu_response_size(bytes(self.buffer))) is None or len(self.buffer) < size:
            self._arrived.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return None
        frame, self.buffer = bytes(self.buffer[:size]), self.buffer[size:]
        assert FramerRTU.check_CRC(frame[:-2], int.from_bytes(frame[-2:], "big")), f"bad CRC in {frame.hex()}"
        return Reply(unit=frame[0], pdu=frame[1:-2])

    async def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)


@dataclass
class Bus:
    world: SimWorld
    server: ServerHandle
    client: AsyncModbusTcpClient | AsyncModbusSerialClient
    transport: str  # "tcp" | "rtu"
    client_end: str  # "127.0.0.1:PORT" or the client's pty path
    _raw: list[RawTcp | RawRtu] = field(default_factory=list)

    def bench(self, *words: object) -> dict:
        return self.world.bench([str(w) for w in words])

    async def raw(self) -> RawTcp | RawRtu:
        """A raw port to the server. On RTU this closes `client` first: one end of a pty has one user."""
        if self.transport == "tcp":
            port: RawTcp | RawRtu = RawTcp(*await asyncio.open_connection("127.0.0.1", self.server.port))
        else:
            self.client.close()
            port = RawRtu(self.client_end)
        self._raw.append(port)
        return port

    async def close(self) -> None:
        for port in self._raw:
            await port.close()
        self.client.close()


def modbus_client(transport: str, where: str, *, timeout_s: float = CLIENT_TIMEOUT_S) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
    """A real pymodbus async client, as the host would configure it (no retries: tests see every failure)."""
    if transport == "tcp":
        host, port = where.rsplit(":", 1)
        return AsyncModbusTcpClient(host, port=int(port), timeout=timeout_s, retries=0)
    return AsyncModbusSerialClient(
        where,
        framer=FramerType.RTU,
        baudrate=LS4.SERIAL_BAUD,
        bytesize=LS4.SERIAL_BYTESIZE,
        parity=line_parity(where, LS4.SERIAL_PARITY, baudrate=LS4.SERIAL_BAUD),
        stopbits=LS4.SERIAL_STOPBITS,
        timeout=timeout_s,
        retries=0,
    )

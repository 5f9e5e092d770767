"""Serve the simulated devices on real Modbus: TCP (one port, like a gateway) or RTU on a serial port.

Both units share one server, as an LS-4 (unit 1) and an FT-8 (unit 2) share one RS-485 bus.
The register store is pymodbus's simulator (`SimDevice`/`SimData`, built from the protocol maps),
so an address outside a device's map is refused with 02 before the device is touched; an
`action=` hook copies the device's words in on reads and hands writes to the device, which
judges them and may refuse them.

What pymodbus 3.16's request handler does not do, the connection handlers here do (see
docs/simulator.md for each choice and its reason):

- bring device time up to date (`world.sync()`) before every request;
- the bench's link faults: delay, drop, corrupt, silence (a rebooting device);
- unknown unit ids: no answer on RTU (nobody on the bus has that address), 0x0B on TCP (a
  gateway whose target does not answer); broadcast (unit 0) is not supported and ignored;
- one request at a time per connection, in arrival order, each answered with its own
  transaction id (the stock handler keeps only the last decoded request, so a second request
  arriving while the first is delayed would be answered with the wrong id);
- framing robustness: a TCP header that cannot be a Modbus frame closes the connection (the
  stream cannot be re-synchronised); on RTU a frame that does not decode at once is delimited
  by the silence that ends every frame on the line, and discarded there if its CRC is wrong;
- any exception from device code answers 04 and is logged; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import termios
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.framer.rtu import FramerRTU
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from protocol import ls4 as LS4
from protocol.registers import Table, WORD_MASK

from .clock import SimClock
from .device import ServedDevice
from .link import LinkFaults
from .modbus_pdus import IllegalFunctionRequest, RequestContext, SimRequest, request_classes
from protocol.serial_line import line_parity

log = logging.getLogger(__name__)

BROADCAST_UNIT = 0
READ_HOLDING = 0x03
# Modbus/TCP MBAP header: transaction id, protocol id (always 0), length (unit id + PDU), unit id.
MBAP_SIZE = 7
MBAP_MIN_LENGTH = 2  # unit id + function code
MBAP_MAX_LENGTH = 254  # unit id + the largest PDU (253 bytes)
TCP_RECEIVE_LIMIT = 8 * (6 + MBAP_MAX_LENGTH)  # room for pipelined requests (Modbus/TCP allows them)
# The end of an RTU frame is a silence on the line. The standard's 1.75 ms (t3.5 above 19200 baud)
# is too tight for a pty on a loaded host, where a frame written at once also arrives at once;
# 20 ms resynchronises after garbage long before a 10 Hz host's next request.
RTU_SILENCE_S = 0.020
RTU_RECEIVE_LIMIT = 2 * 256


class World(Protocol):
    """The part of sim.world.SimWorld the server uses."""

    @property
    def devices(self) -> Mapping[int, ServedDevice]: ...

    @property
    def link(self) -> LinkFaults: ...

    @property
    def clock(self) -> SimClock: ...

    def sync(self) -> None:
        """Bring every model to the clock's present."""


class ServeError(RuntimeError):
    """The server could not start (one-line message)."""


class DeviceWordsError(RuntimeError):
    """A device returned a register block that does not fit its own map."""


@dataclass
class ServerStats:
    """Counters for tests and diagnostics (link faults are counted in LinkFaults)."""

    requests: int = 0  # decoded requests
    answered: int = 0  # responses handed to the transport (after drop, before delay)
    unanswered: int = 0  # silent devices, broadcast, unknown unit on RTU
    device_errors: int = 0  # exceptions from device code, answered 04
    bad_frames: int = 0  # RTU frames with a bad CRC, TCP headers that cannot be Modbus
    discarded_bytes: int = 0


# --- the register store --------------------------------------------------------------------------


def _table_block(device: ServedDevice, table: Table) -> list[SimData]:
    rows = device.regmap.table_rows(table)
    if not rows:
        return [SimData(address=0, datatype=DataType.INVALID)]  # no such table: every address is 02
    return [
        SimData(address=row.address, count=row.words, values=0, datatype=DataType.REGISTERS, readonly=table is Table.INPUT)
        for row in rows
    ]


def _sim_device(world: World, unit: int) -> SimDevice:
    """A pymodbus SimDevice whose blocks are the device's map and whose action is the device itself."""
    device = world.devices[unit]

    async def action(
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        served = world.devices[unit]  # looked up per request: the world owns its devices
        if set_values is None:
            table = Table.HOLDING if function_code == READ_HOLDING else Table.INPUT
            words = served.holding_words() if table is Table.HOLDING else served.input_words()
            first, size = served.regmap.span(table)
            if first != start_address or len(words) != size or any(not 0 <= w <= WORD_MASK for w in words):
                raise DeviceWordsError(f"unit {unit} {table.value} block does not fit its map ({len(words)} words)")
            current_registers[:size] = words
            return None
        code = served.write_holding(address, [int(v) for v in set_values])
        return None if code is None else ExcCodes(int(code))

    # The tuple form keeps holding and input registers apart. It needs a coil and a discrete-input
    # list too; these placeholders are never reached, since functions 01/02/05/15 answer 01 first.
    placeholder = [SimData(address=0, values=False, datatype=DataType.BITS)]
    return SimDevice(
        id=unit,
        simdata=(placeholder, list(placeholder), _table_block(device, Table.HOLDING), _table_block(device, Table.INPUT)),
        action=action,
    )


# --- answering one request ------------------------------------------------------------------------


class _Responder:
    """Turns one decoded request into its response, or None when the device must stay silent."""

    def __init__(self, world: World, context: RequestContext, stats: ServerStats, *, answer_unknown_units: bool) -> None:
        self.world = world
        self.context = context
        self.stats = stats
        self.answer_unknown_units = answer_unknown_units

    async def respond(self, request: SimRequest) -> ModbusPDU | None:
        self.stats.requests += 1
        unit = request.dev_id
        try:
            self.world.sync()
            if self.world.clock.now_s() < self.world.link.silent_until_s or unit == BROADCAST_UNIT:
                self.stats.unanswered += 1
                return None
            if unit not in self.context.identities:
                if not self.answer_unknown_units:
                    self.stats.unanswered += 1
                    return None
                return request.refuse(ExcCodes.GATEWAY_NO_RESPONSE)
            return await request.datastore_update(self.context, unit)
        except Exception:
            self.stats.device_errors += 1
            log.exception("unit %d function 0x%02X failed; answered 04", unit, request.function_code)
            return request.refuse(ExcCodes.DEVICE_FAILURE)


# --- connections -------------------------------------------------------------------------------------


class _Handler(ServerRequestHandler):
    """One connection (a TCP client, or the serial line). Subclasses find the frames."""

    receive_limit: int
    corrupt_at: int  # index of the byte a `link corrupt` flips

    def __init__(self, owner: _SimServer) -> None:
        super().__init__(owner, None, None, None)
        self.owner = owner
        self.max_buffer_size = self.receive_limit
        self._in_order = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()

    @property
    def stats(self) -> ServerStats:
        return self.owner.stats

    def callback_data(self, data: bytes, addr: tuple | None = None) -> int:
        """Called by pymodbus's transport with everything buffered; returns how much was used."""
        try:
            return self.find_frames(data, addr)
        except Exception:  # a framing bug must not close the connection (or, on RTU, the bus)
            self.stats.bad_frames += 1
            self.stats.discarded_bytes += len(data)
            log.exception("framing failed; %d bytes discarded", len(data))
            return len(data)

    def find_frames(self, data: bytes, addr: tuple | None) -> int:
        raise NotImplementedError

    def callback_disconnected(self, exc: Exception | None) -> None:
        self._cleanup()
        super().callback_disconnected(exc)

    def _cleanup(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()

    def _submit(self, unit: int, transaction_id: int, pdu_bytes: bytes, addr: tuple | None) -> None:
        """Decode one frame's PDU and queue it; requests are answered one at a time, in arrival order."""
        decoded = self.framer.decoder.decode(pdu_bytes)
        # Anything that is not one of ours (a byte above 0x80, or an undecodable one) is a function
        # code the devices do not have.
        request = decoded if isinstance(decoded, SimRequest) else IllegalFunctionRequest.for_code(pdu_bytes[0])
        request.dev_id, request.transaction_id = unit, transaction_id
        task = self.loop.create_task(self._serve(request, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, request: SimRequest, addr: tuple | None) -> None:
        async with self._in_order:
            response = await self.owner.responder.respond(request)
            if response is not None:
                self._deliver(response, request, addr)

    def _deliver(self, response: ModbusPDU, request: SimRequest, addr: tuple | None) -> None:
        response.dev_id, response.transaction_id = request.dev_id, request.transaction_id
        try:
            packet = self.framer.buildFrame(response)
        except Exception:
            self.stats.device_errors += 1
            log.exception("unit %d function 0x%02X: response not encodable; answered 04", request.dev_id, request.function_code)
            failure = request.refuse(ExcCodes.DEVICE_FAILURE)
            failure.dev_id, failure.transaction_id = request.dev_id, request.transaction_id
            packet = self.framer.buildFrame(failure)
        link = self.owner.world.link
        if link.drop_next > 0:
            link.drop_next -= 1
            link.dropped += 1
            return
        self.stats.answered += 1
        if link.corrupt_next > 0:
            link.corrupt_next -= 1
            link.corrupted += 1
            corrupted = bytearray(packet)
            corrupted[self.corrupt_at] ^= 0xFF
            packet = bytes(corrupted)
        if link.delay_ms > 0:
            # a latency, not a busy device: the next request is carried out meanwhile
            timer = self.loop.call_later(link.delay_ms / 1000.0, self._write_later, packet)
            self._timers.add(timer)
        else:
            self._write(packet)

    def _write_later(self, packet: bytes) -> None:
        now = self.loop.time()
        self._timers = {t for t in self._timers if t.when() > now}  # forget this timer and any other that fired
        self._write(packet)

    def _write(self, packet: bytes) -> None:
        # Straight to the transport: ModbusProtocol.send() also empties the receive buffer, which
        # would lose the start of a request that arrived while this one was being answered.
        if self.transport is not None and not self.is_closing:
            self.transport.write(packet)  # type: ignore[attr-defined]


class _TcpHandler(_Handler):
    receive_limit = TCP_RECEIVE_LIMIT
    # The unit id: the frame arrives whole but from a unit nobody asked, so a client discards it, as it
    # discards an RTU frame with a bad CRC. (Flipping the function code instead can make a valid-looking
    # exception response, or make pymodbus's client fail inside data_received and drop the connection.)
    corrupt_at = MBAP_SIZE - 1

    def find_frames(self, data: bytes, addr: tuple | None) -> int:
        used = 0
        while len(data) - used >= MBAP_SIZE:
            transaction_id, protocol_id, length, unit = struct.unpack_from(">HHHB", data, used)
            if protocol_id != 0 or not MBAP_MIN_LENGTH <= length <= MBAP_MAX_LENGTH:
                # Not a Modbus/TCP header, and a byte stream cannot be re-synchronised: close,
                # as a device does; the client reconnects.
                self.stats.bad_frames += 1
                self.stats.discarded_bytes += len(data) - used
                log.warning("bad Modbus/TCP header (protocol id %d, length %d): connection closed", protocol_id, length)
                self._cleanup()
                self.close()
                return len(data)
            end = used + 6 + length
            if end > len(data):
                break  # wait for the rest of the frame
            self._submit(unit, transaction_id, data[used + MBAP_SIZE : end], addr)
            used = end
        return used


class _RtuFramer(FramerRTU):
    """The stock RTU framer, except where a frame ends.

    Stock decode drops everything buffered when the CRC at the expected length is wrong, and
    everything after a good frame. Here a wrong CRC means "not decided yet": the handler waits for
    the line to fall silent, which is where an RTU frame really ends. Bytes after a good frame stay
    buffered: they are the next request (on a pty there is no gap between frames to lose them in).
    Every function code has a request class (see modbus_pdus), so the frame always starts at
    the first buffered byte: stock decode never hunts for a later start.
    """

    def decode(self, data: bytes) -> tuple[int, int, int, bytes]:
        _used, unit, transaction_id, pdu = super().decode(data)
        if not pdu:
            return 0, 0, 0, self.EMPTY
        return len(pdu) + 3, unit, transaction_id, pdu  # unit id + PDU + CRC


class _RtuHandler(_Handler):
    receive_limit = RTU_RECEIVE_LIMIT
    corrupt_at = -1  # a CRC byte: the frame keeps its length, the client sees a CRC error

    def __init__(self, owner: _SimServer) -> None:
        super().__init__(owner)
        self._silence: asyncio.TimerHandle | None = None

    def find_frames(self, data: bytes, addr: tuple | None) -> int:
        self._cancel_silence()
        used = 0
        while used < len(data):
            size, unit, _tid, pdu_bytes = self.framer.decode(data[used:])
            if not pdu_bytes:
                break
            self._submit(unit, 0, pdu_bytes, addr)
            used += size
        if used < len(data):
            self._silence = self.loop.call_later(RTU_SILENCE_S, self._end_of_frame)
        return used

    def _end_of_frame(self) -> None:
        """The line fell silent: what is buffered is one frame. Answer it if its CRC holds, else drop it."""
        self._silence = None
        frame, self.recv_buffer = self.recv_buffer, b""
        if len(frame) >= FramerRTU.MIN_SIZE and FramerRTU.check_CRC(frame[:-2], int.from_bytes(frame[-2:], "big")):
            try:
                self._submit(frame[0], 0, frame[1:-2], None)
                return
            except Exception:
                log.exception("RTU frame could not be queued")
        self.stats.bad_frames += 1
        self.stats.discarded_bytes += len(frame)
        log.debug("RTU: %d bytes without a valid frame discarded", len(frame))

    def _cancel_silence(self) -> None:
        if self._silence is not None:
            self._silence.cancel()
            self._silence = None

    def _cleanup(self) -> None:
        self._cancel_silence()
        super()._cleanup()


# --- servers -------------------------------------------------------------------------------------------


class _SimServer:
    """What both server classes add to pymodbus's: the world, the counters, and how to answer."""

    context: Any  # set by ModbusBaseServer: the SimCore built from the SimDevices
    world: World
    stats: ServerStats
    responder: _Responder

    def _attach(self, world: World, *, answer_unknown_units: bool) -> None:
        self.world = world
        self.stats = ServerStats()
        identities = {unit: device.identity for unit, device in world.devices.items()}
        context = RequestContext(core=cast(SimCore, self.context), identities=identities)
        self.responder = _Responder(world, context, self.stats, answer_unknown_units=answer_unknown_units)


def _sim_devices(world: World) -> list[SimDevice]:
    return [_sim_device(world, unit) for unit in sorted(world.devices)]


class _TcpServer(_SimServer, ModbusTcpServer):
    def __init__(self, world: World, *, host: str, port: int) -> None:
        super().__init__(_sim_devices(world), address=(host, port), custom_pdu=request_classes())
        self._attach(world, answer_unknown_units=True)

    def callback_new_connection(self) -> _TcpHandler:
        return _TcpHandler(self)


class _RtuServer(_SimServer, ModbusSerialServer):
    def __init__(self, world: World, *, port: str, parity: str) -> None:
        super().__init__(
            _sim_devices(world),
            framer=FramerType.RTU,
            port=port,
            baudrate=LS4.SERIAL_BAUD,
            bytesize=LS4.SERIAL_BYTESIZE,
            parity=parity,
            stopbits=LS4.SERIAL_STOPBITS,
            custom_pdu=request_classes(),
        )
        self.framer = _RtuFramer  # type: ignore[assignment]  # used when the serial handler is made
        self._attach(world, answer_unknown_units=False)

    def callback_new_connection(self) -> _RtuHandler:
        return _RtuHandler(self)


class ServerHandle:
    """A running server: `where` is what a client connects to; `stop()` closes it and its connections."""

    def __init__(
        self,
        *,
        server: _TcpServer | _RtuServer,
        transport: Literal["tcp", "rtu"],
        where: str,
        port: int | None = None,
        line: str | None = None,
    ) -> None:
        self._server = server
        self.transport = transport
        self.where = where
        self.port = port  # the bound TCP port (useful with port 0); None on RTU
        self.line = line  # the serial settings in use, e.g. "115200 8E1"; None on TCP

    @property
    def stats(self) -> ServerStats:
        return self._server.stats

    async def stop(self) -> None:
        await self._server.shutdown()


async def start_tcp_server(world: World, *, host: str = "127.0.0.1", port: int = 502) -> ServerHandle:
    """Serve every device of `world` on one Modbus/TCP port (0: any free port, see `.port`)."""
    server = _TcpServer(world, host=host, port=port)
    try:
        await server.serve_forever(background=True)
    except RuntimeError as exc:
        raise ServeError(f"cannot listen on TCP {host}:{port} (in use, not a local address, or needs privileges)") from exc
    bound = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return ServerHandle(server=server, transport="tcp", where=f"{host}:{bound}", port=bound)


async def start_rtu_server(world: World, *, port: str) -> ServerHandle:
    """Serve every device of `world` as Modbus RTU slaves on one serial line (115200 8E1)."""
    if not os.path.exists(port):
        raise ServeError(f"no serial device {port}")
    parity = line_parity(port, LS4.SERIAL_PARITY, baudrate=LS4.SERIAL_BAUD)
    if parity != LS4.SERIAL_PARITY:
        log.warning("%s is a pty that refuses parity settings: serving 8N1 (a pty carries no parity bits)", port)
    server = _RtuServer(world, port=port, parity=parity)
    try:
        await server.serve_forever(background=True)
    except (RuntimeError, OSError, termios.error) as exc:
        raise ServeError(f"cannot open serial device {port}: {exc}") from exc
    line = f"{LS4.SERIAL_BAUD} {LS4.SERIAL_BYTESIZE}{parity}{LS4.SERIAL_STOPBITS}"
    return ServerHandle(server=server, transport="rtu", where=port, port=None, line=line)

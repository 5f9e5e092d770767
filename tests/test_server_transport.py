"""The Modbus server on both transports: every exception path, identity per unit, unknown units,
link faults, and that no input, however malformed, stops it from answering the next good request.

Everything goes over a real socket or a real socat pty pair, through a real pymodbus client or
raw bytes. Device time is frozen where time matters and moved with the bench's `clock` action.
"""

from __future__ import annotations

import logging
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu.file_message import FileRecord

from bus import Bus, RawRtu, RawTcp, Reply, rtu_frame, tcp_frame, wait_until
from protocol import ft8 as FT8
from protocol import ls4 as LS4

ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE, DEVICE_FAILURE, BUSY, GATEWAY_NO_RESPONSE = 1, 2, 3, 4, 6, 0x0B
LS4_UNIT, FT8_UNIT = LS4.UNIT_ID, FT8.UNIT_ID
TCP_ONLY = pytest.mark.parametrize("bus", ["tcp"], indirect=True)  # framing and transaction ids of Modbus/TCP
RTU_ONLY = pytest.mark.parametrize("bus", ["rtu"], indirect=True)  # framing of Modbus RTU


def read_pdu(fc: int, address: int, count: int) -> bytes:
    return struct.pack(">BHH", fc, address, count)


def write_multiple_pdu(address: int, count: int, byte_count: int, payload: bytes) -> bytes:
    return struct.pack(">BHHB", 0x10, address, count, byte_count) + payload


def assert_refused(reply: Reply | None, fc: int, code: int) -> None:
    assert reply is not None, f"no answer to function 0x{fc:02X}"
    assert (reply.function_code, reply.exception_code) == (fc | 0x80, code), f"got {reply.pdu.hex()}"


async def holding(bus: Bus, unit: int = LS4_UNIT) -> list[int]:
    count = LS4.HOLDING_COUNT if unit == LS4_UNIT else FT8.HOLDING_COUNT
    rr = await bus.client.read_holding_registers(0, count=count, device_id=unit)
    assert not rr.isError(), rr
    return list(rr.registers)


# --- function codes the datasheets do not list: 01 with the right function code ---------------------

UNLISTED = [
    (0x01, "read_coils", lambda c: c.read_coils(0, count=1, device_id=LS4_UNIT)),
    (0x02, "read_discrete_inputs", lambda c: c.read_discrete_inputs(0, count=8, device_id=LS4_UNIT)),
    (0x05, "write_coil", lambda c: c.write_coil(0, True, device_id=LS4_UNIT)),
    (0x0F, "write_coils", lambda c: c.write_coils(0, [True] * 10, device_id=LS4_UNIT)),
    (0x07, "read_exception_status", lambda c: c.read_exception_status(device_id=LS4_UNIT)),
    (0x08, "diag_read_diagnostic_register", lambda c: c.diag_read_diagnostic_register(device_id=LS4_UNIT)),
    (0x0B, "diag_get_comm_event_counter", lambda c: c.diag_get_comm_event_counter(device_id=LS4_UNIT)),
    (0x0C, "diag_get_comm_event_log", lambda c: c.diag_get_comm_event_log(device_id=LS4_UNIT)),
    (0x11, "report_device_id", lambda c: c.report_device_id(device_id=LS4_UNIT)),
    (0x14, "read_file_record", lambda c: c.read_file_record([FileRecord(file_number=1, record_number=0, record_length=2)], device_id=LS4_UNIT)),
    (0x15, "write_file_record", lambda c: c.write_file_record([FileRecord(file_number=1, record_number=0, record_data=b"\x00\x01")], device_id=LS4_UNIT)),
    (0x16, "mask_write_register", lambda c: c.mask_write_register(address=0, and_mask=0, or_mask=1, device_id=LS4_UNIT)),
    (0x17, "readwrite_registers", lambda c: c.readwrite_registers(read_address=0, read_count=1, write_address=3, values=[7], device_id=LS4_UNIT)),
    (0x18, "read_fifo_queue", lambda c: c.read_fifo_queue(address=0, device_id=FT8_UNIT)),
]


@pytest.mark.parametrize(("fc", "call"), [(fc, call) for fc, _, call in UNLISTED], ids=[name for _, name, _ in UNLISTED])
async def test_unlisted_function_codes_answer_01_with_their_function_code(bus: Bus, fc: int, call) -> None:
    before = await holding(bus)
    rr = await call(bus.client)
    assert rr.isError() and rr.function_code == fc | 0x80 and rr.exception_code == ILLEGAL_FUNCTION
    assert await holding(bus) == before  # 22 and 23 would write holding registers: nothing changed


@pytest.mark.parametrize("fc", [0x00, 0x09, 0x29, 0x41, 0x64, 0x7F, 0x80])
async def test_unknown_function_codes_answer_01_with_their_own_function_code(bus: Bus, fc: int) -> None:
    raw = await bus.raw()
    assert_refused(await raw.request(LS4_UNIT, bytes([fc])), fc, ILLEGAL_FUNCTION)
    assert_refused(await raw.request(FT8_UNIT, bytes([fc, 1, 2, 3])), fc, ILLEGAL_FUNCTION)


@pytest.mark.parametrize("fc", [0x83, 0xC1, 0xFF])
async def test_exception_codes_sent_as_requests_answer_01(bus: Bus, fc: int) -> None:
    raw = await bus.raw()
    assert_refused(await raw.request(LS4_UNIT, bytes([fc, 0x02])), fc, ILLEGAL_FUNCTION)
    assert (await raw.request(LS4_UNIT, read_pdu(4, 0, 1))).pdu[:2] == b"\x04\x02"


@pytest.mark.parametrize("mei", [0x0D, 0x00, 0x0F])
async def test_function_43_other_than_14_answers_01(bus: Bus, mei: int) -> None:
    raw = await bus.raw()
    assert_refused(await raw.request(LS4_UNIT, bytes([0x2B, mei, 0x01, 0x00])), 0x2B, ILLEGAL_FUNCTION)


# --- read device identification, per unit -----------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "product", "revision"), [(LS4_UNIT, b"LS-4", b"2.1"), (FT8_UNIT, b"FT-8", b"1.3")], ids=["LS-4", "FT-8"]
)
async def test_each_unit_identifies_itself(bus: Bus, unit: int, product: bytes, revision: bytes) -> None:
    rr = await bus.client.read_device_information(device_id=unit)
    assert not rr.isError(), rr
    assert rr.information == {0: b"OpenAblation", 1: product, 2: revision}
    one = await bus.client.read_device_information(read_code=4, object_id=1, device_id=unit)
    assert one.information == {1: product}


async def test_identification_edge_cases(bus: Bus) -> None:
    raw = await bus.raw()
    stream_from_1 = await raw.request(FT8_UNIT, bytes([0x2B, 0x0E, 0x01, 0x01]))
    assert stream_from_1.pdu[:7] == bytes([0x2B, 0x0E, 0x01, 0x81, 0x00, 0x00, 2])  # objects 1 and 2
    restart = await raw.request(FT8_UNIT, bytes([0x2B, 0x0E, 0x01, 0x55]))  # unknown start object: from 0
    assert restart.pdu[6] == 3 and restart.pdu[7:9] == bytes([0, len(b"OpenAblation")])
    assert_refused(await raw.request(LS4_UNIT, bytes([0x2B, 0x0E, 0x04, 0x05])), 0x2B, ILLEGAL_ADDRESS)
    assert_refused(await raw.request(LS4_UNIT, bytes([0x2B, 0x0E, 0x05, 0x00])), 0x2B, ILLEGAL_VALUE)
    assert_refused(await raw.request(LS4_UNIT, bytes([0x2B, 0x0E, 0x01])), 0x2B, ILLEGAL_VALUE)


# --- 02: any address outside the map, before anything is touched -------------------------------------

INPUT_OUTSIDE = [
    (LS4_UNIT, 52, 1),
    (LS4_UNIT, 51, 2),  # starts inside, runs off the end
    (LS4_UNIT, 0, 53),
    (LS4_UNIT, 1000, 10),
    (LS4_UNIT, 0xFFFF, 1),
    (FT8_UNIT, 22, 1),
    (FT8_UNIT, 21, 2),
    (FT8_UNIT, 0, 23),
]


@pytest.mark.parametrize(("unit", "address", "count"), INPUT_OUTSIDE)
async def test_input_reads_outside_the_map_answer_02(bus: Bus, unit: int, address: int, count: int) -> None:
    rr = await bus.client.read_input_registers(address, count=count, device_id=unit)
    assert rr.isError() and (rr.function_code, rr.exception_code) == (0x84, ILLEGAL_ADDRESS)


HOLDING_OUTSIDE = [(LS4_UNIT, 20, 1), (LS4_UNIT, 19, 2), (LS4_UNIT, 0, 21), (LS4_UNIT, 0xFFFE, 2), (FT8_UNIT, 1, 1), (FT8_UNIT, 0, 2)]


@pytest.mark.parametrize(("unit", "address", "count"), HOLDING_OUTSIDE)
async def test_holding_access_outside_the_map_answers_02_and_changes_nothing(bus: Bus, unit: int, address: int, count: int) -> None:
    before = await holding(bus, unit)
    rr = await bus.client.read_holding_registers(address, count=count, device_id=unit)
    assert (rr.function_code, rr.exception_code) == (0x83, ILLEGAL_ADDRESS)
    rr = await bus.client.write_registers(address, [100] * count, device_id=unit)
    assert (rr.function_code, rr.exception_code) == (0x90, ILLEGAL_ADDRESS)
    rr = await bus.client.write_register(address + count - 1, 100, device_id=unit)
    assert (rr.function_code, rr.exception_code) == (0x86, ILLEGAL_ADDRESS)
    assert await holding(bus, unit) == before


async def test_holding_and_input_are_separate_address_spaces(bus: Bus) -> None:
    # FT-8: input 0..21 exists, holding is only address 0
    assert not (await bus.client.read_input_registers(5, count=1, device_id=FT8_UNIT)).isError()
    assert (await bus.client.read_holding_registers(5, count=1, device_id=FT8_UNIT)).exception_code == ILLEGAL_ADDRESS


# --- 03: counts and byte counts the protocol does not allow ------------------------------------------

BAD_COUNTS = [
    ("read holding count 0", read_pdu(0x03, 0, 0)),
    ("read holding count 126", read_pdu(0x03, 0, 126)),
    ("read input count 0", read_pdu(0x04, 0, 0)),
    ("read input count 126", read_pdu(0x04, 0, 126)),
    ("read input count 0xFFFF", read_pdu(0x04, 0, 0xFFFF)),
    ("read input count 0 outside the map", read_pdu(0x04, 60, 0)),  # the count is checked before the address
    ("read body too short", bytes([0x04, 0, 0, 0])),
    ("read body too long", read_pdu(0x04, 0, 1) + b"\x00"),
    ("write single body too short", bytes([0x06, 0, 3, 0])),
    ("write single body too long", bytes([0x06, 0, 3, 0, 1, 9])),
    ("write multiple count 0", write_multiple_pdu(3, 0, 0, b"")),
    ("write multiple count 124", write_multiple_pdu(3, 124, 2, b"\x00\x01")),
    ("byte count not twice the count", write_multiple_pdu(3, 2, 2, b"\x00\x01")),
    ("payload shorter than byte count", write_multiple_pdu(3, 2, 4, b"\x00\x01")),
    ("payload longer than byte count", write_multiple_pdu(3, 1, 2, b"\x00\x01\x00\x02")),
    ("write multiple header cut short", bytes([0x10, 0, 3, 0])),
]


@pytest.mark.parametrize("pdu", [pdu for _, pdu in BAD_COUNTS], ids=[name for name, _ in BAD_COUNTS])
async def test_bad_counts_and_lengths_answer_03_and_change_nothing(bus: Bus, pdu: bytes) -> None:
    before = bus.world.devices[LS4_UNIT].holding_words()
    raw = await bus.raw()
    assert_refused(await raw.request(LS4_UNIT, pdu), pdu[0], ILLEGAL_VALUE)
    assert bus.world.devices[LS4_UNIT].holding_words() == before
    reply = await raw.request(LS4_UNIT, read_pdu(0x03, 0, LS4.HOLDING_COUNT))  # and it keeps answering
    assert reply.function_code == 0x03 and len(reply.pdu) == 2 + 2 * LS4.HOLDING_COUNT


async def test_largest_counts_are_accepted_up_to_the_map(bus: Bus) -> None:
    raw = await bus.raw()
    # 125 is a legal count: refused only because the map is shorter (02, not 03)
    assert_refused(await raw.request(LS4_UNIT, read_pdu(0x04, 0, 125)), 0x04, ILLEGAL_ADDRESS)
    reply = await raw.request(LS4_UNIT, read_pdu(0x04, 0, 52))
    assert reply.pdu[:2] == bytes([0x04, 104])


# --- the device's own refusals come through, with the right function code --------------------------


async def test_device_refusals_pass_through(bus: Bus) -> None:
    c = bus.client
    assert (await c.write_register(0, 0x0008, device_id=LS4_UNIT)).exception_code == ILLEGAL_VALUE  # reserved bit
    assert (await c.write_register(0, 9, device_id=FT8_UNIT)).exception_code == ILLEGAL_VALUE  # SAMPLE_PERIOD < 10
    rr = await c.write_registers(4, [100, 20000], device_id=LS4_UNIT)  # judged whole: nothing written
    assert (rr.function_code, rr.exception_code) == (0x90, ILLEGAL_VALUE)
    assert (await holding(bus))[4] == 0


async def test_write_single_echoes_the_request_though_command_reads_0(bus: Bus) -> None:
    rr = await bus.client.write_register(LS4.REGISTER_MAP["COMMAND"].address, LS4.Command.ENERGY_RESET, device_id=LS4_UNIT)
    assert not rr.isError() and rr.address == 1 and list(rr.registers) == [LS4.Command.ENERGY_RESET]
    assert (await holding(bus))[1] == 0


async def test_write_multiple_answers_address_and_count(bus: Bus) -> None:
    rr = await bus.client.write_registers(LS4.CYCLE_WRITE_ADDRESS, LS4.cycle_write_words(7, [1, 2, 3, 4], [True] * 4), device_id=LS4_UNIT)
    assert not rr.isError() and (rr.address, rr.count) == (3, 9)
    assert (await holding(bus))[3:12] == [7, 1, 2, 3, 4, 1, 1, 1, 1]


# --- device time is brought up to date before every request ----------------------------------------


async def test_every_request_brings_device_time_up_to_date(bus: Bus) -> None:
    bus.bench("clock", "freeze")
    first = await bus.client.read_input_registers(10, count=2, device_id=LS4_UNIT)
    bus.world.clock.step(1.25)  # the clock moves; nothing but the server calls world.sync()
    second = await bus.client.read_input_registers(10, count=2, device_id=LS4_UNIT)
    uptime = [(r.registers[0] << 16) | r.registers[1] for r in (first, second)]
    assert uptime[1] - uptime[0] == 1250


# --- unknown units and broadcast ------------------------------------------------------------------------


async def test_unknown_unit_gateway_answer_on_tcp_silence_on_rtu(bus: Bus) -> None:
    if bus.transport == "tcp":
        rr = await bus.client.read_input_registers(0, count=1, device_id=7)
        assert (rr.function_code, rr.exception_code) == (0x84, GATEWAY_NO_RESPONSE)
        rr = await bus.client.read_coils(0, count=1, device_id=247)
        assert (rr.function_code, rr.exception_code) == (0x81, GATEWAY_NO_RESPONSE)
    else:
        with pytest.raises(ModbusIOException):
            await bus.client.read_input_registers(0, count=1, device_id=7)
        assert bus.server.stats.unanswered == 1
    assert not (await bus.client.read_input_registers(0, count=1, device_id=LS4_UNIT)).isError()


async def test_broadcast_is_ignored(bus: Bus) -> None:
    await bus.client.write_register(2, 600, device_id=0, no_response_expected=True)
    await wait_until(lambda: bus.server.stats.unanswered == 1, what="the broadcast to be handled")
    assert (await holding(bus))[2] == 500


# --- link faults from the bench ---------------------------------------------------------------------------


async def test_link_delay_holds_responses_back(bus: Bus) -> None:
    bus.bench("link", "delay", 150)
    assert not (await bus.client.read_input_registers(0, count=1, device_id=LS4_UNIT)).isError()
    bus.bench("link", "delay", 5000)  # far beyond the client's timeout: it gives up, the write is done
    with pytest.raises(ModbusIOException):
        await bus.client.write_register(2, 700, device_id=LS4_UNIT)
    assert bus.world.devices[LS4_UNIT].holding_words()[2] == 700


@TCP_ONLY
async def test_delayed_responses_keep_their_own_transaction_ids(bus: Bus) -> None:
    bus.bench("link", "delay", 100)
    raw = await bus.raw()
    # two requests in one segment: the second arrives while the first is held back
    await raw.send(tcp_frame(0x1111, LS4_UNIT, read_pdu(0x04, 6, 1)) + tcp_frame(0x2222, FT8_UNIT, read_pdu(0x04, 3, 1)))
    first, second = await raw.receive(), await raw.receive()
    assert (first.transaction_id, first.unit, first.pdu) == (0x1111, LS4_UNIT, bytes([4, 2, 0, 4]))
    assert (second.transaction_id, second.unit, second.pdu) == (0x2222, FT8_UNIT, bytes([4, 2, 0, 8]))


async def test_link_drop_carries_the_request_out_but_sends_nothing(bus: Bus) -> None:
    bus.bench("link", "drop", 1)
    with pytest.raises(ModbusIOException):
        await bus.client.write_register(2, 800, device_id=LS4_UNIT)
    assert bus.world.link.dropped == 1 and bus.world.link.drop_next == 0
    assert (await holding(bus))[2] == 800  # the next request is answered, and the write was done


async def test_link_corrupt_garbles_one_response(bus: Bus) -> None:
    bus.bench("link", "corrupt", 2)
    # RTU: a CRC error; TCP: the frame names another unit. Either way the client discards it.
    with pytest.raises(ModbusIOException):
        await bus.client.read_input_registers(0, count=4, device_id=LS4_UNIT)
    with pytest.raises(ModbusIOException):
        await bus.client.read_input_registers(100, count=4, device_id=LS4_UNIT)  # an exception response, garbled
    assert bus.world.link.corrupted == 2
    assert not (await bus.client.read_input_registers(0, count=4, device_id=LS4_UNIT)).isError()


async def test_link_corrupt_flips_one_byte_of_the_frame(bus: Bus) -> None:
    raw = await bus.raw()
    clean = await raw.request(LS4_UNIT, read_pdu(0x04, 4, 1))
    bus.bench("link", "corrupt", 1)
    if isinstance(raw, RawTcp):
        await raw.send(tcp_frame(77, LS4_UNIT, read_pdu(0x04, 4, 1)))
        garbled = await raw.receive()
        assert (garbled.transaction_id, garbled.unit, garbled.pdu) == (77, LS4_UNIT ^ 0xFF, clean.pdu)
    else:
        await raw.send(rtu_frame(LS4_UNIT, read_pdu(0x04, 4, 1)))
        with pytest.raises(AssertionError, match="bad CRC"):
            await raw.receive()


async def test_a_rebooting_device_is_silent_until_it_is_back(bus: Bus) -> None:
    bus.bench("clock", "freeze")
    bus.bench("reboot", "ls4", 2)
    with pytest.raises(ModbusIOException):
        await bus.client.write_register(2, 900, device_id=LS4_UNIT)
    assert bus.world.devices[LS4_UNIT].holding_words()[2] == 500  # not carried out either
    bus.bench("clock", "step", 2000)
    assert (await holding(bus))[2] == 500


# --- device code that fails: 04 and a log line, and the server goes on ---------------------------------


async def test_device_exceptions_answer_04_and_are_logged(bus: Bus, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    ls4 = bus.world.devices[LS4_UNIT]

    def broken(*_args: object) -> list[int]:
        raise RuntimeError("model bug")

    monkeypatch.setattr(ls4, "input_words", broken)
    monkeypatch.setattr(ls4, "write_holding", broken)
    monkeypatch.setattr(ls4, "holding_words", lambda: [0] * 5)  # the wrong size for its map
    with caplog.at_level(logging.ERROR, logger="sim.server"):
        for rr, fc in [
            (await bus.client.read_input_registers(0, count=1, device_id=LS4_UNIT), 0x04),
            (await bus.client.write_register(2, 600, device_id=LS4_UNIT), 0x06),
            (await bus.client.read_holding_registers(0, count=1, device_id=LS4_UNIT), 0x03),
        ]:
            assert (rr.function_code, rr.exception_code) == (fc | 0x80, DEVICE_FAILURE)
    assert "model bug" in caplog.text and bus.server.stats.device_errors == 3
    assert not (await bus.client.read_input_registers(0, count=22, device_id=FT8_UNIT)).isError()


# --- garbage in, and the next good request is still answered ------------------------------------------


@TCP_ONLY
async def test_tcp_garbage_closes_that_connection_only(bus: Bus) -> None:
    garbage = await bus.raw()
    await garbage.send(b"GET / HTTP/1.1\r\nHost: laser\r\n\r\n")
    assert await garbage.closed_by_server()
    assert bus.server.stats.bad_frames == 1
    assert not (await bus.client.read_input_registers(0, count=52, device_id=LS4_UNIT)).isError()
    fresh = await bus.raw()
    assert (await fresh.request(FT8_UNIT, read_pdu(0x04, 1, 1))).pdu == bytes([4, 2, 0, 1])


@TCP_ONLY
async def test_tcp_frame_split_across_segments_is_reassembled(bus: Bus) -> None:
    raw = await bus.raw()
    frame = tcp_frame(42, LS4_UNIT, read_pdu(0x04, 4, 1))
    for i in range(len(frame)):
        await raw.send(frame[i : i + 1])
    reply = await raw.receive()
    assert (reply.transaction_id, reply.pdu) == (42, bytes([4, 2, 0, 1]))


RTU_GARBAGE = [
    b"\x00",
    b"\xff\xff\xff\xff",
    bytes([LS4_UNIT, 0x03, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00]),  # a read with a wrong CRC
    bytes([LS4_UNIT, 0x10, 0x00, 0x03, 0x00, 0x02, 0xFF]),  # a write announcing 255 bytes that never come
    bytes(range(256)),
]


@RTU_ONLY
@pytest.mark.parametrize("garbage", RTU_GARBAGE, ids=["one byte", "ff", "bad crc", "truncated", "256 bytes"])
async def test_rtu_garbage_is_dropped_at_the_silence_then_requests_are_answered(bus: Bus, garbage: bytes) -> None:
    raw = await bus.raw()
    await raw.send(garbage)
    await wait_until(lambda: bus.server.stats.discarded_bytes > 0 or bus.server.stats.bad_frames > 0, what="the garbage to be dropped")
    assert (await raw.request(LS4_UNIT, read_pdu(0x04, 4, 1))).pdu == bytes([4, 2, 0, 1])


@RTU_ONLY
async def test_rtu_frames_back_to_back_are_both_answered(bus: Bus) -> None:
    raw = await bus.raw()
    assert isinstance(raw, RawRtu)
    await raw.send(rtu_frame(LS4_UNIT, read_pdu(0x04, 4, 1)) + rtu_frame(FT8_UNIT, read_pdu(0x04, 3, 1)))
    assert (await raw.receive()).pdu == bytes([4, 2, 0, 1])
    assert (await raw.receive()).pdu == bytes([4, 2, 0, 8])


# --- fuzz: random frames on TCP, the server answers each one sensibly and keeps answering ------------

SUPPORTED = {0x03, 0x04, 0x06, 0x10, 0x2B}


@st.composite
def random_request(draw: st.DrawFn) -> tuple[int, bytes]:
    unit = draw(st.sampled_from([LS4_UNIT, FT8_UNIT, 9]))
    fc = draw(st.one_of(st.sampled_from(sorted(SUPPORTED)), st.integers(0, 255)))
    body = draw(st.binary(max_size=40))
    return unit, bytes([fc]) + body


@TCP_ONLY
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=random_request())
async def test_fuzz_random_pdus_get_well_formed_answers(bus: Bus, request: tuple[int, bytes]) -> None:
    unit, pdu = request
    raw = await bus.raw()
    assert isinstance(raw, RawTcp)
    try:
        reply = await raw.request(unit, pdu)
        assert reply is not None and reply.unit == unit
        fc = pdu[0]
        if unit == 9:
            assert (reply.function_code, reply.exception_code) == (fc | 0x80, GATEWAY_NO_RESPONSE)
        elif reply.function_code & 0x80:
            assert reply.function_code == fc | 0x80
            assert reply.exception_code in ({ILLEGAL_VALUE, ILLEGAL_ADDRESS, BUSY, ILLEGAL_FUNCTION} if fc in SUPPORTED else {ILLEGAL_FUNCTION})
        else:
            assert fc in SUPPORTED and reply.function_code == fc
    finally:
        await raw.close()
    assert bus.server.stats.device_errors == 0


@TCP_ONLY
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(min_size=1, max_size=600))
async def test_fuzz_raw_bytes_never_stop_the_server(bus: Bus, garbage: bytes) -> None:
    raw = await bus.raw()
    await raw.send(garbage)
    await raw.close()
    rr = await bus.client.read_input_registers(0, count=52, device_id=LS4_UNIT)
    assert not rr.isError()

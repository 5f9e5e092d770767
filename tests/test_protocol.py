"""Register maps and codecs: round trips for every type, and the maps against the datasheets' rows."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import ft8, ls4
from protocol.registers import (
    CodecError,
    Kind,
    Table,
    decode_block,
    decode_int16,
    decode_scaled,
    decode_uint32,
    encode_bits,
    encode_block,
    encode_int16,
    encode_scaled,
    encode_uint16,
    encode_uint32,
)

word = st.integers(min_value=0, max_value=0xFFFF)


@given(st.integers(min_value=-0x8000, max_value=0x7FFF))
def test_int16_round_trip(value: int) -> None:
    w = encode_int16(value)
    assert 0 <= w <= 0xFFFF
    assert decode_int16(w) == value


@given(word)
def test_int16_decode_encode_is_identity_on_words(w: int) -> None:
    assert encode_int16(decode_int16(w)) == w


@given(st.integers(min_value=0, max_value=0xFFFF_FFFF))
def test_uint32_round_trip_high_word_first(value: int) -> None:
    high, low = encode_uint32(value)
    assert high == value >> 16 and low == value & 0xFFFF
    assert decode_uint32(high, low) == value


@given(st.integers(min_value=0, max_value=0xFFFF))
def test_uint16_round_trip(value: int) -> None:
    assert encode_uint16(value) == value


@pytest.mark.parametrize("bad", [-1, 0x10000])
def test_uint16_rejects_out_of_range(bad: int) -> None:
    with pytest.raises(CodecError):
        encode_uint16(bad)


@pytest.mark.parametrize("bad", [-0x8001, 0x8000])
def test_int16_rejects_out_of_range(bad: int) -> None:
    with pytest.raises(CodecError):
        encode_int16(bad)


@pytest.mark.parametrize("bad", [-1, 0x1_0000_0000])
def test_uint32_rejects_out_of_range(bad: int) -> None:
    with pytest.raises(CodecError):
        encode_uint32(bad)


@given(st.integers(min_value=0, max_value=0x7F))
def test_bits_round_trip_within_mask(flags: int) -> None:
    allowed = int(ls4.ChannelStatus(0x7F))
    assert encode_bits(flags, allowed) == flags


@given(st.integers(min_value=0x80, max_value=0xFFFF))
def test_bits_reject_reserved(flags: int) -> None:
    with pytest.raises(CodecError):
        encode_bits(flags, 0x7F)


@given(st.integers(min_value=-32768, max_value=32767), st.sampled_from([0.1, 0.01]))
def test_scaled_signed_round_trip(raw: int, scale: float) -> None:
    value = raw * scale
    assert encode_scaled(value, scale, signed=True) == raw & 0xFFFF
    assert decode_scaled(raw & 0xFFFF, scale, signed=True) == pytest.approx(value)


@given(st.integers(min_value=0, max_value=0xFFFF), st.sampled_from([0.1, 1.0]))
def test_scaled_unsigned_round_trip(raw: int, scale: float) -> None:
    assert encode_scaled(raw * scale, scale, signed=False) == raw


def _raw_strategy(row):
    if row.kind is Kind.UINT32:
        element = st.integers(min_value=0, max_value=0xFFFF_FFFF)
    elif row.kind is Kind.INT16:
        element = st.integers(min_value=-0x8000, max_value=0x7FFF)
    elif row.kind is Kind.BITS:
        element = st.integers(min_value=0, max_value=row.allowed_bits()).map(lambda v, m=row.allowed_bits(): v & m)
    elif row.kind is Kind.RESERVED:
        element = st.just(0)
    else:
        element = st.integers(min_value=0, max_value=0xFFFF)
    return st.tuples(*[element] * row.length) if row.length > 1 else element


def _block_strategy(regmap, table):
    return st.fixed_dictionaries({row.name: _raw_strategy(row) for row in regmap.table_rows(table)})


@pytest.mark.parametrize(
    ("regmap", "table"),
    [(ls4.REGISTER_MAP, Table.INPUT), (ls4.REGISTER_MAP, Table.HOLDING), (ft8.REGISTER_MAP, Table.INPUT), (ft8.REGISTER_MAP, Table.HOLDING)],
    ids=["ls4-input", "ls4-holding", "ft8-input", "ft8-holding"],
)
@given(data=st.data())
def test_whole_block_round_trip(regmap, table, data) -> None:
    values = data.draw(_block_strategy(regmap, table))
    words = encode_block(regmap, table, values)
    assert all(0 <= w <= 0xFFFF for w in words)
    assert decode_block(regmap, table, words) == values


def test_block_sizes_match_the_datasheets() -> None:
    assert ls4.REGISTER_MAP.span(Table.INPUT) == (0, 52)
    assert ls4.REGISTER_MAP.span(Table.HOLDING) == (0, 20)
    assert ft8.REGISTER_MAP.span(Table.INPUT) == (0, 22)
    assert ft8.REGISTER_MAP.span(Table.HOLDING) == (0, 1)


@pytest.mark.parametrize(
    ("name", "address", "words"),
    [
        ("DEVICE_STATE", 0, 1), ("INTERLOCKS", 1, 1), ("FAULT_CODE", 2, 1), ("FAULT_CHANNEL", 3, 1),
        ("MAP_VERSION", 4, 1), ("FIRMWARE_VERSION", 5, 1), ("CHANNEL_COUNT", 6, 1), ("MAX_CHANNEL_POWER", 7, 1),
        ("HEARTBEAT_ECHO", 8, 1), ("WATCHDOG_REMAINING", 9, 1), ("UPTIME", 10, 2), ("CABINET_TEMP", 12, 1),
        ("RESERVED_13", 13, 3), ("CH_STATUS", 16, 4), ("OUTPUT_POWER", 20, 4), ("ACTIVE_SETPOINT", 24, 4),
        ("BACK_REFLECTION", 28, 4), ("DIODE_TEMP", 32, 4), ("ENERGY", 36, 8), ("EMISSION_TIME", 44, 8),
    ],
)
def test_ls4_input_rows(name: str, address: int, words: int) -> None:
    row = ls4.REGISTER_MAP[name]
    assert (row.table, row.address, row.words) == (Table.INPUT, address, words)


@pytest.mark.parametrize(
    ("name", "address", "length", "minimum", "maximum", "default"),
    [
        ("CONTROL", 0, 1, None, None, 0),
        ("COMMAND", 1, 1, 0, 2, 0),
        ("WATCHDOG_TIMEOUT", 2, 1, 50, 2000, 500),
        ("HEARTBEAT", 3, 1, 0, 0xFFFF, 0),
        ("POWER_SETPOINT", 4, 4, 0, 10000, 0),
        ("CH_ENABLE", 8, 4, 0, 1, 0),
        ("POWER_LIMIT", 12, 4, 0, 10000, 10000),
        ("RAMP_RATE", 16, 4, 100, 65535, 5000),
    ],
)
def test_ls4_holding_rows(name, address, length, minimum, maximum, default) -> None:
    row = ls4.REGISTER_MAP[name]
    assert (row.table, row.address, row.length, row.minimum, row.maximum, row.default) == (
        Table.HOLDING, address, length, minimum, maximum, default,
    )


def test_energy_of_channel_c_sits_at_36_plus_2c() -> None:
    row = ls4.REGISTER_MAP["ENERGY"]
    assert [row.element_address(c) for c in range(4)] == [36, 38, 40, 42]
    assert [ls4.REGISTER_MAP["EMISSION_TIME"].element_address(c) for c in range(4)] == [44, 46, 48, 50]


def test_ft8_rows() -> None:
    m = ft8.REGISTER_MAP
    assert [(m[n].address, m[n].words) for n in ("STATUS", "MAP_VERSION", "FIRMWARE_VERSION", "CHANNEL_COUNT", "SAMPLE_COUNTER", "SAMPLE_PERIOD_ACTUAL", "TEMPERATURE", "PROBE_STATUS")] == [
        (0, 1), (1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 8), (14, 8)
    ]
    assert (m["SAMPLE_PERIOD"].minimum, m["SAMPLE_PERIOD"].maximum, m["SAMPLE_PERIOD"].default) == (10, 1000, 50)


def test_ls4_snapshot_decodes_scaled_and_wide_values() -> None:
    words = encode_block(
        ls4.REGISTER_MAP,
        Table.INPUT,
        {
            "DEVICE_STATE": 3, "FAULT_CHANNEL": 2, "UPTIME": 0x0001_0002, "CABINET_TEMP": -15,
            "DIODE_TEMP": (2512, -100, 0, 4501), "BACK_REFLECTION": (31, 0, 250, 1000),
            "ENERGY": (0xFFFF_FFFF, 65536, 1, 0), "CH_STATUS": (0x7F, 0, 1, 2),
        },
    )
    snap = ls4.LS4Snapshot.from_words(words)
    assert snap.device_state is ls4.DeviceState.EMITTING
    assert snap.fault_channel == 2
    assert snap.uptime_ms == 65538
    assert snap.cabinet_temp_c == pytest.approx(-1.5)
    assert snap.diode_temp_c == (25.12, -1.0, 0.0, 45.01)
    assert snap.back_reflection_pct == (3.1, 0.0, 25.0, 100.0)
    assert snap.energy_mj == (0xFFFF_FFFF, 65536, 1, 0)
    assert ls4.ChannelStatus.AT_LIMIT in snap.ch_status[0]


def test_ls4_snapshot_no_fault_channel_is_none() -> None:
    snap = ls4.LS4Snapshot.from_words(encode_block(ls4.REGISTER_MAP, Table.INPUT, {}))
    assert snap.fault_channel is None


def test_ft8_snapshot_marks_invalid_readings_none() -> None:
    words = encode_block(ft8.REGISTER_MAP, Table.INPUT, {"TEMPERATURE": (3700, -2000, 15000, -32768, 0, 1, -1, 9999)})
    snap = ft8.FT8Snapshot.from_words(words)
    assert snap.temperature_c == (37.0, -20.0, 150.0, None, 0.0, 0.01, -0.01, 99.99)


def test_decode_rejects_a_short_block() -> None:
    with pytest.raises(CodecError):
        ls4.LS4Snapshot.from_words([0] * 51)


def test_cycle_write_words_layout() -> None:
    words = ls4.cycle_write_words(0x1_0005, [100, 200, 300, 400], [True, False, True, False])
    assert words == [5, 100, 200, 300, 400, 1, 0, 1, 0]
    assert len(words) == ls4.CYCLE_WRITE_COUNT

"""Write validation judged whole: a refused write of any shape changes nothing (device-model level).

The same property is checked over real Modbus in the conformance suite, with fewer examples.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import ls4 as P
from protocol.validation import ExceptionCode
from sim.clock import SimClock
from sim.world import SimWorld

HOLDING_COUNT = P.HOLDING_COUNT


def _good(address: int) -> st.SearchStrategy[int]:
    """A value the datasheet accepts at `address` in any state (power limits stay at 10 W)."""
    if address == 0:
        return st.just(0)  # CONTROL changes state; keep it still so the property is about values
    if address == 1:
        return st.just(0)
    if address == 2:
        return st.integers(50, 2000)
    if address == 3:
        return st.integers(0, 0xFFFF)
    if 4 <= address <= 7:
        return st.integers(0, 10_000)
    if 8 <= address <= 11:
        return st.integers(0, 1)
    if 12 <= address <= 15:
        return st.integers(0, 10_000)
    return st.integers(100, 0xFFFF)


def _bad(address: int) -> st.SearchStrategy[int]:
    """A value the datasheet refuses at `address` (03) whatever the state."""
    if address == 0:
        return st.integers(0, 0xFFFF).filter(lambda v: v & ~0x7)
    if address == 1:
        return st.integers(3, 0xFFFF)
    if address == 2:
        return st.one_of(st.integers(0, 49), st.integers(2001, 0xFFFF))
    if 4 <= address <= 7:
        return st.integers(10_001, 0xFFFF)  # above POWER_LIMIT (10000 by default)
    if 8 <= address <= 11:
        return st.integers(2, 0xFFFF)
    if 12 <= address <= 15:
        return st.integers(10_001, 0xFFFF)
    if 16 <= address <= 19:
        return st.integers(0, 99)
    raise AssertionError("HEARTBEAT takes any value")


@st.composite
def mixed_write(draw) -> tuple[int, list[int]]:
    """A function-16 write with at least one refused value among good ones."""
    start = draw(st.integers(0, HOLDING_COUNT - 1))
    count = draw(st.integers(1, HOLDING_COUNT - start))
    addresses = list(range(start, start + count))
    candidates = [a for a in addresses if a != 3]
    if not candidates:
        start, addresses, candidates = 2, [2, 3], [2]
    bad_at = set(draw(st.lists(st.sampled_from(candidates), min_size=1, unique=True)))
    values = [draw(_bad(a)) if a in bad_at else draw(_good(a)) for a in addresses]
    return addresses[0], values


def _fresh_world() -> SimWorld:
    world = SimWorld(clock=SimClock())
    world.clock.freeze()
    return world


@settings(max_examples=300, deadline=None)
@given(mixed_write())
def test_a_refused_value_anywhere_in_a_write_changes_nothing(write: tuple[int, list[int]]) -> None:
    world = _fresh_world()
    device = world.ls4
    before_holding, before_input = device.holding_words(), device.input_words()
    address, values = write
    assert device.write_holding(address, values) == ExceptionCode.ILLEGAL_DATA_VALUE
    assert device.holding_words() == before_holding
    assert device.input_words() == before_input


@settings(max_examples=200, deadline=None)
@given(st.integers(0, HOLDING_COUNT - 1).flatmap(lambda a: st.tuples(st.just(a), st.lists(st.just(0), min_size=1, max_size=HOLDING_COUNT - a))))
def test_good_writes_are_accepted(write: tuple[int, list[int]]) -> None:
    # all zeros except ranges with a floor: raise those to their minimum
    address, values = write
    fixed = [50 if address + i == 2 else 100 if 16 <= address + i <= 19 else v for i, v in enumerate(values)]
    device = _fresh_world().ls4
    assert device.write_holding(address, fixed) is None
    words = device.holding_words()
    for i, v in enumerate(fixed):
        assert words[address + i] == v


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 9), st.integers(0, 2000))
def test_setpoint_range_follows_the_power_limit(limit_kw: int, setpoint: int) -> None:
    device = _fresh_world().ls4
    limit = limit_kw * 100
    assert device.write_holding(12, [limit]) is None
    result = device.write_holding(4, [setpoint])
    if setpoint <= limit:
        assert result is None
    else:
        assert result == ExceptionCode.ILLEGAL_DATA_VALUE
        assert device.holding_words()[4] == 0

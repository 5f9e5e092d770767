"""FT-8 datasheet conformance through a real pymodbus client over TCP and over RTU (pty)."""

from __future__ import annotations

import math

import pytest

from protocol import ft8
from protocol.ft8 import ProbeStatus, Status
from rig import FT8_UNIT, Rig

ILLEGAL_ADDRESS, ILLEGAL_VALUE = 2, 3
VALID = ProbeStatus.CONNECTED | ProbeStatus.SIGNAL_OK


async def test_input_block_in_one_request_with_datasheet_constants(rig: Rig) -> None:
    words = await rig.read_input(0, 22, unit=FT8_UNIT)
    assert isinstance(words, list) and len(words) == 22
    s = ft8.FT8Snapshot.from_words(words)
    assert (s.map_version, s.firmware_version, s.channel_count) == (1, 0x0103, 8)
    assert s.status == Status.MEASURING
    assert s.sample_period_actual_ms == 50
    assert all(p == VALID for p in s.probe_status)
    assert all(t is not None and abs(t - 37.0) < 0.3 for t in s.temperature_c)


@pytest.mark.parametrize(("address", "count"), [(22, 1), (21, 2), (0, 23)])
async def test_input_outside_the_map_is_02(rig: Rig, address: int, count: int) -> None:
    assert await rig.read_input(address, count, unit=FT8_UNIT) == ILLEGAL_ADDRESS


async def test_holding_outside_the_map_is_02(rig: Rig) -> None:
    assert await rig.read_holding(1, 1, unit=FT8_UNIT) == ILLEGAL_ADDRESS
    assert await rig.write1(1, 50, unit=FT8_UNIT) == ILLEGAL_ADDRESS
    assert await rig.write(0, [50, 50], unit=FT8_UNIT) == ILLEGAL_ADDRESS
    assert await rig.read_holding(0, 1, unit=FT8_UNIT) == [50]


@pytest.mark.parametrize(("value", "accepted"), [(9, False), (10, True), (1000, True), (1001, False), (0, False), (0xFFFF, False)])
async def test_sample_period_range(rig: Rig, value: int, accepted: bool) -> None:
    result = await rig.write1(0, value, unit=FT8_UNIT)
    assert (result is None) is accepted
    if not accepted:
        assert result == ILLEGAL_VALUE
    expected = value if accepted else 50
    assert await rig.read_holding(0, 1, unit=FT8_UNIT) == [expected]
    assert (await rig.ft8()).sample_period_actual_ms == expected


@pytest.mark.parametrize("period_ms", [10, 50, 200])
async def test_sample_counter_counts_one_per_sample_period(rig: Rig, period_ms: int) -> None:
    assert await rig.write1(0, period_ms, unit=FT8_UNIT) is None
    c0 = (await rig.ft8()).sample_counter
    for _ in range(10):
        rig.step_ms(period_ms)
    assert (await rig.ft8()).sample_counter == (c0 + 10) & 0xFFFF


async def test_sample_counter_wraps_to_zero(rig: Rig) -> None:
    rig.world.ft8.sample_counter = 0xFFFE
    rig.step_ms(50)
    assert (await rig.ft8()).sample_counter == 0xFFFF
    rig.step_ms(50)
    assert (await rig.ft8()).sample_counter == 0


async def test_a_hung_thermometer_answers_but_its_counter_stops(rig: Rig) -> None:
    rig.bench("ft8", "hang")
    c0 = (await rig.ft8()).sample_counter
    rig.step_ms(1000)
    s = await rig.ft8()
    assert s.sample_counter == c0
    rig.bench("ft8", "ok")
    rig.step_ms(100)
    assert (await rig.ft8()).sample_counter == (c0 + 2) & 0xFFFF


async def test_a_faulted_thermometer_reports_fault_and_no_readings(rig: Rig) -> None:
    rig.bench("ft8", "fault")
    rig.step_ms(100)
    s = await rig.ft8()
    assert Status.FAULT in s.status and Status.MEASURING not in s.status
    assert s.temperature_c == (None,) * 8


@pytest.mark.parametrize(
    ("action", "missing"),
    [(("disconnect",), ProbeStatus.CONNECTED), (("signal", "lost"), ProbeStatus.SIGNAL_OK)],
    ids=["disconnected", "signal-lost"],
)
async def test_an_invalid_probe_reads_0x8000(rig: Rig, action, missing) -> None:
    rig.bench("probe", 5, *action)
    rig.step_ms(50)
    words = await rig.read_input(0, 22, unit=FT8_UNIT)
    assert words[6 + 5] == 0x8000
    s = ft8.FT8Snapshot.from_words(words)
    assert missing not in s.probe_status[5] and s.temperature_c[5] is None
    assert s.temperature_c[4] is not None


@pytest.mark.parametrize("tissue_c", [160.0, -30.0])
async def test_out_of_range_reads_0x8000_with_its_status_bit(rig: Rig, tissue_c: float) -> None:
    rig.bench("probe", 2, "force", tissue_c)
    rig.step_ms(2000)
    s = await rig.ft8()
    assert ProbeStatus.OUT_OF_RANGE in s.probe_status[2] and s.temperature_c[2] is None


async def test_probe_follows_tissue_with_a_0_2_s_first_order_lag(rig: Rig) -> None:
    rig.bench("probe", 0, "noise", 0)
    rig.bench("probe", 0, "force", 87.0)
    rig.step_ms(200)  # one time constant: 63 % of the step
    after_tau = (await rig.ft8()).temperature_c[0]
    # the reading is the last sample, taken within one 50 ms sample period before now
    def lagged(t_s: float) -> float:
        return 37.0 + 50.0 * (1 - math.exp(-t_s / 0.2))
    assert lagged(0.15) - 0.1 <= after_tau <= lagged(0.2) + 0.1
    rig.step_ms(2000)
    assert (await rig.ft8()).temperature_c[0] == pytest.approx(87.0, abs=0.02)


async def test_resolution_is_0_01_c(rig: Rig) -> None:
    rig.bench("probe", 1, "noise", 0)
    rig.bench("probe", 1, "force", 42.123)
    rig.step_ms(5000)
    words = await rig.read_input(6 + 1, 1, unit=FT8_UNIT)
    assert words == [4212]


async def test_a_stuck_probe_keeps_its_value_while_samples_go_on(rig: Rig) -> None:
    rig.step_ms(100)
    stuck = (await rig.ft8()).temperature_c[3]
    rig.bench("probe", 3, "stuck")
    rig.bench("probe", 3, "force", 70)
    c0 = (await rig.ft8()).sample_counter
    rig.step_ms(3000)
    s = await rig.ft8()
    assert s.sample_counter != c0 and s.temperature_c[3] == stuck


async def test_probe_heats_when_the_laser_emits(rig: Rig) -> None:
    await rig.ok(16, [65535])
    await rig.emit([3000, 0, 0, 0])
    await rig.run_ms(30_000, beat_every_ms=1000)
    s = await rig.ft8()
    assert s.temperature_c[0] > 60.0  # first-order model: probe 0 sits near fibre 0
    assert s.temperature_c[1] == pytest.approx(37.0, abs=0.3)


async def test_reboot_restores_defaults_and_restarts_the_counter(rig: Rig) -> None:
    assert await rig.write1(0, 200, unit=FT8_UNIT) is None
    rig.step_ms(1000)
    rig.bench("reboot", "ft8", 0)
    s = await rig.ft8()
    assert s.sample_counter == 0 and s.sample_period_actual_ms == 50

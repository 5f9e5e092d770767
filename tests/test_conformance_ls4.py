"""LS-4 datasheet conformance, row by row, through a real pymodbus client over TCP and over RTU (pty).

Device time is frozen; each test moves it explicitly, so timing rules are checked exactly.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import ls4
from protocol.ls4 import ChannelStatus, Control, DeviceState, FaultCode, Interlocks
from rig import Rig

ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE, BUSY = 1, 2, 3, 6
HC = int(Control.HOST_CONTROL)
HC_EN = int(Control.HOST_CONTROL | Control.EMISSION_ENABLE)


# --- identity, constants and defaults --------------------------------------------------------


async def test_input_block_reads_in_one_request_with_datasheet_constants(rig: Rig) -> None:
    words = await rig.read_input(0, 52)
    assert isinstance(words, list) and len(words) == 52
    s = ls4.LS4Snapshot.from_words(words)
    assert (s.map_version, s.firmware_version, s.channel_count, s.max_channel_power_mw) == (1, 0x0201, 4, 10000)
    assert s.device_state is DeviceState.STANDBY
    assert s.fault_code is FaultCode.NONE and s.fault_channel is None and words[3] == 0xFFFF
    assert words[13:16] == [0, 0, 0]
    assert s.watchdog_remaining_ms == 0  # host does not hold control
    assert Interlocks.KEY_ON in s.interlocks


async def test_holding_defaults(rig: Rig) -> None:
    h = await rig.ls4_holding()
    assert h.control == 0 and h.command == 0 and h.watchdog_timeout_ms == 500 and h.heartbeat == 0
    assert h.power_setpoint_mw == (0,) * 4 and h.ch_enable == (0,) * 4
    assert h.power_limit_mw == (10000,) * 4 and h.ramp_rate_mw_s == (5000,) * 4


@pytest.mark.parametrize(("address", "count"), [(52, 1), (51, 2), (0, 53), (60, 4)])
async def test_input_read_outside_the_map_is_02(rig: Rig, address: int, count: int) -> None:
    assert await rig.read_input(address, count) == ILLEGAL_ADDRESS


@pytest.mark.parametrize(("address", "count"), [(20, 1), (19, 2), (0, 21)])
async def test_holding_access_outside_the_map_is_02_and_changes_nothing(rig: Rig, address: int, count: int) -> None:
    before = await rig.read_holding(0, 20)
    assert await rig.read_holding(address, count) == ILLEGAL_ADDRESS
    assert await rig.write(address, [0] * count) == ILLEGAL_ADDRESS
    assert await rig.read_holding(0, 20) == before


async def test_uptime_counts_device_time(rig: Rig) -> None:
    t0 = (await rig.ls4()).uptime_ms
    rig.step_ms(1234)
    assert (await rig.ls4()).uptime_ms - t0 == 1234


# --- ranges: every holding register at both edges --------------------------------------------

RANGES = [
    ("WATCHDOG_TIMEOUT", 2, 50, 2000),
    ("POWER_SETPOINT[0]", 4, 0, 10000),
    ("POWER_SETPOINT[3]", 7, 0, 10000),
    ("CH_ENABLE[0]", 8, 0, 1),
    ("CH_ENABLE[3]", 11, 0, 1),
    ("POWER_LIMIT[0]", 12, 0, 10000),
    ("POWER_LIMIT[3]", 15, 0, 10000),
    ("RAMP_RATE[0]", 16, 100, 65535),
    ("RAMP_RATE[3]", 19, 100, 65535),
]


@pytest.mark.parametrize(("name", "address", "lo", "hi"), RANGES, ids=[r[0] for r in RANGES])
async def test_range_edges(rig: Rig, name: str, address: int, lo: int, hi: int) -> None:
    for good in (lo, hi):
        assert await rig.write1(address, good) is None, f"{name}={good} refused"
        assert (await rig.read_holding(address, 1)) == [good]
    before = await rig.read_holding(0, 20)
    for bad in (lo - 1, hi + 1):
        if 0 <= bad <= 0xFFFF:
            assert await rig.write1(address, bad) == ILLEGAL_VALUE, f"{name}={bad} accepted"
    assert await rig.read_holding(0, 20) == before


@pytest.mark.parametrize("bit", range(3, 16))
async def test_control_reserved_bits_are_03(rig: Rig, bit: int) -> None:
    assert await rig.write1(0, HC | (1 << bit)) == ILLEGAL_VALUE
    assert (await rig.ls4()).device_state is DeviceState.STANDBY


async def test_unknown_command_is_03_and_command_reads_0(rig: Rig) -> None:
    assert await rig.write1(1, 3) == ILLEGAL_VALUE
    assert await rig.write1(1, 1) is None  # FAULT_RESET with no fault: harmless
    assert await rig.read_holding(1, 1) == [0]


async def test_heartbeat_takes_any_value_and_is_echoed(rig: Rig) -> None:
    for value in (0xFFFF, 0, 12345):
        assert await rig.write1(3, value) is None
        assert (await rig.ls4()).heartbeat_echo == value


# --- whole-request validation over the wire ---------------------------------------------------


@st.composite
def mixed_write(draw) -> tuple[int, list[int]]:
    values = [0, 0, 500, draw(st.integers(0, 0xFFFF)), *[draw(st.integers(0, 10000)) for _ in range(4)],
              *[draw(st.integers(0, 1)) for _ in range(4)], *[10000] * 4, *[draw(st.integers(100, 0xFFFF)) for _ in range(4)]]
    bad = {0: st.integers(8, 0xFFFF), 1: st.integers(3, 0xFFFF), 2: st.integers(2001, 0xFFFF),
           4: st.integers(10001, 0xFFFF), 8: st.integers(2, 0xFFFF), 12: st.integers(10001, 0xFFFF), 16: st.integers(0, 99)}
    where = draw(st.sampled_from(sorted(bad)))
    values[where] = draw(bad[where])
    start = draw(st.integers(0, where))
    end = draw(st.integers(where + 1, 20))
    return start, values[start:end]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(write=mixed_write())
async def test_a_mixed_function_16_write_changes_nothing(rig: Rig, write) -> None:
    before_h = await rig.read_holding(0, 20)
    before_state = (await rig.ls4()).device_state
    start, values = write
    assert await rig.write(start, values) == ILLEGAL_VALUE
    assert await rig.read_holding(0, 20) == before_h
    assert (await rig.ls4()).device_state is before_state


async def test_cycle_write_of_3_to_11_sets_everything_at_once(rig: Rig) -> None:
    await rig.cycle([100, 200, 300, 400], [True, False, True, False])
    h = await rig.ls4_holding()
    assert h.power_setpoint_mw == (100, 200, 300, 400) and h.ch_enable == (1, 0, 1, 0)
    assert (await rig.ls4()).heartbeat_echo == rig.heartbeat


async def test_setpoint_above_power_limit_is_03(rig: Rig) -> None:
    assert await rig.write1(12, 2000) is None
    assert await rig.write1(4, 2001) == ILLEGAL_VALUE
    assert await rig.write1(4, 2000) is None


# --- states ---------------------------------------------------------------------------------


async def test_the_nominal_path_through_every_state(rig: Rig) -> None:
    await rig.take_control()
    assert (await rig.ls4()).device_state is DeviceState.READY
    await rig.cycle([2000, 0, 0, 0], [True, False, False, False])
    await rig.arm()
    s = await rig.ls4()
    assert s.device_state is DeviceState.ARMED and Interlocks.EMISSION_INDICATOR_ON in s.interlocks
    assert s.output_power_mw == (0, 0, 0, 0)
    rig.bench("footswitch", "press")
    await rig.run_ms(1000)
    s = await rig.ls4()
    assert s.device_state is DeviceState.EMITTING
    assert ChannelStatus.EMITTING in s.ch_status[0] and ChannelStatus.ENABLED in s.ch_status[0]
    assert s.output_power_mw[0] == pytest.approx(2000, rel=0.03)
    rig.bench("footswitch", "release")
    rig.step_ms(10)
    s = await rig.ls4()
    assert s.device_state is DeviceState.ARMED and s.output_power_mw == (0, 0, 0, 0) and s.fault_code is FaultCode.NONE
    await rig.ok(0, [HC])
    assert (await rig.ls4()).device_state is DeviceState.READY
    await rig.ok(0, [0])
    assert (await rig.ls4()).device_state is DeviceState.STANDBY


async def test_host_cannot_start_emission_without_the_footswitch(rig: Rig) -> None:
    await rig.take_control()
    await rig.cycle([5000] * 4, [True] * 4)
    await rig.arm()
    await rig.run_ms(2000)
    s = await rig.ls4()
    assert s.device_state is DeviceState.ARMED and s.output_power_mw == (0,) * 4 and s.energy_mj == (0,) * 4


@pytest.mark.parametrize(
    ("action", "expected_state"),
    [(("key", "off"), DeviceState.READY), (("interlock", "open"), DeviceState.READY), (("estop", "press"), DeviceState.FAULT)],
    ids=["key-off", "interlock-open", "estop"],
)
async def test_emission_enable_is_cleared_when_a_condition_is_missing(rig: Rig, action, expected_state) -> None:
    await rig.take_control()
    rig.bench(*action)
    assert await rig.write1(0, HC_EN) is None  # the write succeeds...
    s = await rig.ls4()
    assert s.device_state is expected_state
    assert (await rig.ls4_holding()).control == Control.HOST_CONTROL  # ...but the bit is cleared at once


async def test_emission_enable_without_host_control_stays_standby(rig: Rig) -> None:
    assert await rig.write1(0, int(Control.EMISSION_ENABLE)) is None
    assert (await rig.ls4()).device_state is DeviceState.STANDBY
    assert (await rig.ls4_holding()).control == 0


async def test_footswitch_held_at_arming_is_ignored_until_released_and_pressed_again(rig: Rig) -> None:
    await rig.take_control()
    await rig.cycle([1000, 0, 0, 0], [True, False, False, False])
    rig.bench("footswitch", "press")
    await rig.arm()
    await rig.run_ms(500)
    s = await rig.ls4()
    assert s.device_state is DeviceState.ARMED and s.output_power_mw[0] == 0
    rig.bench("footswitch", "release")
    rig.bench("footswitch", "press")
    await rig.run_ms(500)
    assert (await rig.ls4()).device_state is DeviceState.EMITTING


@pytest.mark.parametrize(
    ("enable", "fibre", "setpoint", "emits"),
    [(True, "connect", 1000, True), (False, "connect", 1000, False), (True, "disconnect", 1000, False), (True, "connect", 0, False)],
    ids=["all-set", "disabled", "no-fibre", "zero-setpoint"],
)
async def test_a_channel_emits_only_enabled_with_fibre_and_setpoint(rig: Rig, enable, fibre, setpoint, emits) -> None:
    rig.bench("fibre", 1, fibre)
    await rig.take_control(watchdog_ms=2000)
    await rig.cycle([0, setpoint, 0, 0], [False, enable, False, False])
    await rig.arm()
    rig.bench("footswitch", "press")
    await rig.run_ms(500)
    s = await rig.ls4()
    assert (s.output_power_mw[1] > 0) is emits
    assert (ChannelStatus.EMITTING in s.ch_status[1]) is emits
    assert (ChannelStatus.FIBRE_CONNECTED in s.ch_status[1]) is (fibre == "connect")


async def test_power_rises_at_ramp_rate_and_falls_within_10_ms(rig: Rig) -> None:
    await rig.ok(16, [1000])  # 1 W/s on channel 0
    await rig.emit([3000, 0, 0, 0])
    await rig.run_ms(1000)
    assert (await rig.ls4()).active_setpoint_mw[0] == pytest.approx(1000, abs=10)
    await rig.run_ms(1000)
    assert (await rig.ls4()).active_setpoint_mw[0] == pytest.approx(2000, abs=10)
    await rig.run_ms(1500)
    assert (await rig.ls4()).active_setpoint_mw[0] == 3000
    await rig.cycle([500, 0, 0, 0], [True, False, False, False])
    rig.step_ms(10)
    s = await rig.ls4()
    assert s.active_setpoint_mw[0] == 500 and s.output_power_mw[0] == pytest.approx(500, abs=25)


async def test_footswitch_release_stops_emission_within_10_ms_and_is_not_a_fault(rig: Rig) -> None:
    await rig.emit([4000, 4000, 0, 0])
    await rig.run_ms(2000)
    rig.bench("footswitch", "release")
    rig.step_ms(10)
    s = await rig.ls4()
    assert s.device_state is DeviceState.ARMED and s.output_power_mw == (0,) * 4 and s.fault_code is FaultCode.NONE


async def test_energy_counter_integrates_output_power(rig: Rig) -> None:
    await rig.ok(16, [65535])  # fast ramp so the integral is simple
    await rig.emit([3000, 0, 0, 0])
    await rig.run_ms(10_000)
    s = await rig.ls4()
    assert s.energy_mj[0] == pytest.approx(30_000, rel=0.01)
    assert s.emission_time_ms[0] == pytest.approx(10_000, abs=20)
    assert s.energy_mj[1:] == (0, 0, 0)
    truth = rig.bench("state")["ls4"]
    assert truth["true_tip_energy_j"][0] == pytest.approx(30.0, rel=0.01)


async def test_monitor_calibration_error_shows_in_output_power_and_energy(rig: Rig) -> None:
    rig.bench("monitor", 0, "error", 10)
    await rig.ok(16, [65535])
    await rig.emit([2000, 0, 0, 0])
    await rig.run_ms(5000)
    s = await rig.ls4()
    assert s.output_power_mw[0] == pytest.approx(2200, rel=0.03)
    assert s.energy_mj[0] == pytest.approx(11_000, rel=0.02)
    assert rig.bench("state")["ls4"]["true_tip_energy_j"][0] == pytest.approx(10.0, rel=0.01)


async def test_back_reflection_and_diode_temperature_are_plausible(rig: Rig) -> None:
    await rig.emit([5000, 0, 0, 0])
    await rig.run_ms(30_000, beat_every_ms=1000)
    s = await rig.ls4()
    assert 1.0 <= s.back_reflection_pct[0] <= 6.0
    assert 25.0 < s.diode_temp_c[0] < 45.0 and s.diode_temp_c[1] == pytest.approx(25.0, abs=0.1)


async def test_energy_reset_clears_counters_and_is_busy_while_armed(rig: Rig) -> None:
    await rig.ok(16, [65535])
    await rig.emit([1000, 0, 0, 0])
    await rig.run_ms(2000)
    assert await rig.write1(1, int(ls4.Command.ENERGY_RESET)) == BUSY
    assert (await rig.ls4()).energy_mj[0] > 0
    rig.bench("footswitch", "release")
    assert await rig.write1(1, int(ls4.Command.ENERGY_RESET)) == BUSY  # still ARMED
    await rig.ok(0, [HC])
    assert await rig.write1(1, int(ls4.Command.ENERGY_RESET)) is None
    s = await rig.ls4()
    assert s.energy_mj == (0,) * 4 and s.emission_time_ms == (0,) * 4


async def test_energy_counters_survive_a_reboot_as_of_their_last_save(rig: Rig) -> None:
    await rig.ok(16, [65535])
    await rig.emit([2000, 0, 0, 0])
    await rig.run_ms(5000)
    before = (await rig.ls4()).energy_mj[0]
    rig.bench("reboot", "ls4", 0)
    s = await rig.ls4()
    assert s.device_state is DeviceState.STANDBY and s.uptime_ms == 0
    assert before - 2000 <= s.energy_mj[0] <= before  # at most one second (2 W x 1 s) lost
    assert (await rig.ls4_holding()).control == 0


# --- busy rules and clamping -------------------------------------------------------------------


async def test_power_limit_of_an_emitting_channel_is_busy_others_are_not(rig: Rig) -> None:
    await rig.emit([1000, 0, 0, 0])
    await rig.run_ms(500)
    assert await rig.write1(12, 500) == BUSY
    assert (await rig.ls4_holding()).power_limit_mw[0] == 10000
    assert await rig.write1(13, 500) is None


async def test_watchdog_timeout_is_busy_while_armed(rig: Rig) -> None:
    await rig.take_control()
    await rig.arm()
    assert await rig.write1(2, 1000) == BUSY
    assert (await rig.ls4_holding()).watchdog_timeout_ms == 500


async def test_lowering_power_limit_clamps_the_setpoint_and_sets_at_limit(rig: Rig) -> None:
    await rig.ok(4, [3000])
    assert await rig.write1(12, 1200) is None
    assert (await rig.ls4_holding()).power_setpoint_mw[0] == 1200
    assert ChannelStatus.AT_LIMIT in (await rig.ls4()).ch_status[0]
    await rig.ok(4, [1000])
    assert ChannelStatus.AT_LIMIT not in (await rig.ls4()).ch_status[0]


# --- the watchdog --------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout_ms", [50, 200, 500, 2000])
async def test_watchdog_expires_after_exactly_its_timeout(rig: Rig, timeout_ms: int) -> None:
    await rig.take_control(watchdog_ms=timeout_ms)
    await rig.beat()
    rig.step_ms(timeout_ms - 10)
    s = await rig.ls4()
    assert s.device_state is DeviceState.READY and s.watchdog_remaining_ms == 10
    rig.step_ms(10)
    s = await rig.ls4()
    assert s.device_state is DeviceState.FAULT and s.fault_code is FaultCode.WATCHDOG_EXPIRED and s.fault_channel is None
    assert s.watchdog_remaining_ms == 0


async def test_rewriting_the_same_heartbeat_does_not_feed_the_watchdog(rig: Rig) -> None:
    await rig.take_control(watchdog_ms=200)
    await rig.beat()
    rig.step_ms(150)
    await rig.ok(3, [rig.heartbeat])  # same value
    rig.step_ms(50)
    assert (await rig.ls4()).fault_code is FaultCode.WATCHDOG_EXPIRED


async def test_watchdog_is_inactive_without_host_control(rig: Rig) -> None:
    rig.step_ms(10_000)
    s = await rig.ls4()
    assert s.device_state is DeviceState.STANDBY and s.watchdog_remaining_ms == 0


async def test_watchdog_stops_emission_and_reset_needs_a_fresh_heartbeat(rig: Rig) -> None:
    await rig.emit([3000, 0, 0, 0], watchdog_ms=500)
    await rig.run_ms(1000)
    rig.step_ms(500)
    s = await rig.ls4()
    assert s.fault_code is FaultCode.WATCHDOG_EXPIRED and s.output_power_mw == (0,) * 4
    assert Control.EMISSION_ENABLE not in (await rig.ls4_holding()).control
    assert await rig.write1(1, int(ls4.Command.FAULT_RESET)) == BUSY  # heartbeat still stale
    await rig.beat()
    assert await rig.write1(1, int(ls4.Command.FAULT_RESET)) is None
    assert (await rig.ls4()).device_state is DeviceState.READY


# --- every fault, and its reset rule -----------------------------------------------------------


async def test_estop_faults_in_standby_and_reset_waits_for_release(rig: Rig) -> None:
    rig.bench("estop", "press")
    s = await rig.ls4()
    assert s.device_state is DeviceState.FAULT and s.fault_code is FaultCode.ESTOP
    assert Interlocks.ESTOP_PRESSED in s.interlocks
    assert await rig.write1(1, 1) == BUSY
    rig.bench("estop", "release")
    assert await rig.write1(1, 1) is None
    assert (await rig.ls4()).device_state is DeviceState.STANDBY  # HOST_CONTROL is 0


@pytest.mark.parametrize(
    ("fault", "action", "undo", "code"),
    [
        ("interlock", ("interlock", "open"), ("interlock", "close"), FaultCode.INTERLOCK_OPEN),
        ("key", ("key", "off"), ("key", "on"), FaultCode.KEY_OFF),
        ("estop", ("estop", "press"), ("estop", "release"), FaultCode.ESTOP),
        ("selftest", ("ls4", "selftest", "fail"), ("ls4", "selftest", "ok"), FaultCode.INTERNAL),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
async def test_device_wide_faults_while_emitting(rig: Rig, fault, action, undo, code) -> None:
    await rig.emit([3000, 3000, 0, 0])
    await rig.run_ms(1000)
    rig.bench(*action)
    rig.step_ms(10)
    s = await rig.ls4()
    assert s.device_state is DeviceState.FAULT and s.fault_code is code and s.fault_channel is None
    assert s.output_power_mw == (0,) * 4
    assert Control.EMISSION_ENABLE not in (await rig.ls4_holding()).control
    await rig.beat()
    assert await rig.write1(1, 1) == BUSY
    rig.bench(*undo)
    assert await rig.write1(1, 1) is None
    assert (await rig.ls4()).device_state is DeviceState.READY


@pytest.mark.parametrize("action", [("interlock", "open"), ("key", "off")], ids=["interlock", "key"])
async def test_interlock_and_key_do_not_fault_in_ready(rig: Rig, action) -> None:
    await rig.take_control()
    rig.bench(*action)
    rig.step_ms(10)
    assert (await rig.ls4()).device_state is DeviceState.READY


@pytest.mark.parametrize("how", ["break", "disconnect"])
async def test_fibre_fault_names_its_channel(rig: Rig, how: str) -> None:
    await rig.emit([0, 0, 2000, 0])
    await rig.run_ms(1000)
    rig.bench("fibre", 2, how)
    rig.step_ms(10)
    s = await rig.ls4()
    assert s.fault_code is FaultCode.FIBRE_FAULT and s.fault_channel == 2 and s.output_power_mw == (0,) * 4
    await rig.beat()
    assert await rig.write1(1, 1) == BUSY
    rig.bench("fibre", 2, "connect")
    assert await rig.write1(1, 1) is None


async def test_broken_fibre_delivers_nothing_to_the_tip(rig: Rig) -> None:
    rig.bench("fibre", 0, "break")
    await rig.ok(16, [65535])
    await rig.emit([3000, 0, 0, 0])
    rig.step_ms(10)
    rig.step_ms(10)
    s = await rig.ls4()
    assert s.fault_code is FaultCode.FIBRE_FAULT and s.fault_channel == 0
    assert rig.bench("state")["ls4"]["true_tip_energy_j"][0] == 0.0


async def test_diode_overtemp_faults_its_channel_and_reset_waits_until_cool(rig: Rig) -> None:
    rig.bench("diode", 1, "cooling", "fail")
    await rig.emit([0, 5000, 0, 0])
    for _ in range(1200):  # at most two minutes of device time, looked at every 100 ms
        await rig.run_ms(100)
        if (await rig.ls4()).device_state is DeviceState.FAULT:
            break
    s = await rig.ls4()
    assert s.fault_code is FaultCode.DIODE_OVERTEMP and s.fault_channel == 1 and s.diode_temp_c[1] > 43.0
    assert ChannelStatus.DIODE_OVERTEMP in s.ch_status[1]
    await rig.beat()
    assert await rig.write1(1, 1) == BUSY
    rig.bench("diode", 1, "cooling", "ok")
    await rig.run_ms(60_000, beat_every_ms=1000)
    assert await rig.write1(1, 1) is None


async def test_power_deviation_faults_after_500_ms_not_before(rig: Rig) -> None:
    rig.bench("power", 3, "drift", -30)
    await rig.ok(16 + 3, [65535])
    await rig.emit([0, 0, 0, 2000])
    await rig.run_ms(400)  # ramp (30 ms) then deviating for under 500 ms
    s = await rig.ls4()
    assert s.device_state is DeviceState.EMITTING and ChannelStatus.POWER_DEVIATION in s.ch_status[3]
    await rig.run_ms(200)
    s = await rig.ls4()
    assert s.fault_code is FaultCode.POWER_DEVIATION and s.fault_channel == 3
    assert await rig.write1(1, 1) is None  # nothing physical to wait for


async def test_power_deviation_is_not_judged_below_500_mw(rig: Rig) -> None:
    rig.bench("power", 0, "drift", -50)
    await rig.emit([400, 0, 0, 0])
    await rig.run_ms(3000)
    assert (await rig.ls4()).device_state is DeviceState.EMITTING


async def test_clearing_host_control_while_armed_is_fault_8_and_in_ready_is_standby(rig: Rig) -> None:
    await rig.take_control()
    await rig.ok(0, [0])
    assert (await rig.ls4()).device_state is DeviceState.STANDBY
    await rig.take_control()
    await rig.arm()
    await rig.ok(0, [0])
    s = await rig.ls4()
    assert s.fault_code is FaultCode.HOST_RELEASED
    assert await rig.write1(1, 1) is None
    assert (await rig.ls4()).device_state is DeviceState.STANDBY  # HOST_CONTROL = 0


async def test_the_first_fault_wins_until_reset(rig: Rig) -> None:
    await rig.emit([1000, 0, 0, 0])
    await rig.run_ms(500)
    rig.bench("interlock", "open")
    rig.bench("estop", "press")
    s = await rig.ls4()
    assert s.fault_code is FaultCode.INTERLOCK_OPEN


async def test_clearing_emission_enable_returns_to_ready(rig: Rig) -> None:
    await rig.emit([1000, 0, 0, 0])
    await rig.run_ms(500)
    await rig.ok(0, [HC])
    rig.step_ms(10)
    s = await rig.ls4()
    assert s.device_state is DeviceState.READY and s.output_power_mw == (0,) * 4 and s.fault_code is FaultCode.NONE


async def test_aiming_beam_follows_its_bit(rig: Rig) -> None:
    await rig.ok(0, [int(Control.AIMING_BEAM)])
    assert Interlocks.AIMING_BEAM_ON in (await rig.ls4()).interlocks
    await rig.ok(0, [0])
    assert Interlocks.AIMING_BEAM_ON not in (await rig.ls4()).interlocks

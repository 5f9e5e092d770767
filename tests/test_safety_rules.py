"""Each safety rule on its own: the supervisor driven with hand-built LS-4 / FT-8 snapshots.

Every rule of safety.rules.RULES has at least one test here whose name contains the rule's name
(checked by the last test). Time is a plain number: no clock, no sleeping.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from protocol import ft8 as FT8
from protocol import ls4 as LS4
from protocol.ft8 import FT8Snapshot, ProbeStatus
from protocol.ls4 import ChannelStatus, DeviceState, FaultCode, Interlocks, LS4Snapshot
from safety.limits import SafetyLimits
from safety.rules import RULES
from safety.supervisor import ACK_FRESH_S, SafetySupervisor
from safety.types import Decision, Finding, Proposal, Severity

CYCLE_S = 0.1
VALID = ProbeStatus.CONNECTED | ProbeStatus.SIGNAL_OK
LIMITS = SafetyLimits(
    max_power_mw=(8000, 6000, 0, 10000),
    energy_budget_j=(300.0, 500.0, None, 800.0),
    session_energy_budget_j=1200.0,
    tip_temp_cap_c=90.0,
    max_session_s=600.0,
    tip_probes={0: 0, 1: 1, 3: 3},
    protected_probes={4: (45.0, 30.0), 5: (60.0, 2.0)},
)


class Bench:
    """A supervisor and a consistent pair of device snapshots that a test bends one field at a time.

    Each `cycle()` moves time by `dt`, integrates the LS-4's energy counters from OUTPUT_POWER as
    the device does, advances the FT-8 SAMPLE_COUNTER by two samples (20 Hz vs a 10 Hz cycle), and
    jitters every probe by 0.01 degC so a working probe never reads identical samples.
    """

    def __init__(self, limits: SafetyLimits = LIMITS, *, session: bool = True) -> None:
        self.found: list[Finding] = []
        self.sup = SafetySupervisor(limits=limits, on_finding=self.found.append)
        self.t = 0.0
        self.uptime_ms = 10_000
        self.energy_mj = [0.0] * 4
        self.output = [0] * 4
        self.active = [0] * 4
        self.state = DeviceState.EMITTING
        self.expected: DeviceState | None = DeviceState.ARMED
        self.fault = FaultCode.NONE
        self.counter = 100
        self.temps: list[float | None] = [37.0] * 8
        self.probe_status = [VALID] * 8
        self.ft8_status = FT8.Status.MEASURING
        self._jitter = 0.01  # toggled before every cycle: the first cycle reads the temperatures as set
        if session:
            self.sup.begin_session(ls4=self.ls4(), now_s=0.0)

    def ls4(self, **override: object) -> LS4Snapshot:
        fields = dict(
            device_state=self.state,
            interlocks=Interlocks.KEY_ON,
            fault_code=self.fault,
            fault_channel=None,
            map_version=LS4.MAP_VERSION,
            firmware_version=LS4.FIRMWARE_VERSION,
            channel_count=LS4.CHANNEL_COUNT,
            max_channel_power_mw=LS4.MAX_CHANNEL_POWER_MW,
            heartbeat_echo=0,
            watchdog_remaining_ms=500,
            uptime_ms=self.uptime_ms,
            cabinet_temp_c=28.0,
            ch_status=(ChannelStatus.FIBRE_CONNECTED,) * 4,
            output_power_mw=tuple(self.output),
            active_setpoint_mw=tuple(self.active),
            back_reflection_pct=(3.0,) * 4,
            diode_temp_c=(25.0,) * 4,
            energy_mj=tuple(int(e) for e in self.energy_mj),
            emission_time_ms=(0,) * 4,
        )
        fields.update(override)
        return LS4Snapshot(**fields)  # type: ignore[arg-type]

    def ft8(self, **override: object) -> FT8Snapshot:
        fields = dict(
            status=self.ft8_status,
            map_version=FT8.MAP_VERSION,
            firmware_version=FT8.FIRMWARE_VERSION,
            channel_count=FT8.CHANNEL_COUNT,
            sample_counter=self.counter & 0xFFFF,
            sample_period_actual_ms=50,
            temperature_c=tuple(None if t is None else round(t + self._jitter, 2) for t in self.temps),
            probe_status=tuple(self.probe_status),
        )
        fields.update(override)
        return FT8Snapshot(**fields)  # type: ignore[arg-type]

    def emit(self, *powers_mw: int) -> None:
        """The LS-4 applies and measures exactly these powers."""
        self.active = list(powers_mw)
        self.output = list(powers_mw)

    def cycle(
        self,
        proposal: tuple[int, ...] = (0, 0, 0, 0),
        *,
        dt: float = CYCLE_S,
        ls4: LS4Snapshot | None | bool = True,
        ft8: FT8Snapshot | None | bool = True,
        link_ok: bool = True,
        overrun_s: float = 0.0,
        counting: bool = True,
    ) -> Decision:
        self.t = round(self.t + dt, 9)
        self.uptime_ms += round(dt * 1000)
        for c in range(4):
            self.energy_mj[c] += self.output[c] * dt
        if counting:
            self.counter += 2
        self._jitter = 0.01 if self._jitter == 0.0 else 0.0
        ls4_snap = self.ls4() if ls4 is True else ls4
        ft8_snap = self.ft8() if ft8 is True else ft8
        return self.sup.check(
            now_s=self.t,
            ls4=ls4_snap or None,
            ft8=ft8_snap or None,
            proposal=Proposal(setpoint_mw=tuple(proposal), enable=tuple(p != 0 for p in proposal)),
            expected_state=self.expected,
            link_ok=link_ok,
            cycle_overrun_s=overrun_s,
        )

    def rules(self, severity: Severity | None = None) -> list[str]:
        return [f.rule for f in self.found if severity is None or f.severity is severity]

    def hard(self) -> list[str]:
        return self.rules(Severity.HARD)


def settle(b: Bench, powers: tuple[int, ...], cycles: int = 3) -> Decision:
    """Propose `powers` and let the LS-4 deliver them exactly, as a healthy device does."""
    d = b.cycle(powers)
    for _ in range(cycles):
        b.emit(*d.setpoint_mw)
        d = b.cycle(powers)
    return d


# --- soft rules ------------------------------------------------------------------------------------


def test_no_session_holds_everything_at_zero() -> None:
    b = Bench(session=False)
    d = b.cycle((1000, 1000, 0, 1000))
    assert d.setpoint_mw == (0, 0, 0, 0) and d.enable == (False,) * 4
    assert b.rules() == ["no_session"] and b.sup.latched is None


def test_channel_not_in_plan_is_held_off() -> None:
    b = Bench()
    d = b.cycle((0, 0, 1000, 0))
    assert d.setpoint_mw[2] == 0 and not d.enable[2]
    assert [(f.rule, f.channel) for f in b.found] == [("channel_not_in_plan", 2)]


@pytest.mark.parametrize(("proposed", "written"), [(9000, 8000), (-5, 0)])
def test_power_clamp_limits_the_proposal_to_max_power(proposed: int, written: int) -> None:
    b = Bench()
    d = b.cycle((proposed, 0, 0, 0))
    assert d.setpoint_mw[0] == written
    assert [(f.rule, f.channel, f.severity) for f in b.found] == [("power_clamp", 0, Severity.SOFT)]


def test_power_clamp_not_reported_within_limits() -> None:
    b = Bench()
    d = b.cycle((8000, 6000, 0, 10000))
    assert d.setpoint_mw == (8000, 6000, 0, 10000) and b.found == []


def test_reading_missing_holds_power_at_the_last_decision() -> None:
    b = Bench()
    settle(b, (2000, 0, 0, 0))
    d = b.cycle((5000, 0, 0, 0), ft8=None)
    assert d.setpoint_mw[0] == 2000, "no rise without fresh readings"
    assert "reading_missing" in b.rules() and b.sup.latched is None
    d = b.cycle((5000, 0, 0, 0))
    assert d.setpoint_mw[0] == 5000, "fresh readings lift the hold"


def test_tip_temp_backoff_derates_the_guarded_channel_only() -> None:
    b = Bench()
    b.temps[0] = 88.0  # 2 degC below the 90 degC cap, inside the 5 degC margin
    d = b.cycle((8000, 6000, 0, 10000))
    assert d.setpoint_mw[0] == int(8000 * 2.0 / 5.0)
    assert d.setpoint_mw[1:] == (6000, 0, 10000)
    assert [(f.rule, f.channel) for f in b.found] == [("tip_temp_backoff", 0)]


def test_protected_temp_backoff_derates_all_channels() -> None:
    b = Bench()
    b.temps[4] = 43.5  # protected at 45 degC, margin 3 degC: half the power
    d = b.cycle((8000, 6000, 0, 10000))
    assert d.setpoint_mw == (4000, 3000, 0, 5000)
    assert "protected_temp_backoff" in b.rules() and b.sup.latched is None


def test_cem43_warning_holds_power_from_rising() -> None:
    b = Bench()
    b.temps[5] = 51.0  # CEM43 rate 2^8 = 256 min/min: past half of 2 min within ~0.25 s
    settle(b, (1000, 0, 0, 0))
    assert "cem43_warning" in b.rules() and b.sup.latched is None
    assert b.sup.cem43_min(5) >= 1.0
    d = b.cycle((3000, 0, 0, 0))
    assert d.setpoint_mw[0] <= 1000, "no rise while half the protected dose is spent"


def test_fibre_energy_taper_never_authorises_more_than_the_remainder() -> None:
    lim = dataclasses.replace(LIMITS, energy_budget_j=(3.0, 500.0, None, 800.0))
    b = Bench(lim)
    d = b.cycle((8000, 0, 0, 0))
    horizon, gain = lim.write_horizon_s, 1.0 + lim.power_tolerance_fraction
    assert d.setpoint_mw[0] * horizon * gain <= 3.0 * 1000.0
    assert "fibre_energy_taper" in b.rules()


def test_fibre_energy_budget_stops_only_that_fibre_for_good() -> None:
    lim = dataclasses.replace(LIMITS, energy_budget_j=(1.0, 500.0, None, 800.0))
    b = Bench(lim)
    d = b.cycle((8000, 2000, 0, 2000))
    for _ in range(60):
        b.emit(*d.setpoint_mw)
        d = b.cycle((8000, 2000, 0, 2000))
    assert 0 in b.sup.fibres_stopped and b.sup.latched is None
    assert d.setpoint_mw == (0, 2000, 0, 2000), "the other fibres go on"
    assert b.sup.delivered_j[0] <= 1.0
    stops = [f for f in b.found if f.rule == "fibre_energy_budget"]
    assert len(stops) == 1 and stops[0].channel == 0 and stops[0].severity is Severity.SOFT
    # never restarts, even if the energy books looked otherwise
    b.emit(*d.setpoint_mw)
    assert b.cycle((8000, 2000, 0, 2000)).setpoint_mw[0] == 0


def test_session_energy_taper_scales_all_channels() -> None:
    lim = dataclasses.replace(LIMITS, session_energy_budget_j=6.0)
    b = Bench(lim)
    d = b.cycle((8000, 6000, 0, 10000))
    assert sum(d.setpoint_mw) * lim.write_horizon_s * 1.2 <= 6.0 * 1000.0
    assert d.setpoint_mw[0] > 0 and d.setpoint_mw[1] > 0 and d.setpoint_mw[3] > 0
    assert "session_energy_taper" in b.rules()


def test_latch_reset_is_journalled_on_ack() -> None:
    b = Bench()
    b.cycle(overrun_s=1.0)
    assert b.sup.latched is not None
    b.cycle()
    assert b.sup.ack(b.t) is None and b.sup.latched is None
    assert b.found[-1].rule == "latch_reset" and "cycle_overrun" in b.found[-1].message


# --- hard rules: energy and time -----------------------------------------------------------------


def test_session_energy_budget_trips_all_channels() -> None:
    lim = dataclasses.replace(LIMITS, session_energy_budget_j=2.0)
    b = Bench(lim)
    d = b.cycle((8000, 6000, 0, 10000))
    for _ in range(80):
        b.emit(*d.setpoint_mw)
        d = b.cycle((8000, 6000, 0, 10000))
        if b.sup.latched:
            break
    assert b.sup.latched is not None and b.sup.latched.rule == "session_energy_budget"
    assert d.setpoint_mw == (0, 0, 0, 0)
    assert sum(b.sup.counter_j) <= 2.0
    assert b.sup.ack(b.t) is not None, "a session budget cannot be acked away"


def test_session_time_trips_after_max_session_s() -> None:
    lim = dataclasses.replace(LIMITS, max_session_s=1.0)
    b = Bench(lim)
    for _ in range(10):
        b.cycle()
    assert b.sup.latched is None
    b.cycle(dt=0.05)
    assert b.sup.latched is not None and b.sup.latched.rule == "session_time"


def test_energy_crosscheck_trips_on_counter_vs_integral_mismatch() -> None:
    b = Bench()
    settle(b, (5000, 0, 0, 0), cycles=10)  # ~0.5 J/cycle, books agree
    assert b.sup.latched is None
    b.energy_mj[0] += 3000.0  # the counter jumps 3 J the host never saw emitted
    b.cycle((5000, 0, 0, 0))
    assert b.sup.latched is not None and b.sup.latched.rule == "energy_crosscheck"
    assert b.sup.ack(b.t + 0.01) is not None


def test_energy_crosscheck_tolerates_a_step_inside_a_cycle() -> None:
    b = Bench()
    settle(b, (8000, 0, 0, 0), cycles=10)
    # the footswitch released right after the last read: the counter gets nothing more, while
    # the trapezoid assumes a ramp 8 W -> 0 over the cycle (0.4 J too much)
    before = b.sup.host_integral_j[0] - b.sup.counter_j[0]
    b.emit(0, 0, 0, 0)
    b.cycle()
    assert b.hard() == []
    assert b.sup.host_integral_j[0] - b.sup.counter_j[0] - before == pytest.approx(0.4, abs=0.01)


def test_energy_counter_backwards_trips() -> None:
    b = Bench()
    settle(b, (5000, 0, 0, 0), cycles=5)
    b.energy_mj[0] -= 1000.0
    b.cycle((5000, 0, 0, 0))
    assert "energy_counter_backwards" in b.hard()


# --- hard rules: power -------------------------------------------------------------------------------


def test_power_above_limit_trips_at_once() -> None:
    b = Bench()
    settle(b, (8000, 0, 0, 0))
    b.output[0] = 9700  # > 8000 mW * 1.2
    b.cycle((8000, 0, 0, 0))
    assert b.sup.latched is not None and b.sup.latched.rule in ("power_above_limit", "power_mismatch")
    assert "power_above_limit" in b.hard()


def test_power_mismatch_trips_after_its_window_not_before() -> None:
    b = Bench()
    settle(b, (5000, 0, 0, 0))
    b.output[0] = 6250  # +25 %: outside 20 %, inside the gross 50 %
    b.cycle((5000, 0, 0, 0))
    b.cycle((5000, 0, 0, 0))  # 0.1 s of the 0.2 s window
    assert b.sup.latched is None
    b.cycle((5000, 0, 0, 0))
    assert b.sup.latched is not None and b.sup.latched.rule == "power_mismatch" and b.sup.latched.channel == 0


def test_power_mismatch_gross_trips_at_once() -> None:
    b = Bench()
    settle(b, (5000, 0, 0, 0))
    b.output[0] = 1000
    b.cycle((5000, 0, 0, 0))
    assert b.sup.latched is not None and b.sup.latched.rule == "power_mismatch"


def test_power_mismatch_clears_if_the_deviation_goes() -> None:
    b = Bench()
    settle(b, (5000, 0, 0, 0))
    b.output[0] = 6250
    b.cycle((5000, 0, 0, 0))
    b.output[0] = 5000
    for _ in range(5):
        b.cycle((5000, 0, 0, 0))
    assert b.hard() == []


def test_power_mismatch_not_judged_below_power_check_min() -> None:
    b = Bench()
    settle(b, (150, 0, 0, 0))
    b.output[0] = 60
    for _ in range(5):
        b.cycle((150, 0, 0, 0))
    assert b.hard() == []


def test_uncontrolled_emission_output_where_the_host_allows_none() -> None:
    b = Bench()
    b.cycle()
    b.output[3] = 400  # light on channel 3, which the host has never allowed
    b.cycle()
    assert b.sup.latched is None, "one observation may be the LS-4's 10 ms stop"
    b.cycle()
    assert b.sup.latched is not None and b.sup.latched.rule == "uncontrolled_emission" and b.sup.latched.channel == 3


def test_uncontrolled_emission_active_setpoint_above_what_was_written() -> None:
    b = Bench()
    settle(b, (2000, 0, 0, 0))
    b.active[0] = b.output[0] = 7000  # someone else wrote a higher setpoint
    b.cycle((2000, 0, 0, 0))
    b.cycle((2000, 0, 0, 0))
    assert b.sup.latched is not None and b.sup.latched.rule == "uncontrolled_emission"


def test_uncontrolled_emission_allows_the_older_setpoint_while_a_write_may_have_failed() -> None:
    b = Bench()
    settle(b, (4000, 0, 0, 0))
    b.cycle((1000, 0, 0, 0))  # decides 1000, but the write fails...
    b.cycle((1000, 0, 0, 0), link_ok=False)  # ...so the LS-4 may still apply 4000
    b.cycle((1000, 0, 0, 0), link_ok=False)
    assert "uncontrolled_emission" not in b.hard()


# --- hard rules: temperature and probes ------------------------------------------------------------


def test_tip_temp_cap_trips() -> None:
    b = Bench()
    b.temps[3] = 90.0
    b.cycle((0, 0, 0, 5000))
    assert b.sup.latched is not None and b.sup.latched.rule == "tip_temp_cap" and b.sup.latched.channel == 3


def test_protected_temp_limit_trips() -> None:
    b = Bench()
    b.temps[4] = 45.2
    b.cycle()
    assert b.sup.latched is not None and b.sup.latched.rule == "protected_temp_limit"


def test_protected_cem43_limit_trips_and_needs_a_new_session() -> None:
    b = Bench()
    b.temps[5] = 55.0  # 2^12 = 4096 min/min: 2 min within 0.03 s
    b.cycle()
    b.cycle()
    assert b.sup.latched is not None and b.sup.latched.rule == "protected_cem43_limit"
    b.temps[5] = 37.0
    b.cycle()
    assert "new session" in (b.sup.ack(b.t) or "")
    # a new session that carries the dose over still refuses
    b.sup.begin_session(ls4=b.ls4(), now_s=b.t, cem43_min={5: b.sup.cem43_min(5)})
    b.cycle()
    assert b.sup.ack(b.t) is not None


def test_probe_stale_trips_when_sample_counter_stops() -> None:
    b = Bench()
    b.cycle()
    for _ in range(2):
        b.cycle(counting=False)
    assert b.sup.latched is None, "0.2 s is within 5 x 50 ms"
    b.cycle(counting=False)
    assert b.sup.latched is not None and b.sup.latched.rule == "probe_stale"
    b.cycle()
    assert b.sup.ack(b.t) is None, "fresh samples clear the cause"


def test_probe_stale_when_the_ft8_read_keeps_failing() -> None:
    b = Bench()
    b.cycle()
    for _ in range(3):
        b.cycle(ft8=None)
    assert "probe_stale" in b.hard()


@pytest.mark.parametrize(
    ("status", "ft8_status", "why"),
    [
        (ProbeStatus.SIGNAL_OK, FT8.Status.MEASURING, "not connected"),
        (ProbeStatus.CONNECTED, FT8.Status.MEASURING, "signal lost"),
        (VALID | ProbeStatus.OUT_OF_RANGE, FT8.Status.MEASURING, "out of range"),
        (VALID, FT8.Status.FAULT, "FT-8 reports FAULT"),
    ],
)
def test_probe_invalid_trips_on_status_bits(status: ProbeStatus, ft8_status: FT8.Status, why: str) -> None:
    b = Bench()
    b.probe_status[1] = status
    b.ft8_status = ft8_status
    b.cycle()
    assert b.sup.latched is not None and b.sup.latched.rule == "probe_invalid"
    assert why in b.sup.latched.message


def test_probe_invalid_trips_on_0x8000() -> None:
    b = Bench()
    b.temps[4] = None  # status bits say valid, the word says 0x8000
    b.cycle()
    assert b.sup.latched is not None and b.sup.latched.rule == "probe_invalid" and b.sup.latched.channel == 4


def test_probe_invalid_ignored_on_an_unmonitored_probe() -> None:
    b = Bench()
    b.probe_status[7] = ProbeStatus(0)
    b.temps[7] = None
    b.cycle()
    assert b.hard() == []


def test_probe_implausible_outside_the_range() -> None:
    lim = dataclasses.replace(LIMITS, probe_range_c=(20.0, 120.0))
    b = Bench(lim)
    b.temps[0] = 15.0
    b.cycle()
    assert b.sup.latched is not None and b.sup.latched.rule == "probe_implausible"


def test_probe_implausible_faster_than_physics() -> None:
    b = Bench()
    b.cycle()
    b.temps[1] = 37.0 + 30.0 * 0.1 + 2.0  # beyond 30 degC/s over 0.1 s plus the 1 degC allowance
    b.cycle()
    assert b.sup.latched is not None and b.sup.latched.rule == "probe_implausible" and "faster" in b.sup.latched.message


def test_probe_implausible_not_for_real_heating() -> None:
    b = Bench()
    for _ in range(30):
        b.temps[0] += 2.0  # 20 degC/s: the fastest real tissue heating near a bare fibre
        b.cycle()
    assert "probe_implausible" not in b.hard()


def test_probe_frozen_trips_on_identical_samples() -> None:
    b = Bench()
    frozen = b.ft8()
    for k in range(LIMITS.probe_frozen_reads + 1):
        temps = list(b.ft8().temperature_c)
        temps[0] = 41.23
        b.cycle(ft8=b.ft8(temperature_c=tuple(temps), sample_counter=(frozen.sample_counter + 2 * k + 2) & 0xFFFF))
    assert b.sup.latched is not None and b.sup.latched.rule == "probe_frozen" and b.sup.latched.channel == 0


# --- hard rules: the devices and the link ---------------------------------------------------------------


def test_ls4_fault_trips() -> None:
    b = Bench()
    b.state, b.fault = DeviceState.FAULT, FaultCode.ESTOP
    b.cycle()
    assert b.sup.latched is not None and b.sup.latched.rule == "ls4_fault" and "ESTOP" in b.sup.latched.message
    b.cycle()
    assert b.sup.ack(b.t) is not None, "refused while the LS-4 is in FAULT"
    b.state, b.fault = DeviceState.READY, FaultCode.NONE
    b.expected = DeviceState.READY
    b.cycle()
    assert b.sup.ack(b.t) is None


@pytest.mark.parametrize(
    ("expected", "actual", "trips"),
    [
        (DeviceState.READY, DeviceState.ARMED, True),
        (DeviceState.READY, DeviceState.EMITTING, True),
        (DeviceState.ARMED, DeviceState.READY, True),
        (DeviceState.ARMED, DeviceState.STANDBY, True),
        (DeviceState.ARMED, DeviceState.EMITTING, False),
        (DeviceState.EMITTING, DeviceState.ARMED, False),
        (DeviceState.STANDBY, DeviceState.STANDBY, False),
    ],
)
def test_ls4_unexpected_state_trips(expected: DeviceState, actual: DeviceState, trips: bool) -> None:
    b = Bench()
    b.expected, b.state = expected, actual
    b.cycle()
    assert ("ls4_unexpected_state" in b.hard()) is trips


def test_ls4_rebooted_trips_when_uptime_goes_back() -> None:
    b = Bench()
    b.cycle()
    b.uptime_ms = 500
    b.cycle()
    assert "ls4_rebooted" in b.hard()


def test_ls4_uptime_wrap_is_not_a_reboot() -> None:
    b = Bench()
    b.uptime_ms = (1 << 32) - 150
    b.cycle()
    b.uptime_ms -= 1 << 32  # the next cycle adds 100 ms: 50 ms past the wrap
    b.cycle()
    assert "ls4_rebooted" not in b.hard()


@pytest.mark.parametrize(
    ("device", "override", "register"),
    [
        ("ls4", {"firmware_version": 0x0300}, "FIRMWARE_VERSION"),
        ("ls4", {"channel_count": 2}, "CHANNEL_COUNT"),
        ("ls4", {"max_channel_power_mw": 15000}, "MAX_CHANNEL_POWER"),
        ("ft8", {"map_version": 2}, "MAP_VERSION"),
        ("ft8", {"channel_count": 4}, "CHANNEL_COUNT"),
    ],
)
def test_wrong_device_trips_on_identity(device: str, override: dict[str, int], register: str) -> None:
    b = Bench()
    if device == "ls4":
        b.cycle(ls4=b.ls4(**override))
    else:
        b.cycle(ft8=b.ft8(**override))
    assert b.sup.latched is not None and b.sup.latched.rule == "wrong_device" and register in b.sup.latched.message


def test_link_lost_trips_after_its_window_not_before() -> None:
    b = Bench()
    b.cycle()
    b.cycle(ls4=None, link_ok=False)
    b.cycle(ls4=None, link_ok=False)
    assert "link_lost" not in b.hard(), "two missed cycles are bus noise"
    b.cycle(ls4=None, link_ok=False)
    b.cycle(ls4=None, link_ok=False)
    assert "link_lost" in b.hard()


def test_link_lost_window_restarts_after_a_good_cycle() -> None:
    b = Bench()
    for _ in range(5):
        b.cycle(ls4=None, link_ok=False)
        b.cycle()
    assert b.hard() == []


def test_cycle_overrun_trips() -> None:
    b = Bench()
    b.cycle(overrun_s=0.1)
    assert b.sup.latched is None
    b.cycle(overrun_s=0.2)
    assert b.sup.latched is not None and b.sup.latched.rule == "cycle_overrun"


# --- rules raised from outside the checks ---------------------------------------------------------


@pytest.mark.parametrize("rule", ["operator_stop", "host_error", "shutdown_unconfirmed", "writer_refused_decision"])
def test_external_trip_rules_latch_through_trip(rule: str) -> None:
    b = Bench()
    b.sup.trip(RULES[rule].finding(why="test"))
    assert b.sup.latched is not None and b.sup.latched.rule == rule
    assert b.found[-1].rule == rule
    assert b.cycle((1000, 0, 0, 0)).setpoint_mw == (0, 0, 0, 0)


def test_trip_refuses_soft_findings_and_unknown_rules() -> None:
    b = Bench()
    with pytest.raises(ValueError, match="hard"):
        b.sup.trip(RULES["power_clamp"].finding(channel=0, value=1, limit=0))
    with pytest.raises(ValueError, match="not in"):
        b.sup.trip(Finding(rule="made_up", severity=Severity.HARD, message="x"))


# --- the latch and the ack -----------------------------------------------------------------------------


def test_first_cause_is_kept_and_later_ones_still_reported() -> None:
    b = Bench()
    b.cycle(overrun_s=1.0)
    first = b.sup.latched
    b.temps[0] = 95.0
    b.cycle()
    assert b.sup.latched is first
    assert b.hard()[0] == "cycle_overrun" and "tip_temp_cap" in b.hard()


def test_findings_are_reported_once_per_appearance() -> None:
    b = Bench()
    for _ in range(5):
        b.cycle((9000, 0, 0, 0))
    assert b.rules() == ["power_clamp"]
    b.cycle((100, 0, 0, 0))
    b.cycle((9000, 0, 0, 0))
    assert b.rules() == ["power_clamp", "power_clamp"]


def test_the_latched_cause_is_reported_first() -> None:
    b = Bench()
    b.temps[0] = 95.0
    b.cycle((9000, 0, 0, 0), overrun_s=1.0)
    assert b.found[0] is b.sup.latched


def test_ack_refused_while_the_cause_is_present_done_once_gone() -> None:
    b = Bench()
    b.temps[4] = 45.4
    b.cycle()
    assert b.sup.latched is not None and b.sup.latched.rule == "protected_temp_limit"
    b.cycle()
    reason = b.sup.ack(b.t)
    assert reason is not None and "still present" in reason and "\n" not in reason
    b.temps[4] = 44.6
    b.cycle()
    assert b.sup.ack(b.t) is None and b.sup.latched is None


def test_ack_refused_on_a_check_too_old() -> None:
    b = Bench()
    b.cycle(overrun_s=1.0)
    b.cycle()
    assert "fresh" in (b.sup.ack(b.t + ACK_FRESH_S + 0.1) or "")


def test_ack_with_nothing_latched_is_a_no_op() -> None:
    b = Bench()
    b.cycle()
    assert b.sup.ack(b.t) is None and b.found == []


def test_output_is_zero_while_latched_whatever_is_proposed() -> None:
    b = Bench()
    b.cycle(overrun_s=1.0)
    for _ in range(3):
        d = b.cycle((8000, 6000, 0, 10000))
        assert d.setpoint_mw == (0, 0, 0, 0) and d.enable == (False,) * 4


def test_a_failing_journal_does_not_stop_the_trip() -> None:
    def broken(_: Finding) -> None:
        raise OSError("disk full")

    sup = SafetySupervisor(limits=LIMITS, on_finding=broken)
    b = Bench()
    b.sup = sup
    sup.begin_session(ls4=b.ls4(), now_s=0.0)
    b.cycle(overrun_s=1.0)
    assert sup.latched is not None and sup.report_failures == 1


# --- the table and these tests agree ------------------------------------------------------------------


def test_every_rule_has_its_own_test_here() -> None:
    tree = ast.parse(Path(__file__).read_text())
    names = [n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    source = Path(__file__).read_text()
    missing = [r for r in RULES if not any(r in n for n in names) and f'"{r}"' not in source]
    assert missing == [], f"rules without a unit test: {missing}"


# --- session structure ------------------------------------------------------------------------------


def test_fibre_energy_budget_counts_afresh_each_illumination_session_budget_goes_on() -> None:
    lim = dataclasses.replace(LIMITS, energy_budget_j=(1.0, 500.0, None, 800.0), session_energy_budget_j=50.0)
    b = Bench(lim)
    d = b.cycle((8000, 0, 0, 0))
    for _ in range(40):
        b.emit(*d.setpoint_mw)
        d = b.cycle((8000, 0, 0, 0))
    assert 0 in b.sup.fibres_stopped
    first = b.sup.delivered_j[0]
    b.emit(0, 0, 0, 0)
    b.cycle()
    b.sup.begin_illumination(ls4=b.ls4())
    assert b.sup.fibres_stopped == frozenset() and b.sup.fibre_energy_j[0] == pytest.approx(0.0, abs=1e-6)
    d = b.cycle((8000, 0, 0, 0))
    assert d.setpoint_mw[0] > 0, "a new illumination may use its own budget"
    for _ in range(40):
        b.emit(*d.setpoint_mw)
        d = b.cycle((8000, 0, 0, 0))
    assert 0 in b.sup.fibres_stopped and b.sup.fibre_energy_j[0] <= 1.0
    assert b.sup.delivered_j[0] > first + 0.5, "the session's books go on"


def test_expected_states_accepts_a_set() -> None:
    b = Bench()
    b.expected = None
    b.state = DeviceState.READY
    d = b.sup.check(now_s=0.1, ls4=b.ls4(), ft8=b.ft8(), proposal=Proposal(), expected_states={DeviceState.READY}, link_ok=True, cycle_overrun_s=0.0)
    assert d.trips == ()
    b.sup.check(now_s=0.2, ls4=b.ls4(), ft8=b.ft8(sample_counter=200), proposal=Proposal(), expected_states={DeviceState.ARMED, DeviceState.EMITTING}, link_ok=True, cycle_overrun_s=0.0)
    assert b.sup.latched is not None and b.sup.latched.rule == "ls4_unexpected_state"
    with pytest.raises(ValueError, match="not both"):
        b.sup.check(now_s=0.3, ls4=b.ls4(), ft8=b.ft8(), proposal=Proposal(), expected_state=DeviceState.READY, expected_states={DeviceState.READY}, link_ok=True, cycle_overrun_s=0.0)


def test_end_session_holds_everything_and_keeps_the_latch() -> None:
    b = Bench()
    b.cycle(overrun_s=1.0)
    idle = dataclasses.replace(LIMITS, max_power_mw=(0, 0, 0, 0), energy_budget_j=(None,) * 4)
    b.sup.end_session(limits=idle)
    assert b.sup.latched is not None and b.sup.limits is idle and not b.sup.in_session
    assert b.cycle((1000, 0, 0, 0)).setpoint_mw == (0, 0, 0, 0)


def test_energy_crosscheck_takes_the_counter_across_a_gap_the_host_did_not_see() -> None:
    b = Bench()
    settle(b, (8000, 0, 0, 0), cycles=5)
    # the host stalls 1.5 s; the LS-4 watchdog stopped emission 0.5 s into it
    b.energy_mj[0] += 8000 * 0.5  # what the counter got before the stop
    b.emit(0, 0, 0, 0)  # cycle() adds the (now zero) output x dt
    b.cycle(dt=1.5, overrun_s=1.4)
    assert "energy_crosscheck" not in b.hard() and b.sup.latched is not None and b.sup.latched.rule == "cycle_overrun"


def test_energy_crosscheck_trips_on_more_than_the_host_allowed_across_a_gap() -> None:
    b = Bench()
    settle(b, (2000, 0, 0, 0), cycles=5)
    b.energy_mj[0] += 8000 * 1.0  # 8 J more than 2 W for 1 s could give
    b.cycle((2000, 0, 0, 0), dt=1.0, overrun_s=0.9)
    assert "energy_crosscheck" in b.hard()


def test_host_error_on_a_malformed_proposal_trips_instead_of_raising() -> None:
    b = Bench()
    d = b.sup.check(now_s=0.1, ls4=b.ls4(), ft8=b.ft8(), proposal=Proposal(setpoint_mw=(1000,) * 3, enable=(True,) * 3), expected_state=DeviceState.ARMED, link_ok=True, cycle_overrun_s=0.0)
    assert d.setpoint_mw == (0, 0, 0, 0) and b.sup.latched is not None and b.sup.latched.rule == "host_error"

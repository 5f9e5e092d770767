"""LS4Writer against the real LS-4 model, in-process (DirectLink), device time frozen and stepped."""

from __future__ import annotations

import pytest

from controller.modbus_link import LinkError
from direct_link import DirectLink, drive
from protocol import ft8 as FT8
from protocol import ls4 as LS4
from protocol.ls4 import Control, DeviceState, FaultCode
from safety.limits import SafetyLimits
from safety.rules import RULES
from safety.supervisor import SafetySupervisor
from safety.types import Decision, Finding, Proposal
from safety.writer import LS4Writer, WriterError
from sim.world import SimWorld

CYCLE_MS = 100
LIMITS = SafetyLimits(
    max_power_mw=(8000, 6000, 0, 10000),
    energy_budget_j=(300.0, 500.0, None, 800.0),
    session_energy_budget_j=1200.0,
    tip_temp_cap_c=90.0,
    max_session_s=600.0,
    tip_probes={0: 0, 1: 1, 3: 3},
)


class Host:
    """The daemon's cycle in miniature: read both devices, check, shut down if latched, write."""

    def __init__(self, limits: SafetyLimits = LIMITS) -> None:
        self.world = SimWorld()
        self.world.clock.freeze()
        self.world.ls4.write_holding(16, [20_000] * 4)  # site config: fast ramps (not a safety register)
        self.link = DirectLink(self.world)
        self.found: list[Finding] = []
        self.sup = SafetySupervisor(limits=limits, on_finding=self.found.append)
        self.writer = LS4Writer(self.link, supervisor=self.sup)
        self.link_ok = True

    def start(self, *, arm: bool = True) -> None:
        drive(self.writer.take_control(500))
        drive(self.writer.apply_power_limits(self.sup.limits.max_power_mw))
        self.sup.begin_session(ls4=self.ls4(), now_s=self.world.time_s)
        if arm:
            assert drive(self.writer.arm()) is None
            self.world.bench(["footswitch", "press"])

    def ls4(self) -> LS4.LS4Snapshot:
        return LS4.LS4Snapshot.from_words(drive(self.link.read_input(unit=1, address=0, count=LS4.INPUT_COUNT)))

    def cycle(self, proposal: tuple[int, ...] = (0, 0, 0, 0), *, step_ms: float = CYCLE_MS) -> Decision:
        self.world.bench(["clock", "step", str(step_ms)])
        ok = self.link_ok
        try:
            ls4 = self.ls4()
        except LinkError:
            ls4, ok = None, False
        try:
            ft8 = FT8.FT8Snapshot.from_words(drive(self.link.read_input(unit=2, address=0, count=FT8.INPUT_COUNT)))
        except LinkError:
            ft8, ok = None, False
        decision = self.sup.check(
            now_s=self.world.time_s,
            ls4=ls4,
            ft8=ft8,
            proposal=Proposal(setpoint_mw=proposal, enable=tuple(p > 0 for p in proposal)),
            expected_state=self.writer.expected_state,
            link_ok=ok,
            cycle_overrun_s=max(0.0, step_ms - CYCLE_MS) / 1000.0,
        )
        self.link_ok = True
        if self.sup.latched is not None:
            drive(self.writer.shutdown(self.sup.latched))
        try:
            drive(self.writer.write_cycle(decision))
        except LinkError:
            self.link_ok = False
        return decision


def test_take_control_zeroes_sets_the_watchdog_and_holds_control() -> None:
    h = Host()
    h.world.ls4.write_holding(4, [1234, 0, 0, 0])  # left over from someone else
    drive(h.writer.take_control(300))
    hold = LS4.LS4Holding.from_words(h.world.ls4.holding_words())
    assert hold.control == Control.HOST_CONTROL and hold.watchdog_timeout_ms == 300
    assert hold.power_setpoint_mw == (0,) * 4 and hold.ch_enable == (0,) * 4
    assert h.writer.expected_state is DeviceState.READY and h.world.ls4.state is DeviceState.READY


def test_take_control_recovers_a_device_left_armed() -> None:
    h = Host()
    h.world.ls4.write_holding(0, [int(Control.HOST_CONTROL | Control.EMISSION_ENABLE)])
    drive(h.writer.take_control(400))
    assert h.world.ls4.state is DeviceState.READY and h.world.ls4.fault_code is FaultCode.NONE
    assert h.world.ls4.holding["WATCHDOG_TIMEOUT"] == 400


def test_apply_power_limits_sets_the_device_clamp() -> None:
    h = Host()
    drive(h.writer.apply_power_limits((8000, 6000, 0, 10000)))
    assert h.world.ls4.holding["POWER_LIMIT"] == [8000, 6000, 0, 10000]


def test_arm_is_confirmed_by_reading_control_back() -> None:
    h = Host()
    h.start(arm=False)
    assert drive(h.writer.arm()) is None
    assert h.world.ls4.state is DeviceState.ARMED and h.writer.expected_state is DeviceState.ARMED


def test_arm_reports_the_device_clearing_emission_enable() -> None:
    h = Host()
    h.start(arm=False)
    h.world.bench(["key", "off"])
    reason = drive(h.writer.arm())
    assert reason is not None and "key off" in reason and "\n" not in reason
    assert h.world.ls4.state is DeviceState.READY and h.writer.expected_state is DeviceState.READY


def test_arm_refused_while_latched() -> None:
    h = Host()
    h.start(arm=False)
    h.sup.trip(RULES["operator_stop"].finding(why="test"))
    before = len(h.link.writes)
    reason = drive(h.writer.arm())
    assert reason is not None and "latched" in reason and "operator_stop" in reason
    assert len(h.link.writes) == before, "nothing written"


def test_arm_refused_without_control() -> None:
    h = Host()
    assert "take_control" in (drive(h.writer.arm()) or "")


def test_write_cycle_is_one_write_of_3_to_11_and_the_heartbeat_never_repeats() -> None:
    h = Host()
    h.start()
    beats = []
    for _ in range(5):
        h.cycle((1000, 0, 0, 0))
        w = h.link.writes[-1]
        assert w.address == LS4.CYCLE_WRITE_ADDRESS and len(w.values) == LS4.CYCLE_WRITE_COUNT
        beats.append(w.values[0])
    assert all(a != b for a, b in zip(beats, beats[1:]))
    assert h.world.ls4.holding["POWER_SETPOINT"][0] == 1000


def test_heartbeat_wraps_without_repeating() -> None:
    h = Host()
    h.start()
    h.writer._heartbeat = 0xFFFF
    assert h.writer.next_heartbeat() == 0
    with pytest.raises(ValueError, match="differ"):
        drive(h.writer.write_cycle(Decision(setpoint_mw=(0,) * 4, enable=(False,) * 4), heartbeat=0xFFFF))


def test_write_cycle_writes_zeros_while_latched_whatever_the_decision() -> None:
    h = Host()
    h.start()
    h.sup.trip(RULES["operator_stop"].finding(why="test"))
    drive(h.writer.write_cycle(Decision(setpoint_mw=(5000, 0, 0, 0), enable=(True, False, False, False))))
    assert h.link.writes[-1].values[1:] == (0,) * 8


def test_writer_refused_decision_above_the_limit_latches_and_writes_zeros() -> None:
    h = Host()
    h.start()
    drive(h.writer.write_cycle(Decision(setpoint_mw=(9000, 0, 0, 0), enable=(True, False, False, False))))
    assert h.sup.latched is not None and h.sup.latched.rule == "writer_refused_decision"
    assert h.link.writes[-1].values[1:] == (0,) * 8


def test_shutdown_clears_emission_enable_first_then_zeros_then_verifies() -> None:
    h = Host()
    h.start()
    for _ in range(5):
        h.cycle((5000, 0, 0, 5000))
    assert h.world.ls4.state is DeviceState.EMITTING
    n = len(h.link.writes)
    assert drive(h.writer.shutdown(RULES["operator_stop"].finding(why="test"))) is True
    writes = h.link.writes[n:]
    assert [w.address for w in writes] == [0, 3]
    assert writes[0].values == (int(Control.HOST_CONTROL),)
    assert writes[1].values[1:] == (0,) * 8
    assert h.world.ls4.state is DeviceState.READY and h.world.ls4.true_output_mw == [0.0] * 4
    assert h.world.ls4.fault_code is FaultCode.NONE, "HOST_CONTROL kept: no fault 8"
    assert not h.writer.heartbeat_stopped


def test_shutdown_is_idempotent() -> None:
    h = Host()
    h.start()
    f = RULES["operator_stop"].finding(why="first")
    assert drive(h.writer.shutdown(f)) is True
    n = len(h.link.writes)
    assert drive(h.writer.shutdown(RULES["host_error"].finding(why="second"))) is True
    assert len(h.link.writes) == n, "no bus traffic the second time"
    assert h.sup.latched is f, "the first cause stays"


def test_shutdown_does_not_feed_the_watchdog() -> None:
    h = Host()
    h.start()
    h.cycle((2000, 0, 0, 0))
    last_beat = h.world.ls4.holding["HEARTBEAT"]
    drive(h.writer.shutdown(RULES["operator_stop"].finding(why="test")))
    assert h.world.ls4.holding["HEARTBEAT"] == last_beat


def test_shutdown_unconfirmed_stops_the_heartbeat_and_the_watchdog_stops_emission() -> None:
    h = Host()
    h.start()
    for _ in range(5):
        h.cycle((5000, 0, 0, 0))
    h.link.fail_next = 1_000_000  # the bus is gone
    confirmed = drive(h.writer.shutdown(RULES["operator_stop"].finding(why="test")))
    assert confirmed is False and h.writer.heartbeat_stopped
    assert [f.rule for f in h.found][-1] == "shutdown_unconfirmed"
    h.link.fail_next = 0  # the bus comes back, but nothing feeds the watchdog any more
    assert drive(h.writer.write_cycle(Decision(setpoint_mw=(0,) * 4, enable=(False,) * 4))) is None
    h.world.bench(["clock", "step", "600"])
    assert h.world.ls4.fault_code is FaultCode.WATCHDOG_EXPIRED and h.world.ls4.true_output_mw == [0.0] * 4


def test_shutdown_unconfirmed_blocks_the_ack_until_a_fault_reset() -> None:
    h = Host()
    h.start()
    h.cycle((2000, 0, 0, 0))
    h.link.fail_next = 4
    h.sup.trip(RULES["operator_stop"].finding(why="test"))
    drive(h.writer.shutdown(h.sup.latched))
    assert h.writer.heartbeat_stopped
    h.world.bench(["clock", "step", "600"])  # the LS-4 watchdog trips
    h.cycle()
    assert "ack refused" in (h.sup.ack(h.world.time_s) or "")
    assert drive(h.writer.fault_reset()) is None
    assert not h.writer.heartbeat_stopped and h.world.ls4.state is DeviceState.READY
    h.cycle()
    assert h.sup.ack(h.world.time_s) is None
    assert drive(h.writer.arm()) is None


def test_fault_reset_reports_a_cause_still_present() -> None:
    h = Host()
    h.start()
    h.world.bench(["estop", "press"])
    reason = drive(h.writer.fault_reset())
    assert reason is not None and "refused" in reason


def test_release_control_disarms_before_clearing_host_control() -> None:
    h = Host()
    h.start()
    h.cycle((2000, 0, 0, 0))
    drive(h.writer.release_control())
    assert h.world.ls4.state is DeviceState.STANDBY and h.world.ls4.fault_code is FaultCode.NONE
    assert h.world.ls4.holding["POWER_SETPOINT"] == [0] * 4


def test_disarm_returns_to_ready() -> None:
    h = Host()
    h.start()
    drive(h.writer.disarm())
    assert h.world.ls4.state is DeviceState.READY and h.writer.expected_state is DeviceState.READY


def test_aiming_beam_never_reasserts_emission_enable_after_a_trip() -> None:
    h = Host()
    h.start()
    h.sup.trip(RULES["operator_stop"].finding(why="test"))
    drive(h.writer.set_aiming_beam(True))
    assert Control.EMISSION_ENABLE not in Control(h.link.writes[-1].values[0])


def test_power_mismatch_is_caught_before_the_device_fault() -> None:
    h = Host()
    h.start()
    for _ in range(20):
        h.cycle((5000, 0, 0, 0))
    h.world.bench(["power", "0", "drift", "30"])
    for _ in range(10):
        h.cycle((5000, 0, 0, 0))
    assert h.sup.latched is not None and h.sup.latched.rule == "power_mismatch"
    assert h.world.ls4.fault_code is not FaultCode.POWER_DEVIATION, "the host stopped it first"
    assert h.world.ls4.true_output_mw == [0.0] * 4


def test_take_control_not_confirmed_raises() -> None:
    h = Host()

    async def lying_read_holding(*, unit: int, address: int, count: int) -> list[int]:
        return [0] * count  # CONTROL reads 0 whatever was written

    drive(h.writer.take_control(500))
    h.link.read_holding = lying_read_holding  # type: ignore[method-assign]
    with pytest.raises(WriterError, match="HOST_CONTROL"):
        drive(h.writer.take_control(500))


def test_a_writer_without_supervisor_keeps_its_own_latch_for_good() -> None:
    h = Host()
    writer = LS4Writer(h.link)
    drive(writer.take_control(500))
    drive(writer.shutdown(RULES["host_error"].finding(why="test")))
    assert writer.latched is not None and "latched" in (drive(writer.arm()) or "")
    with pytest.raises(WriterError, match="latched"):
        writer.attach(h.sup)


def test_attach_follows_a_new_supervisor() -> None:
    h = Host()
    h.start(arm=False)
    fresh = SafetySupervisor(limits=LIMITS)
    h.writer.attach(fresh)
    fresh.trip(RULES["operator_stop"].finding(why="test"))
    assert "operator_stop" in (drive(h.writer.arm()) or "")

"""Random sequences of readings, commands, faults and timing against the real LS-4 and FT-8 models.

The host side is the safety layer as the daemon uses it: every cycle reads both devices through an
in-process link, `SafetySupervisor.check`s a random controller proposal (above the limits too),
shuts down when latched, and makes the one cycle write through `LS4Writer`. Between cycles the
machine presses footswitches, breaks fibres, hits the e-stop, unplugs, freezes and overheats
probes, hangs the FT-8, drifts the emitters, cuts the link, stalls the host, arms and acks.

Invariants (the issue's acceptance):
- no write above any limit, and nothing but zeros written while latched;
- no EMISSION_ENABLE written after a trip until an ack;
- delivered energy (the LS-4's own counter since the session began) never above a fibre's budget,
  or the session's, by more than one cycle at that channel's maximum power;
- every trip reaches the journal (a real SQLite file, through controller.journal.Journal);
and two more: every write to LS-4 holding 0-15 comes from safety.writer, and after a trip the
LS-4 emits nothing once its watchdog timeout (plus one cycle) has passed, even with the link down.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from controller.journal import Journal
from controller.modbus_link import LinkError
from direct_link import DirectLink, drive
from protocol import ft8 as FT8
from protocol import ls4 as LS4
from protocol.ls4 import Control, DeviceState
from safety.limits import SafetyLimits
from safety.supervisor import SafetySupervisor
from safety.types import Finding, Proposal, Severity
from safety.writer import LS4Writer
from test_safety_single_writer import guarded_writes_not_from_the_writer

CYCLE_MS = 100
CYCLE_S = CYCLE_MS / 1000.0
NOISE_J = 0.05  # the LS-4 counter integrates a noisy photodiode reading (0.5 %, 2 mW floor)
LIMITS = SafetyLimits(
    max_power_mw=(8000, 6000, 0, 10000),
    energy_budget_j=(3.0, 5.0, None, 8.0),
    session_energy_budget_j=12.0,
    tip_temp_cap_c=90.0,
    max_session_s=30.0,
    tip_probes={0: 0, 1: 1, 3: 3},
    protected_probes={4: (45.0, 30.0), 5: (60.0, 2.0)},
)
BENCH_ACTIONS = [
    ["footswitch", "press"],
    ["footswitch", "release"],
    ["fibre", "0", "break"],
    ["fibre", "3", "disconnect"],
    ["fibre", "0", "connect"],
    ["fibre", "3", "connect"],
    ["estop", "press"],
    ["estop", "release"],
    ["key", "off"],
    ["key", "on"],
    ["interlock", "open"],
    ["interlock", "close"],
    ["probe", "1", "disconnect"],
    ["probe", "1", "connect"],
    ["probe", "4", "signal", "lost"],
    ["probe", "4", "signal", "ok"],
    ["probe", "0", "stuck"],
    ["probe", "0", "unstuck"],
    ["probe", "3", "force", "95"],
    ["probe", "5", "force", "50"],
    ["probe", "4", "force", "44"],
    ["probe", "3", "force", "release"],
    ["probe", "4", "force", "release"],
    ["probe", "5", "force", "release"],
    ["ft8", "hang"],
    ["ft8", "fault"],
    ["ft8", "ok"],
    # within what the energy bound can promise: a channel that really gives 1.3x what it is told
    # (drift and monitor error together) for a whole watchdog timeout (see the module docstring)
    ["power", "0", "drift", "15"],
    ["power", "3", "drift", "-40"],
    ["power", "0", "drift", "0"],
    ["power", "3", "drift", "0"],
    ["monitor", "0", "error", "15"],
    ["monitor", "3", "error", "-40"],
    ["monitor", "0", "error", "0"],
    ["monitor", "3", "error", "0"],
]
POWERS = st.sampled_from([0, 200, 1000, 3000, 6000, 8000, 10000, 12000, -5])


class RecordingLink(DirectLink):
    """DirectLink that also notes whether the safety layer was latched when each write was made."""

    def __init__(self, world, latched) -> None:  # type: ignore[no-untyped-def]
        super().__init__(world)
        self._latched = latched
        self.latched_at_write: list[bool] = []

    async def write_registers(self, *, unit: int, address: int, values: list[int]) -> None:
        latched, before = self._latched(), len(self.writes)
        try:
            await super().write_registers(unit=unit, address=address, values=values)
        finally:
            self.latched_at_write.extend([latched] * (len(self.writes) - before))


class SafetyMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        from sim.world import SimWorld

        self.world = SimWorld(seed=7)
        self.world.clock.freeze()
        self.world.ls4.write_holding(16, [20_000] * 4)  # site config: fast ramps, more action per step
        self.found: list[Finding] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="safety-sm-"))
        self.journal = Journal(self.tmp / "journal.db")
        self.sup = SafetySupervisor(limits=LIMITS, on_finding=self._journal)
        self.link = RecordingLink(self.world, lambda: self.sup.latched is not None)
        self.writer = LS4Writer(self.link, supervisor=self.sup)
        self.link_ok = True
        self.last_cycle_s = self.world.time_s
        self.checked_writes = 0
        self.latched_at_s: float | None = None
        self.baseline_mj = list(self.world.ls4.energy_mj)

    def _journal(self, finding: Finding) -> None:
        self.found.append(finding)
        kind = "safety_trip" if finding.severity is Severity.HARD else "safety_soft"
        self.journal.record_event(kind, finding.message, details={"rule": finding.rule, "channel": finding.channel})

    def teardown(self) -> None:
        self.journal.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # --- host actions ------------------------------------------------------------------------------

    def _request(self, coro):  # type: ignore[no-untyped-def]
        try:
            return drive(coro)
        except LinkError:
            self.link_ok = False
            return None

    def _begin_session(self) -> bool:
        words = self._request(self.link.read_input(unit=LS4.UNIT_ID, address=0, count=LS4.INPUT_COUNT))
        if words is None:
            return False
        snap = LS4.LS4Snapshot.from_words(words)
        self.sup.begin_session(ls4=snap, now_s=self.world.time_s)
        self.baseline_mj = [float(e) for e in snap.energy_mj]
        return True

    @initialize()
    def start(self) -> None:
        """Every run starts emitting: taken control, limits applied, session begun, armed, footswitch down."""
        drive(self.writer.take_control(LIMITS.watchdog_timeout_ms))
        drive(self.writer.apply_power_limits(LIMITS.max_power_mw))
        assert self._begin_session()
        assert drive(self.writer.arm()) is None
        self.world.bench(["footswitch", "press"])

    @rule(p=st.tuples(POWERS, POWERS, POWERS, POWERS), on=st.tuples(*[st.booleans()] * 4), n=st.integers(1, 6))
    def cycles(self, p: tuple[int, ...], on: tuple[bool, ...], n: int) -> None:
        """n control cycles with the controller proposing the same thing."""
        for _ in range(n):
            self._cycle(p, on)

    def _cycle(self, p: tuple[int, ...], on: tuple[bool, ...]) -> None:
        self.world.bench(["clock", "step", str(CYCLE_MS)])
        now = self.world.time_s
        ok = self.link_ok
        ls4_words = self._request(self.link.read_input(unit=LS4.UNIT_ID, address=0, count=LS4.INPUT_COUNT))
        ft8_words = self._request(self.link.read_input(unit=FT8.UNIT_ID, address=0, count=FT8.INPUT_COUNT))
        ok = ok and ls4_words is not None and ft8_words is not None
        decision = self.sup.check(
            now_s=now,
            ls4=None if ls4_words is None else LS4.LS4Snapshot.from_words(ls4_words),
            ft8=None if ft8_words is None else FT8.FT8Snapshot.from_words(ft8_words),
            proposal=Proposal(setpoint_mw=p, enable=on),
            expected_state=self.writer.expected_state,
            link_ok=ok,
            cycle_overrun_s=max(0.0, now - self.last_cycle_s - CYCLE_S),
        )
        self.last_cycle_s = now
        self.link_ok = True
        if self.sup.latched is not None:
            if self.latched_at_s is None:
                self.latched_at_s = now
            drive(self.writer.shutdown(self.sup.latched))  # never raises: failures stop the heartbeat
        self._request(self.writer.write_cycle(decision))

    @rule(ms=st.sampled_from([50, 120, 150, 300, 1500]))
    def host_stalls(self, ms: int) -> None:
        """The host does nothing for a while: the device clock runs on."""
        self.world.bench(["clock", "step", str(ms)])

    @rule(action=st.sampled_from(BENCH_ACTIONS))
    def bench(self, action: list[str]) -> None:
        self.world.bench(action)

    @rule(n=st.integers(1, 8), after_apply=st.booleans())
    def link_fails(self, n: int, after_apply: bool) -> None:
        self.link.fail_next, self.link.fail_after_apply = n, after_apply

    @rule(press=st.booleans())
    def arm(self, press: bool) -> None:
        """The operator arms, and maybe steps on the footswitch afresh (one held at arming is ignored)."""
        was_latched = self.sup.latched is not None
        reason = self._request(self.writer.arm())
        if was_latched:
            assert reason is not None and "latched" in reason
        if press:
            self.world.bench(["footswitch", "release"])
            self.world.bench(["footswitch", "press"])

    @rule()
    def disarm(self) -> None:
        self._request(self.writer.disarm())

    @rule()
    def operator_ack(self) -> None:
        """The operator's reset: clear a device fault first (the only way to restart a stopped
        heartbeat), then ack; both refuse while their cause is present."""
        if self.world.ls4.fault_code is not LS4.FaultCode.NONE or self.writer.heartbeat_stopped:
            drive(self.writer.fault_reset())
        if self.sup.ack(self.world.time_s) is None and self.sup.latched is None:
            self.latched_at_s = None

    @precondition(lambda self: self.sup.latched is not None)
    @rule()
    def new_session(self) -> None:
        """Causes that only a new session clears (a budget spent, the books disagreeing)."""
        self._begin_session()

    # --- invariants ------------------------------------------------------------------------------------

    @invariant()
    def writes_within_limits_and_no_enable_after_a_trip(self) -> None:
        writes = self.link.writes
        for w, latched in zip(writes[self.checked_writes :], self.link.latched_at_write[self.checked_writes :]):
            if w.unit != LS4.UNIT_ID:
                continue
            if w.address == LS4.CYCLE_WRITE_ADDRESS:
                setpoints, enables = w.values[1:5], w.values[5:9]
                for c, s in enumerate(setpoints):
                    assert 0 <= s <= LIMITS.max_power_mw[c], f"channel {c} written {s} mW above {LIMITS.max_power_mw[c]}"
                if latched:
                    assert setpoints == (0,) * 4 and enables == (0,) * 4, f"written {w.values} while latched"
            if w.address == 0:
                assert not (latched and w.values[0] & Control.EMISSION_ENABLE), "EMISSION_ENABLE written after a trip"
            if w.address <= 15:
                assert w.from_writer
        self.checked_writes = len(writes)
        assert guarded_writes_not_from_the_writer(self.link) == []

    @invariant()
    def delivered_energy_within_budget_plus_one_cycle(self) -> None:
        delivered = [(e - b) / 1000.0 for e, b in zip(self.world.ls4.energy_mj, self.baseline_mj)]
        lim = self.sup.limits
        for c, (got, budget, max_mw) in enumerate(zip(delivered, lim.energy_budget_j, lim.max_power_mw)):
            one_cycle_j = max_mw / 1000.0 * CYCLE_S
            if budget is None:
                assert got <= NOISE_J, f"channel {c} not in the plan delivered {got:.3f} J"
            else:
                assert got <= budget + one_cycle_j + NOISE_J, f"channel {c} delivered {got:.3f} J of {budget} J"
        slack = sum(lim.max_power_mw) / 1000.0 * CYCLE_S
        assert sum(delivered) <= lim.session_energy_budget_j + slack + NOISE_J

    @invariant()
    def every_trip_reaches_the_journal(self) -> None:
        hard = [f for f in self.found if f.severity is Severity.HARD]
        journalled = [e for e in self.journal.events() if e.kind == "safety_trip"]
        assert [(e.details or {}).get("rule") for e in journalled] == [f.rule for f in hard]
        assert [e.message for e in journalled] == [f.message for f in hard]
        if self.sup.latched is not None:
            assert any(f is self.sup.latched for f in hard), "the latched cause was reported"

    @invariant()
    def emission_stops_within_the_watchdog_after_a_trip(self) -> None:
        if self.sup.latched is None or self.latched_at_s is None:
            return
        if self.world.time_s - self.latched_at_s >= LIMITS.watchdog_timeout_s + CYCLE_S:
            assert self.world.ls4.true_output_mw == [0.0] * 4, f"still emitting {self.world.truth()['ls4']}"
            assert self.world.ls4.state is not DeviceState.EMITTING


SafetyMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSafetyStateMachine = SafetyMachine.TestCase

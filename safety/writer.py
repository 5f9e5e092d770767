"""The only code in laserhost that writes the LS-4's CONTROL (0), COMMAND (1), WATCHDOG_TIMEOUT (2),
HEARTBEAT (3), POWER_SETPOINT (4-7), CH_ENABLE (8-11) and POWER_LIMIT (12-15).
`tests/test_safety_single_writer.py` proves it, statically and at run time.

The link is anything with the bus owner's three coroutines (`controller.modbus_link.BusLink`):
`read_input(unit=, address=, count=)`, `read_holding(...)`, `write_registers(unit=, address=, values=)`,
raising on any failure. The writer does not import the controller: every failure of the link is
an exception, and in the shutdown path every exception counts as "not confirmed".

The shutdown (Klipper's invoke_shutdown, idempotent): the map puts CONTROL at 0 and the setpoints
and enables at 4-11, with WATCHDOG_TIMEOUT at 2 in between, which answers 06 BUSY while ARMED; so
one atomic request is impossible. CONTROL goes first (EMISSION_ENABLE cleared: the LS-4 stops
emission within 10 ms), then 3-11 all zero, then both are read back with the device state. If
anything fails or disagrees, the heartbeat stops for good (until an operator fault_reset) so the
LS-4's own watchdog stops emission within WATCHDOG_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from protocol import ls4 as LS4
from protocol.ls4 import Control, DeviceState, LS4Holding, LS4Snapshot

from .rules import RULES
from .types import Decision, Finding

if TYPE_CHECKING:
    from .supervisor import SafetySupervisor

log = logging.getLogger("laserd.safety.writer")

N = LS4.CHANNEL_COUNT
HEARTBEAT_MODULUS = 0x10000
CONTROL_ADDRESS = LS4.REGISTER_MAP["CONTROL"].address  # 0
COMMAND_ADDRESS = LS4.REGISTER_MAP["COMMAND"].address  # 1
WATCHDOG_ADDRESS = LS4.REGISTER_MAP["WATCHDOG_TIMEOUT"].address  # 2
POWER_LIMIT_ADDRESS = LS4.REGISTER_MAP["POWER_LIMIT"].address  # 12
READBACK_COUNT = LS4.REGISTER_MAP["CH_ENABLE"].end  # holding 0-11: CONTROL .. CH_ENABLE[3]
SERVER_DEVICE_BUSY = 0x06
ZEROS = (0,) * N
OFF = (False,) * N


class WriterError(RuntimeError):
    """A writer sequence that the LS-4 did not confirm (one line)."""


class Link(Protocol):
    async def read_input(self, *, unit: int, address: int, count: int) -> list[int]: ...
    async def read_holding(self, *, unit: int, address: int, count: int) -> list[int]: ...
    async def write_registers(self, *, unit: int, address: int, values: list[int]) -> None: ...


class LS4Writer:
    """Construct with the supervisor whose latch governs it; without one it keeps its own latch,
    which nothing but a new writer clears (a fail-safe default for tools and tests)."""

    def __init__(self, link: Link, *, unit: int = LS4.UNIT_ID, supervisor: SafetySupervisor | None = None) -> None:
        self.link = link
        self.unit = unit
        self.supervisor = supervisor
        self._own_latch: Finding | None = None
        self._heartbeat = 0  # the last value written (or found on the device)
        self._power_limit_mw: tuple[int, ...] = (LS4.MAX_CHANNEL_POWER_MW,) * N
        self._expected = DeviceState.STANDBY
        self._aiming = False
        self._lock = asyncio.Lock()  # one multi-request sequence at a time (shutdown waits for an arm)
        self._shutdown_for: Finding | None = None  # the latch episode whose shutdown has been carried out
        self.heartbeat_stopped = False
        self.shutdown_confirmed: bool | None = None
        self.last_written: tuple[int, ...] | None = None  # the last 3-11 payload that was accepted
        if supervisor is not None:
            supervisor.add_ack_blocker(self._ack_blocker)

    def attach(self, supervisor: SafetySupervisor) -> None:
        """Follow this supervisor's latch from now on (e.g. a new one for a new plan). Refused while
        the writer's own or the current supervisor's latch is set: a latch is only cleared by an ack."""
        if self.latched is not None:
            raise WriterError(f"cannot attach a new supervisor while latched by {self.latched.rule}; ack first")
        self.supervisor = supervisor
        supervisor.add_ack_blocker(self._ack_blocker)

    # --- state ---------------------------------------------------------------------------------

    @property
    def latched(self) -> Finding | None:
        if self.supervisor is not None:
            return self.supervisor.latched
        return self._own_latch

    @property
    def expected_state(self) -> DeviceState:
        """The LS-4 state the host last asked for (feed to SafetySupervisor.check)."""
        return self._expected

    def _ack_blocker(self) -> str | None:
        if self.heartbeat_stopped:
            return "the heartbeat is stopped after an unconfirmed shutdown; a confirmed fault_reset must come first"
        return None

    def next_heartbeat(self) -> int:
        """Increment mod 65536: never the previous value, so every cycle write feeds the watchdog."""
        return (self._heartbeat + 1) % HEARTBEAT_MODULUS

    def _control(self, *, emission: bool) -> int:
        value = Control.HOST_CONTROL
        if emission:
            value |= Control.EMISSION_ENABLE
        if self._aiming:
            value |= Control.AIMING_BEAM
        return int(value)

    # --- raw access (the only write call sites for these addresses) ---------------------------------

    async def _write(self, address: int, values: Sequence[int]) -> None:
        await self.link.write_registers(unit=self.unit, address=address, values=list(values))

    async def _write_cycle_words(self, heartbeat: int, setpoints: Sequence[int], enables: Sequence[bool]) -> None:
        words = LS4.cycle_write_words(heartbeat, setpoints, enables)
        await self._write(LS4.CYCLE_WRITE_ADDRESS, words)
        self._heartbeat = heartbeat
        self.last_written = tuple(words)

    async def _read_holding(self) -> LS4Holding:
        words = await self.link.read_holding(unit=self.unit, address=LS4.HOLDING_FIRST, count=LS4.HOLDING_COUNT)
        return LS4Holding.from_words(words)

    async def _read_input(self) -> LS4Snapshot:
        words = await self.link.read_input(unit=self.unit, address=LS4.INPUT_FIRST, count=LS4.INPUT_COUNT)
        return LS4Snapshot.from_words(words)

    # --- session set-up ---------------------------------------------------------------------------

    async def apply_power_limits(self, max_power_mw: Sequence[int]) -> None:
        """POWER_LIMIT[c] = the plan's max power: the LS-4's own clamp then enforces it too.
        Call before arming (the LS-4 answers 06 BUSY for an emitting channel)."""
        limits = tuple(int(p) for p in max_power_mw)
        if len(limits) != N or not all(0 <= p <= LS4.MAX_CHANNEL_POWER_MW for p in limits):
            raise ValueError(f"power limits need {N} values within 0..{LS4.MAX_CHANNEL_POWER_MW} mW, got {list(max_power_mw)}")
        async with self._lock:
            await self._write(POWER_LIMIT_ADDRESS, limits)
            holding = await self._read_holding()
            if tuple(holding.power_limit_mw) != limits:
                raise WriterError(f"LS-4 POWER_LIMIT reads {list(holding.power_limit_mw)} after writing {list(limits)}")
            self._power_limit_mw = limits

    async def take_control(self, watchdog_timeout_ms: int) -> None:
        """Zero setpoints and enables, set WATCHDOG_TIMEOUT, then CONTROL = HOST_CONTROL; verify."""
        async with self._lock:
            holding = await self._read_holding()
            self._heartbeat = holding.heartbeat  # our first beat must differ from what the device holds
            await self._write_cycle_words(self.next_heartbeat(), ZEROS, OFF)
            try:
                await self._write(WATCHDOG_ADDRESS, [watchdog_timeout_ms])
            except Exception as err:
                # left ARMED by an earlier host: disarm first (keeping HOST_CONTROL, so no fault 8), then retry
                if getattr(err, "code", None) != SERVER_DEVICE_BUSY:
                    raise
                await self._write(CONTROL_ADDRESS, [self._control(emission=False)])
                await self._write(WATCHDOG_ADDRESS, [watchdog_timeout_ms])
            await self._write(CONTROL_ADDRESS, [self._control(emission=False)])
            self._expected = DeviceState.READY
            holding = await self._read_holding()
            problems = self._zero_problems(holding)
            if holding.watchdog_timeout_ms != watchdog_timeout_ms:
                problems.append(f"WATCHDOG_TIMEOUT {holding.watchdog_timeout_ms} ms, wanted {watchdog_timeout_ms}")
            if Control.HOST_CONTROL not in holding.control:
                problems.append("HOST_CONTROL not set")
            if problems:
                raise WriterError("take control not confirmed: " + "; ".join(problems))

    async def set_aiming_beam(self, on: bool) -> None:
        """The visible aiming beam (AIMING_BEAM bit); kept in every later CONTROL write."""
        async with self._lock:
            self._aiming = bool(on)
            if self._expected is not DeviceState.STANDBY:
                # re-writing CONTROL must never re-assert EMISSION_ENABLE after a trip
                armed = self._expected is DeviceState.ARMED and self.latched is None
                await self._write(CONTROL_ADDRESS, [self._control(emission=armed)])

    async def arm(self) -> str | None:
        """CONTROL = HOST_CONTROL | EMISSION_ENABLE. None: armed, confirmed by reading CONTROL back.
        Else one line: refused while latched, or the LS-4 cleared the bit (a condition is missing)."""
        async with self._lock:
            if (cause := self.latched) is not None:
                return f"arm refused: safety latched by {cause.rule}: {cause.message}; ack first"
            if self.heartbeat_stopped:
                return "arm refused: heartbeat stopped after an unconfirmed shutdown; fault_reset first"
            if self._expected is DeviceState.STANDBY:
                return "arm refused: the host does not hold control; take_control first"
            await self._write(CONTROL_ADDRESS, [self._control(emission=True)])
            if self.latched is not None:  # a trip while the write was on the bus: undo at once
                await self._write(CONTROL_ADDRESS, [self._control(emission=False)])
                return "arm refused: safety latched while arming"
            holding = await self._read_holding()
            if Control.EMISSION_ENABLE in holding.control:
                self._expected = DeviceState.ARMED
                return None
            snap = await self._read_input()
            return f"arm refused by the LS-4: EMISSION_ENABLE cleared ({_why_not_armed(snap)})"

    async def disarm(self) -> None:
        """CONTROL = HOST_CONTROL: EMISSION_ENABLE cleared, READY (emission stops within 10 ms)."""
        async with self._lock:
            await self._write(CONTROL_ADDRESS, [self._control(emission=False)])
            self._expected = DeviceState.READY

    async def release_control(self) -> None:
        """Disarm, zero setpoints and enables, then CONTROL = 0 (STANDBY). Clearing HOST_CONTROL
        while ARMED would be fault 8, hence the disarm first."""
        async with self._lock:
            await self._write(CONTROL_ADDRESS, [self._control(emission=False)])
            self._expected = DeviceState.READY
            await self._write_cycle_words(self.next_heartbeat(), ZEROS, OFF)
            await self._write(CONTROL_ADDRESS, [0])
            self._expected = DeviceState.STANDBY

    # --- every cycle ---------------------------------------------------------------------------------

    async def write_cycle(self, decision: Decision, *, heartbeat: int | None = None) -> tuple[int, ...] | None:
        """The one function-16 write of holding 3-11. Zeros whenever latched, whatever the decision
        says; nothing at all once the heartbeat is stopped. Returns the words written, or None."""
        async with self._lock:
            if self.heartbeat_stopped:
                return None
            if heartbeat is None:
                heartbeat = self.next_heartbeat()
            elif not 0 <= heartbeat < HEARTBEAT_MODULUS or heartbeat == self._heartbeat:
                raise ValueError(f"heartbeat {heartbeat} must be 0..65535 and differ from the previous {self._heartbeat}")
            if self.latched is not None:
                setpoints, enables = ZEROS, OFF
            else:
                problem = self._decision_problem(decision)
                if problem is not None:
                    setpoints, enables = ZEROS, OFF
                    finding = RULES["writer_refused_decision"].finding(why=problem)
                    self._latch(finding)
                else:
                    setpoints = tuple(int(s) for s in decision.setpoint_mw)
                    enables = tuple(bool(e) and s > 0 for s, e in zip(setpoints, decision.enable))
            await self._write_cycle_words(heartbeat, setpoints, enables)
            return self.last_written

    def _decision_problem(self, decision: Decision) -> str | None:
        if len(decision.setpoint_mw) != N or len(decision.enable) != N:
            return f"needs {N} setpoints and enables"
        for c, (s, limit) in enumerate(zip(decision.setpoint_mw, self._power_limit_mw)):
            if not 0 <= int(s) <= limit:
                return f"channel {c} setpoint {s} mW outside 0..{limit} mW"
        return None

    # --- the shutdown -----------------------------------------------------------------------------------

    def _latch(self, finding: Finding) -> None:
        if self.supervisor is not None:
            self.supervisor.trip(finding)
        elif self._own_latch is None:
            self._own_latch = finding

    async def shutdown(self, finding: Finding) -> bool:
        """Latch `finding` (the first cause is kept) and stop emission; True if the LS-4 confirmed.

        Idempotent: once carried out for a latch, later calls return the same answer without
        touching the bus. The zeroing write repeats the last heartbeat value, so the shutdown
        itself never feeds the watchdog: if it is not confirmed, nothing else will either."""
        async with self._lock:
            if self.latched is None:
                self._latch(finding)
            if self._shutdown_for is not None and self._shutdown_for is self.latched:
                return bool(self.shutdown_confirmed)
            self._shutdown_for = self.latched
            self._aiming = False
            problems: list[str] = []
            holds_control = self._expected is not DeviceState.STANDBY
            control = self._control(emission=False) if holds_control else 0
            steps: list[tuple[str, Any]] = [
                ("clear EMISSION_ENABLE", lambda: self._write(CONTROL_ADDRESS, [control])),
                ("zero setpoints and enables", lambda: self._write_cycle_words(self._heartbeat, ZEROS, OFF)),
            ]
            for what, step in steps:
                try:
                    await step()
                except Exception as err:  # noqa: BLE001 - every failure here means "not confirmed"
                    problems.append(f"{what}: {err}")
            if holds_control:
                self._expected = DeviceState.READY
            try:
                holding, snap = await self._read_holding(), await self._read_input()
                problems.extend(self._zero_problems(holding))
                if snap.device_state in (DeviceState.ARMED, DeviceState.EMITTING):
                    problems.append(f"LS-4 still {snap.device_state.name}")
            except Exception as err:  # noqa: BLE001
                problems.append(f"read-back: {err}")
            self.shutdown_confirmed = not problems
            if problems:
                self.heartbeat_stopped = True
                why = "; ".join(problems)
                log.error("event=shutdown-unconfirmed why=%s", why)
                unconfirmed = RULES["shutdown_unconfirmed"].finding(why=why)
                if self.supervisor is not None:
                    self.supervisor.trip(unconfirmed)  # reported; the first cause stays latched
            return self.shutdown_confirmed

    def _zero_problems(self, holding: LS4Holding) -> list[str]:
        problems = []
        if Control.EMISSION_ENABLE in holding.control:
            problems.append("EMISSION_ENABLE still set")
        if any(holding.power_setpoint_mw):
            problems.append(f"POWER_SETPOINT reads {list(holding.power_setpoint_mw)}")
        if any(holding.ch_enable):
            problems.append(f"CH_ENABLE reads {list(holding.ch_enable)}")
        return problems

    async def fault_reset(self) -> str | None:
        """Operator recovery: zeros with a fresh heartbeat, COMMAND = FAULT_RESET, then verify.

        The only way to restart a stopped heartbeat. None: the LS-4 is out of FAULT with everything
        zero; else one line (the LS-4 answers 06 BUSY while the fault's cause is present)."""
        async with self._lock:
            try:
                await self._write_cycle_words(self.next_heartbeat(), ZEROS, OFF)
                await self._write(COMMAND_ADDRESS, [int(LS4.Command.FAULT_RESET)])
            except Exception as err:  # noqa: BLE001 - reported to the operator, nothing changes
                return f"fault reset refused: {err}"
            try:
                holding, snap = await self._read_holding(), await self._read_input()
            except Exception as err:  # noqa: BLE001
                return f"fault reset not confirmed: read-back: {err}"
            problems = self._zero_problems(holding)
            if snap.device_state is DeviceState.FAULT:
                problems.append(f"LS-4 still in FAULT {snap.fault_code.name}")
            if problems:
                return "fault reset not confirmed: " + "; ".join(problems)
            self.heartbeat_stopped = False
            self._expected = DeviceState.READY if Control.HOST_CONTROL in holding.control else DeviceState.STANDBY
            return None


def _why_not_armed(snap: LS4Snapshot) -> str:
    reasons = []
    if LS4.Interlocks.KEY_ON not in snap.interlocks:
        reasons.append("key off")
    if LS4.Interlocks.ESTOP_PRESSED in snap.interlocks:
        reasons.append("e-stop pressed")
    if LS4.Interlocks.REMOTE_INTERLOCK_OPEN in snap.interlocks:
        reasons.append("remote interlock open")
    if snap.fault_code is not LS4.FaultCode.NONE:
        reasons.append(f"fault {snap.fault_code.name}")
    return ", ".join(reasons) or "no reason reported"

"""laserd: the asyncio service that owns the LS-4 and the FT-8.

Start-up: config -> journal -> buses -> identity of both devices -> crash recovery -> host
control -> operator socket -> READY=1 -> control cycle. SIGTERM: STOPPING=1, emission off,
host control released, the open session ended, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from protocol import ft8 as FT8
from protocol import ls4 as LS4
from protocol.ft8 import FT8Snapshot
from protocol.ls4 import DeviceState, LS4Snapshot
from safety.supervisor import SafetySupervisor
from safety.limits import LimitsError
from safety.rules import RULES
from safety.types import SAFE_OUTPUT, Finding, Proposal, Severity
from safety.writer import LS4Writer, WriterError

from .config import DaemonConfig, RtuBus, load_config
from .cycle_stats import CycleStats
from .devices import FT8_SPEC, LS4_SPEC, DeviceIdentity, DeviceMismatch, check_device
from .journal import Journal, JournalError
from .logfmt import setup_logging
from .modbus_link import BusLink, LinkError, LinkSettings, Transport
from .operator import CommandError, OperatorServer
from . import report_data
from .plan import load_plan
from .safety_limits import idle_limits, plan_limits
from .sdnotify import Notifier
from .session import SessionError, TreatmentSession, check_modes_available
from .session_states import Event, State, TransitionError
from .settings import SettingsError
from .telemetry import ObservedSession, TelemetryFeed
from .timebase import Timebase
from .version import describe as describe_software
from .version import software_version

log = logging.getLogger("laserd")

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_DEVICE = 3
EXIT_JOURNAL = 4
CONNECT_RETRY_S = 1.0  # wall time between attempts to reach the devices at start-up
HEALTHY_CYCLES = 3  # systemd's watchdog is fed only if a cycle completed within this many periods


def link_settings(bus: Any) -> LinkSettings:
    if isinstance(bus, RtuBus):
        return LinkSettings(
            name=bus.name,
            transport=Transport.RTU,
            device=str(bus.device),
            baudrate=bus.baudrate,
            parity=bus.parity,
            stopbits=bus.stopbits,
            bytesize=bus.bytesize,
            request_timeout_s=bus.request_timeout_ms / 1000.0,
            reconnect_after_failures=bus.reconnect_after_failures,
        )
    return LinkSettings(
        name=bus.name,
        transport=Transport.TCP,
        host=bus.host,
        port=bus.port,
        request_timeout_s=bus.request_timeout_ms / 1000.0,
        reconnect_after_failures=bus.reconnect_after_failures,
    )


class Daemon:
    def __init__(self, config: DaemonConfig, *, time_scale: float = 1.0) -> None:
        self.config = config
        self.timebase = Timebase(time_scale=time_scale)
        self.notifier = Notifier()
        self.period_s = config.control_period_ms / 1000.0
        self.stats = CycleStats(period_s=self.period_s)
        self.links: dict[str, BusLink] = {}
        self.journal: Journal | None = None
        self.writer: LS4Writer | None = None
        # one supervisor for the daemon's life: its latch and energy books must never be replaced
        self.supervisor = SafetySupervisor(limits=idle_limits(config), on_finding=self._on_finding)
        self.session: TreatmentSession | None = None
        self.identities: dict[str, DeviceIdentity] = {}
        self.last_ls4: LS4Snapshot | None = None
        self.last_ft8: FT8Snapshot | None = None
        self.last_decision = SAFE_OUTPUT
        self.state = "starting"
        self.software = software_version()  # journaled with every session (event session_context)
        self._stop = asyncio.Event()
        self._operator: OperatorServer | None = None
        self._write_failed = False
        self._cycles_done = asyncio.Condition()
        self._cycle_count = 0
        # MQTT telemetry (docs/telemetry.md): None unless [mqtt] is enabled. Outbound only; fed by
        # synchronous calls that never wait on the broker.
        self.telemetry = TelemetryFeed.from_config(config.mqtt, time_scale=time_scale, on_stop_command=self._mqtt_stop, on_journal=self._journal_mqtt)

    # --- the devices ---------------------------------------------------------------------------

    @property
    def ls4_link(self) -> BusLink:
        return self.links[self.config.ls4.bus]

    @property
    def ft8_link(self) -> BusLink:
        return self.links[self.config.ft8.bus]

    async def _read_ls4(self) -> LS4Snapshot | None:
        try:
            words = await self.ls4_link.read_input(unit=self.config.ls4.unit_id, address=LS4.INPUT_FIRST, count=LS4.INPUT_COUNT)
            return LS4Snapshot.from_words(words)
        except (LinkError, ValueError) as err:
            log.warning("event=read-failed device=LS-4 error=%s", err)
            return None

    async def _read_ft8(self) -> FT8Snapshot | None:
        try:
            words = await self.ft8_link.read_input(unit=self.config.ft8.unit_id, address=FT8.INPUT_FIRST, count=FT8.INPUT_COUNT)
            return FT8Snapshot.from_words(words)
        except (LinkError, ValueError) as err:
            log.warning("event=read-failed device=FT-8 error=%s", err)
            return None

    async def _connect_devices(self) -> None:
        """Until both devices answer and check out; a device we do not know is fatal."""
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            try:
                self.identities["ls4"] = await check_device(self.ls4_link, unit=self.config.ls4.unit_id, spec=LS4_SPEC)
                self.identities["ft8"] = await check_device(self.ft8_link, unit=self.config.ft8.unit_id, spec=FT8_SPEC)
                return
            except LinkError as err:
                if attempt == 1 or attempt % 10 == 0:
                    log.warning("event=devices-unreachable attempt=%d error=%s", attempt, err)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=CONNECT_RETRY_S)

    # --- run -----------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        try:
            self.journal = Journal(self.config.journal_path)
        except JournalError as err:
            log.error("event=journal-unusable error=%s", err)
            print(f"laserd: {err}", file=sys.stderr)
            return EXIT_JOURNAL
        for bus in self.config.buses:
            if bus.name in (self.config.ls4.bus, self.config.ft8.bus):
                self.links[bus.name] = BusLink(link_settings(bus))
                await self.links[bus.name].start()
        try:
            if self.telemetry is not None:
                await self.telemetry.start()
            return await self._run_connected()
        finally:
            if self.telemetry is not None:
                await self.telemetry.stop()  # after the session's last event; bounded: never holds up the stop
            for link in self.links.values():
                await link.stop()
            self.journal.close()

    async def _run_connected(self) -> int:
        assert self.journal is not None
        self.notifier.notify("STATUS=connecting to the LS-4 and the FT-8")
        try:
            await self._connect_devices()
        except DeviceMismatch as err:
            log.error("event=device-refused error=%s", err)
            self.journal.record_event("device_refused", str(err))
            print(f"laserd: {err}", file=sys.stderr)
            return EXIT_DEVICE
        if self._stop.is_set():
            return EXIT_OK
        for name, ident in self.identities.items():
            self.journal.record_event(
                "device_identified",
                f"{ident.product_code} firmware {ident.firmware} map {ident.map_version} on unit {ident.unit}",
                details={"device": name, "vendor": ident.vendor_name, "revision": ident.revision},
            )
        ls4 = await self._read_ls4()
        if ls4 is not None:
            self._recover(ls4)
        self.writer = LS4Writer(self.ls4_link, unit=self.config.ls4.unit_id, supervisor=self.supervisor)
        try:
            await self.writer.take_control(self.config.ls4.watchdog_timeout_ms)
        except (LinkError, WriterError) as err:
            log.error("event=take-control-failed error=%s", err)
            self.journal.record_event("take_control_failed", str(err))
            print(f"laserd: cannot take control of the LS-4: {err}", file=sys.stderr)
            return EXIT_DEVICE
        await self._configure_ft8()
        cycle = asyncio.create_task(self._cycle_loop(), name="control-cycle")
        await self._wait_cycles(1)  # the operator sees the daemon only once it has read the devices
        self._operator = OperatorServer(path=self.config.socket.path, handler=self.handle, mode=self.config.socket.mode, group=self.config.socket.group)
        await self._operator.start()
        self.state = "running"
        self.journal.record_event("daemon_started", f"laserd running, control period {self.config.control_period_ms} ms, time scale {self.timebase.time_scale:g}")
        self.notifier.notify("READY=1", "STATUS=devices identified; control cycle running")
        log.info("event=ready socket=%s period_ms=%d time_scale=%g", self.config.socket.path, self.config.control_period_ms, self.timebase.time_scale)
        keepalive = asyncio.create_task(self._systemd_watchdog(), name="systemd-watchdog")
        stop_wait = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait({cycle, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if cycle in done and cycle.exception() is not None:
            log.error("event=cycle-crashed error=%r", cycle.exception())
        self.state = "stopping"
        self.notifier.notify("STOPPING=1", "STATUS=stopping: emission off, releasing the laser")
        for task in (cycle, keepalive, stop_wait):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._safe_stop()
        return EXIT_OK

    def request_stop(self, why: str = "stop") -> None:
        log.info("event=stop-requested signal=%s", why)
        self._stop.set()

    async def _safe_stop(self) -> None:
        """Emission off and host control released; an open session ends ABORTED."""
        assert self.journal is not None
        if self._operator is not None:
            await self._operator.stop()
        if self.writer is not None:
            try:
                await self.writer.release_control()
            except LinkError as err:
                log.error("event=release-failed error=%s (the LS-4 watchdog stops emission by itself)", err)
        self._session_ends(Event.ABORT, "laserd stopped (SIGTERM): emission off, host control released")
        self.journal.record_event("daemon_stopped", "laserd stopped cleanly")

    def _recover(self, ls4: LS4Snapshot) -> None:
        assert self.journal is not None
        for rec in self.journal.recover([e / 1000.0 for e in ls4.energy_mj]):
            log.warning(
                "event=session-interrupted session=%d was=%s delivered_j=%s journal_j=%s counters_j=%s",
                rec.session_id, rec.state_before, rec.delivered_energy_j, rec.journal_energy_j, rec.counter_energy_j,
            )

    async def _configure_ft8(self) -> None:
        """FT-8 SAMPLE_PERIOD from the config (not a safety register: it is the thermometer's)."""
        try:
            await self.ft8_link.write_registers(unit=self.config.ft8.unit_id, address=FT8.REGISTER_MAP["SAMPLE_PERIOD"].address, values=[self.config.ft8.sample_period_ms])
        except LinkError as err:
            log.warning("event=ft8-config-failed error=%s", err)

    # --- the control cycle ---------------------------------------------------------------------

    async def _cycle_loop(self) -> None:
        tb = self.timebase
        next_start = tb.now_s()
        while True:
            started = tb.now_s()
            late_s = max(0.0, started - next_start)
            t_wall = time.perf_counter()
            try:
                await self._one_cycle(now_s=started, late_s=late_s)
            except Exception as err:  # noqa: BLE001 - a bug must stop the laser, not the daemon's watch over it
                log.exception("event=cycle-error")
                self.supervisor.trip(RULES["host_error"].finding(time_s=started, why=f"{type(err).__name__}: {err}"))
                with contextlib.suppress(Exception):
                    await self.writer.shutdown(self.supervisor.latched)  # type: ignore[arg-type, union-attr]
            ended = tb.now_s()
            next_start += self.period_s
            missed = ended > next_start
            if missed:
                next_start = ended  # do not burst to catch up: one cycle a period, from now
            self.stats.record(started_late_ms=late_s * 1000.0, took_wall_ms=(time.perf_counter() - t_wall) * 1000.0, ended_s=ended, missed=missed)
            await tb.sleep_until(next_start)

    async def _one_cycle(self, *, now_s: float, late_s: float) -> None:
        assert self.writer is not None
        ls4 = await self._read_ls4()
        ft8 = await self._read_ft8()
        self.last_ls4 = ls4 or self.last_ls4
        self.last_ft8 = ft8 or self.last_ft8
        proposal = self.session.propose(ls4, ft8, now_s=now_s) if self.session is not None and self.session.open else Proposal()
        decision = self.supervisor.check(
            now_s=now_s,
            ls4=ls4,
            ft8=ft8,
            proposal=proposal,
            expected_state=self.writer.expected_state,
            # the previous write failed: the LS-4 may still hold what was written before it
            link_ok=ls4 is not None and ft8 is not None and not self._write_failed,
            cycle_overrun_s=late_s,
        )
        self.last_decision = decision
        latched = self.supervisor.latched
        try:
            if latched is not None:
                await self.writer.shutdown(latched)  # once per latch; later calls return at once
                self._session_ends(Event.FAULT, f"safety trip: {latched.message}", details={"rule": latched.rule, "channel": latched.channel})
            await self.writer.write_cycle(decision)  # zeros while latched, nothing if the heartbeat is stopped
            self._write_failed = False
        except LinkError as err:
            self._write_failed = True
            log.warning("event=cycle-write-failed error=%s", err)
        if self.session is not None and self.session.open:
            event = self.session.observe(now_s=now_s, ls4=ls4, ft8=ft8, setpoint_mw=decision.setpoint_mw)
            if event is not None:
                await self._end_illumination(event)
        if self.telemetry is not None:
            self.telemetry.cycle(
                now_s=now_s, daemon_state=self.state, ls4=ls4, ft8=ft8, setpoint_mw=decision.setpoint_mw,
                session=self.session, trip=self.supervisor.latched, stats=self.stats, links=self.links,
            )
        async with self._cycles_done:
            self._cycle_count += 1
            self._cycles_done.notify_all()

    async def _wait_cycles(self, count: int) -> None:
        """Until `count` more control cycles have completed (fresh readings judged)."""
        async with self._cycles_done:
            target = self._cycle_count + count
            await self._cycles_done.wait_for(lambda: self._cycle_count >= target)

    def _session_ends(self, event: Event, reason: str, *, details: dict[str, Any] | None = None) -> None:
        """End the open session (if any) and hold every channel off until the next plan."""
        if self.session is not None and self.session.open:
            self.session.apply(event, reason, details=details)
        if self.supervisor.in_session and (self.session is None or not self.session.open):
            self.supervisor.end_session(limits=idle_limits(self.config))

    async def _end_illumination(self, event: Event) -> None:
        assert self.writer is not None and self.session is not None
        await self.writer.disarm()
        if event is Event.ENDPOINT_REACHED:
            self._session_ends(event, "endpoint reached")
        else:
            self.session.apply(event, f"illumination {self.session.illumination + 1} of {self.session.plan.illuminations} done: pull the fibres back, then confirm")

    def _on_finding(self, finding: Finding) -> None:
        session_id = self.session.session_id if self.session is not None and self.session.open else None
        level = logging.ERROR if finding.severity is Severity.HARD else logging.WARNING
        log.log(level, "event=safety rule=%s severity=%s channel=%s message=%s", finding.rule, finding.severity.value, finding.channel, finding.message)
        if self.journal is not None:
            self.journal.record_event(
                "safety_trip" if finding.severity is Severity.HARD else "safety_soft",
                finding.message,
                session_id=session_id,
                details={"rule": finding.rule, "channel": finding.channel, "value": finding.value, "limit": finding.limit},
            )
        if self.telemetry is not None:
            self.telemetry.finding(finding, session_id=session_id)

    async def _systemd_watchdog(self) -> None:
        if self.notifier.watchdog_s is None:
            return
        while True:
            await asyncio.sleep(self.notifier.watchdog_s / 2.0)
            if self.healthy():
                self.notifier.notify("WATCHDOG=1")

    def healthy(self) -> bool:
        last = self.stats.last_cycle_end_s
        recent = last is not None and self.timebase.now_s() - last <= HEALTHY_CYCLES * self.period_s
        return recent and all(link.up for link in self.links.values())

    # --- operator commands -------------------------------------------------------------------

    async def handle(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        handler = getattr(self, f"_cmd_{cmd}", None)
        if handler is None:
            raise CommandError(f"unknown command {cmd!r}; commands: status, load, arm, disarm, stop, ack, pullback, tune, sessions, session, report")
        try:
            return await handler(**args)
        except TypeError as err:
            raise CommandError(f"{cmd}: bad arguments ({err})") from None
        except (SessionError, TransitionError, SettingsError) as err:
            raise CommandError(str(err)) from None

    def _open_session(self) -> TreatmentSession:
        if self.session is None or not self.session.open:
            raise CommandError("no open session: load a plan first")
        return self.session

    async def _cmd_status(self) -> dict[str, Any]:
        ls4, ft8 = self.last_ls4, self.last_ft8
        session = self.session
        summary = session.summary() if session is not None else None
        budgets = summary["budgets_j"] if summary is not None else [None] * LS4.CHANNEL_COUNT
        energy = summary["illumination_energy_j"] if summary is not None else None
        return {
            "daemon_state": self.state,
            "time_scale": self.timebase.time_scale,
            "session_state": str(session.state) if session is not None else str(State.IDLE),
            "session_id": session.session_id if session is not None else None,
            "session": summary,
            "trip": None if self.supervisor.latched is None else self.supervisor.latched.message,
            "devices": {k: {"product": v.product_code, "firmware": v.firmware, "map_version": v.map_version, "unit": v.unit} for k, v in self.identities.items()},
            "ls4": None
            if ls4 is None
            else {
                "device_state": ls4.device_state.name,
                "fault_code": ls4.fault_code.name,
                "interlocks": "|".join(f.name for f in LS4.Interlocks if f in ls4.interlocks) or "none",
                "channels": [
                    {
                        "setpoint_mw": self.last_decision.setpoint_mw[c],
                        "output_mw": ls4.output_power_mw[c],
                        "energy_j": round(energy[c], 2) if energy is not None else round(ls4.energy_mj[c] / 1000.0, 2),
                        "budget_j": budgets[c],
                    }
                    for c in range(LS4.CHANNEL_COUNT)
                ],
            },
            "ft8": None if ft8 is None else {"sample_counter": ft8.sample_counter, "temperature_c": list(ft8.temperature_c)},
            "cycle": self.stats.as_dict(),
            "links": {name: {"up": link.up, "counters": link.counters.as_dict()} for name, link in self.links.items()},
            "mqtt": self.telemetry.status() if self.telemetry is not None else {"enabled": False},
            "control": session.tune_status() if session is not None and session.open else None,
        }

    async def _cmd_load(self, plan_text: str, plan_path: str | None = None) -> dict[str, Any]:
        assert self.journal is not None
        if self.session is not None and self.session.open:
            raise CommandError(f"session {self.session.session_id} is still open ({self.session.state}): stop it first")
        if self.supervisor.latched is not None:
            raise CommandError(f"safety trip latched ({self.supervisor.latched.message}): ack it first")
        if self.last_ls4 is None:
            raise CommandError("no reading from the LS-4 yet: cannot count energy from a known baseline")
        if not isinstance(plan_text, str):
            raise CommandError("load: plan_text must be the plan's TOML text")
        plan = load_plan(plan_text, limits=self.config.limits)
        check_modes_available(plan)
        self._check_plan_probes(plan)
        try:
            limits = plan_limits(self.config, plan)
        except LimitsError as err:
            raise CommandError(str(err)) from None
        baseline = tuple(e / 1000.0 for e in self.last_ls4.energy_mj)
        session_id = self.journal.create_session(plan, energy_baseline_j=baseline)
        self._journal_context(session_id)
        self.session = ObservedSession(session_id=session_id, plan=plan, journal=self.journal, safety=self.supervisor, on_change=self._session_changed)
        self.supervisor.begin_session(ls4=self.last_ls4, limits=limits, now_s=self.timebase.now_s())
        self._session_changed(self.session, State.IDLE, Event.LOAD, "plan loaded")  # after begin_session: fresh books
        assert self.writer is not None
        await self.writer.apply_power_limits(limits.max_power_mw)
        return {"message": f"session {session_id} loaded from {plan_path or 'plan text'} (sha256 {plan.sha256[:12]}): arm when ready", "session_id": session_id}

    def _journal_context(self, session_id: int) -> None:
        """What the session runs under, on its own record: software, devices, time scale, site limits."""
        assert self.journal is not None
        devices = {
            name: {
                "vendor": i.vendor_name, "product": i.product_code, "revision": i.revision,
                "firmware": i.firmware, "firmware_version": i.firmware_version, "map_version": i.map_version, "unit": i.unit,
            }
            for name, i in self.identities.items()
        }
        text = "; ".join([describe_software(self.software)] + [f"{d['product']} firmware {d['firmware']} map {d['map_version']} unit {d['unit']}" for d in devices.values()])
        details = {
            "software": self.software,
            "devices": devices,
            "time_scale": self.timebase.time_scale,
            "control_period_ms": self.config.control_period_ms,
            "limits": asdict(self.config.limits),
        }
        try:
            self.journal.record_event(report_data.CONTEXT_KIND, text, session_id=session_id, details=details)
        except JournalError as err:  # the session is already recorded: it must not be left half-loaded
            log.error("event=journal-write-failed kind=%s error=%s", report_data.CONTEXT_KIND, err)

    def _check_plan_probes(self, plan: Any) -> None:
        """Refuse a plan whose probes do not read now: the safety layer would trip at once anyway."""
        ft8 = self.last_ft8
        if ft8 is None:
            raise CommandError("no reading from the FT-8 yet: cannot check the plan's probes")
        bad = [p.channel for p in plan.probes if ft8.temperature_c[p.channel] is None]
        if bad:
            raise CommandError(f"plan: probe channel(s) {', '.join(map(str, bad))} have no valid FT-8 reading (disconnected, no signal or out of range)")

    async def _cmd_arm(self) -> dict[str, Any]:
        assert self.writer is not None
        session = self._open_session()
        if session.state is not State.LOADED:
            raise CommandError(f"arm needs a LOADED session; session {session.session_id} is {session.state}")
        refusal = await self.writer.arm()
        if refusal:
            raise CommandError(refusal)
        session.apply(Event.ARM, "operator armed: emission may start from the footswitch")
        return {"message": f"session {session.session_id} armed: press the footswitch to emit"}

    async def _cmd_disarm(self) -> dict[str, Any]:
        assert self.writer is not None
        session = self._open_session()
        if session.state is not State.ARMED:
            raise CommandError(f"disarm needs an ARMED session (use stop while emitting); session is {session.state}")
        await self.writer.disarm()
        session.apply(Event.DISARM, "operator disarmed")
        return {"message": f"session {session.session_id} disarmed"}

    async def _cmd_stop(self) -> dict[str, Any]:
        assert self.writer is not None
        await self.writer.disarm()
        await self.writer.write_cycle(SAFE_OUTPUT)
        if self.session is not None and self.session.open:
            self._session_ends(Event.ABORT, "operator stop")
            return {"message": f"emission stopped; session {self.session.session_id} ABORTED"}
        return {"message": "emission stopped (no open session)"}

    async def _cmd_ack(self) -> dict[str, Any]:
        assert self.journal is not None and self.writer is not None
        latched = self.supervisor.latched
        ls4 = self.last_ls4
        device_faulted = ls4 is not None and ls4.device_state is DeviceState.FAULT
        if latched is None and not device_faulted:
            return {"message": "nothing to acknowledge"}
        if device_faulted or self.writer.heartbeat_stopped:
            refusal = await self.writer.fault_reset()
            if refusal:
                raise CommandError(refusal)
            await self._wait_cycles(2)  # judge the cause on readings taken after the reset
        if latched is None:
            self.journal.record_event("ls4_fault_reset", "operator reset the LS-4 fault")
            self._telemetry_ack("operator reset the LS-4 fault", what="ls4_fault", rule=None)
            return {"message": "LS-4 fault reset"}
        refusal = self.supervisor.ack(self.timebase.now_s())
        if refusal:
            raise CommandError(refusal)
        self.journal.record_event("safety_ack", f"operator acknowledged: {latched.message}", details={"rule": latched.rule})
        self._telemetry_ack(f"operator acknowledged: {latched.message}", what="trip", rule=latched.rule)
        return {"message": f"acknowledged: {latched.message}"}

    async def _cmd_tune(self, power_w: float | None = None, wait: bool = False) -> dict[str, Any]:
        """`laserctl tune`: the open session's identification run (auto-tune). It proceeds while the
        footswitch is pressed; the fitted model is then journaled (event tune_model) and used."""
        session = self._open_session()
        message = session.start_tune(power_w=power_w)
        if not wait:
            return {"message": message, "control": session.tune_status()}
        while session.open and session.tune_running:
            await self._wait_cycles(10)
        status = session.tune_status()
        if status["error"]:
            raise CommandError(f"tune failed: {status['error']}")
        if status["result"] is None:
            raise CommandError(f"tune did not finish: session {session.session_id} is {session.state}")
        return {"message": status["result"], "control": status}

    async def _cmd_pullback(self) -> dict[str, Any]:
        assert self.writer is not None
        session = self._open_session()
        if session.state is not State.PULLBACK or self.last_ls4 is None:
            raise CommandError(f"pullback confirms the fibre pull-back between illuminations; session is {session.state}")
        refusal = await self.writer.arm()
        if refusal:
            raise CommandError(refusal)
        session.illumination += 1
        self.supervisor.begin_illumination(ls4=self.last_ls4)
        session.apply(Event.PULLBACK_CONFIRMED, f"operator confirmed pull-back: illumination {session.illumination + 1} of {session.plan.illuminations} armed")
        return {"message": f"illumination {session.illumination + 1} armed: press the footswitch to emit"}

    async def _cmd_sessions(self) -> dict[str, Any]:
        assert self.journal is not None
        return {
            "sessions": [
                {"id": s.id, "state": str(s.state), "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.created_wall)), "delivered_energy_j": [round(e, 1) for e in s.delivered_energy_j], "patient_id": s.patient_id}
                for s in self.journal.sessions()
            ]
        }

    async def _cmd_session(self, id: int) -> dict[str, Any]:  # noqa: A002 - the protocol's field name
        assert self.journal is not None
        try:
            detail = self.journal.session(int(id))
        except LookupError:
            raise CommandError(f"no session {id}") from None
        s = detail.session
        return {
            "id": s.id,
            "state": str(s.state),
            "plan_sha256": s.plan_sha256,
            "patient_id": s.patient_id,
            "delivered_energy_j": list(s.delivered_energy_j),
            "interrupted": s.interrupted,
            "end_reason": s.end_reason,
            "sample_count": detail.sample_count,
            "events": [{"t_wall": e.t_wall, "kind": e.kind, "from": e.state_from and str(e.state_from), "to": e.state_to and str(e.state_to), "message": e.message} for e in detail.events],
        }

    async def _cmd_report(self, id: int, part: str = "session", offset: int = 0) -> dict[str, Any]:  # noqa: A002
        """`laserctl report`: one page of a session's record (controller/report_data.py)."""
        assert self.journal is not None
        try:
            return report_data.read(self.journal, id, part, offset)
        except (LookupError, report_data.ReportDataError) as err:
            raise CommandError(str(err)) from None

    # --- MQTT telemetry wiring (controller/telemetry.py, docs/telemetry.md) ---------------------

    def _session_changed(self, session: TreatmentSession, before: State, event: Event, reason: str) -> None:
        if self.telemetry is not None:
            self.telemetry.session_changed(session, before=before, event=event, reason=reason)

    def _telemetry_ack(self, message: str, *, what: str, rule: str | None) -> None:
        if self.telemetry is not None:
            session_id = self.session.session_id if self.session is not None and self.session.open else None
            self.telemetry.ack(message, what=what, rule=rule, session_id=session_id)

    async def _mqtt_stop(self) -> str:
        """The command topic's only command runs the operator's stop, which is always safe."""
        if self.writer is None or self.state != "running":
            return f"nothing to stop: laserd is {self.state}"
        session_id = self.session.session_id if self.session is not None and self.session.open else None
        self._journal_mqtt("mqtt_command", "stop requested over MQTT", {"command": "stop"}, session_id=session_id)
        return (await self._cmd_stop())["message"]

    def _journal_mqtt(self, kind: str, message: str, details: dict[str, Any], *, session_id: int | None = None) -> None:
        if self.journal is None:
            return
        try:
            self.journal.record_event(kind, message, session_id=session_id, details=details)
        except JournalError as err:
            log.error("event=journal-write-failed kind=%s error=%s", kind, err)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="laserd", description="laserhost daemon: drives the LS-4 and reads the FT-8 over Modbus.")
    p.add_argument("--config", required=True, type=Path, help="the TOML config (see docs/config.md)")
    p.add_argument("--time-scale", type=float, default=1.0, help="run K times faster than wall time, like laser-sim (tests only)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except SettingsError as err:
        print(f"laserd: {err}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        Timebase(time_scale=args.time_scale)
    except ValueError as err:
        print(f"laserd: {err}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.log_level)
    return asyncio.run(Daemon(config, time_scale=args.time_scale).run())


if __name__ == "__main__":
    sys.exit(main())

"""The safety supervisor: independent checks on the measured values, every cycle, all ending in
one latch (Klipper's invoke_shutdown: the first cause is kept, the rest still reported).

`check()` is pure and synchronous: it takes this cycle's snapshots and the controller's proposal
and returns the Decision the writer may put on the bus. It never does I/O; the physical shutdown
is `safety.writer.LS4Writer.shutdown`, which the daemon calls whenever `latched` is set.

Reporting: `on_finding(finding)` is called once when a condition (a rule on one channel) appears,
not on every cycle it persists; `Decision.findings` lists every condition active this cycle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from protocol import ft8 as FT8
from protocol import ls4 as LS4
from protocol.ft8 import FT8Snapshot, ProbeStatus
from protocol.ls4 import DeviceState, LS4Snapshot

from . import limits as L
from .dose import Cem43Accumulator, PowerIntegrator, energy_ceiling_mw, uptime_delta_ms
from .limits import SafetyLimits
from .rules import RULES, Reset
from .types import SAFE_OUTPUT, Decision, Finding, Proposal, Severity

log = logging.getLogger("laserd.safety")

N = LS4.CHANNEL_COUNT
# An ack is judged on the last check; that check must be this recent (two 100 ms cycles and some).
ACK_FRESH_S = 0.5
# A fibre whose energy taper would allow less than this is at its budget: it stops for good.
# With the default 0.51 s horizon and 1.2 gain that is within 0.06 J of the budget.
TAPER_FLOOR_MW = 100
EPSILON_S = 1e-9
# The trapezoid of OUTPUT_POWER is only as good as its samples: across a longer gap between two
# LS-4 readings (a stalled host or lost reads, which trip on their own) it knows nothing of what
# happened inside (e.g. the watchdog stopping emission), so the counter's increment is taken
# instead, capped at what the host allowed: the most it wrote x gain x the gap.
ENERGY_TRAPEZOID_MAX_GAP_MS = 250

# The state the host asked for -> the LS-4 states that honour it. The footswitch is the
# operator's, so ARMED and EMITTING are the same request.
COMPATIBLE_STATES: dict[DeviceState, frozenset[DeviceState]] = {
    DeviceState.STANDBY: frozenset({DeviceState.STANDBY}),
    DeviceState.READY: frozenset({DeviceState.READY}),
    DeviceState.ARMED: frozenset({DeviceState.ARMED, DeviceState.EMITTING}),
    DeviceState.EMITTING: frozenset({DeviceState.ARMED, DeviceState.EMITTING}),
}
LS4_IDENTITY = (
    ("MAP_VERSION", "map_version", LS4.MAP_VERSION),
    ("FIRMWARE_VERSION", "firmware_version", LS4.FIRMWARE_VERSION),
    ("CHANNEL_COUNT", "channel_count", LS4.CHANNEL_COUNT),
    ("MAX_CHANNEL_POWER", "max_channel_power_mw", LS4.MAX_CHANNEL_POWER_MW),
)
FT8_IDENTITY = (
    ("MAP_VERSION", "map_version", FT8.MAP_VERSION),
    ("FIRMWARE_VERSION", "firmware_version", FT8.FIRMWARE_VERSION),
    ("CHANNEL_COUNT", "channel_count", FT8.CHANNEL_COUNT),
)

FindingCallback = Callable[[Finding], None]
AckBlocker = Callable[[], "str | None"]


@dataclass
class _Session:
    start_s: float | None
    baseline_mj: tuple[int, ...]
    last_energy_mj: tuple[int, ...]
    integrator: PowerIntegrator
    measured_at_s: float | None = None  # host time of the last LS-4 snapshot counted
    counter_j: list[float] = field(default_factory=lambda: [0.0] * N)  # LS-4 counters since the baseline
    delivered_j: list[float] = field(default_factory=lambda: [0.0] * N)  # max(counter, host), never decreasing
    fibre_base_j: list[float] = field(default_factory=lambda: [0.0] * N)  # delivered_j when this illumination began
    fibre_stopped: dict[int, Finding] = field(default_factory=dict)


@dataclass
class _ProbeTrack:
    last: tuple[float, int, float] | None = None  # (host time, SAMPLE_COUNTER, temp) of the last fresh valid sample
    frozen_value: float | None = None
    frozen_count: int = 0


@dataclass
class _Cycle:
    """Scratch of one check: conditions found, and the ceilings they put on each channel."""

    now_s: float
    conditions: list[tuple[Finding, float]] = field(default_factory=list)  # (finding, persistence window s)
    ceiling_mw: list[float] = field(default_factory=list)  # temperature back-offs
    fibre_ceiling_mw: list[int | None] = field(default_factory=lambda: [None] * N)
    fibre_left_j: list[float] = field(default_factory=lambda: [0.0] * N)
    session_ceiling_mw: int | None = None
    session_left_j: float = 0.0
    hold: bool = False

    def add(self, rule: str, *, window_s: float = 0.0, **fields: object) -> Finding:
        finding = RULES[rule].finding(time_s=self.now_s, **fields)  # type: ignore[arg-type]
        self.conditions.append((finding, window_s))
        return finding


class SafetySupervisor:
    def __init__(self, *, limits: SafetyLimits, on_finding: FindingCallback | None = None) -> None:
        self.limits = limits
        self._on_finding = on_finding
        self.latched: Finding | None = None
        self.report_failures = 0  # on_finding raised; the trip still happened
        self._ack_blockers: list[AckBlocker] = []
        self._session: _Session | None = None
        self._cem43 = Cem43Accumulator()
        self._since: dict[tuple[str, int | None], float] = {}  # condition -> host time first seen (persistence)
        self._active: dict[tuple[str, int | None], Finding] = {}  # conditions qualified at the last check
        self._present_hard: dict[tuple[str, int | None], Finding] = {}  # hard conditions present at the last check
        self._session_blockers: dict[tuple[str, int | None], Finding] = {}  # causes only a new session clears
        self._last_check_s: float | None = None
        self._last_decision: Decision = SAFE_OUTPUT
        self._allowed_mw: list[int] = [0] * N  # the most the device may be applying, from what the host wrote
        self._allowed_before_mw: list[int] = [0] * N  # the same, one check earlier
        self._gain: list[float] = [1.0 + limits.power_tolerance_fraction] * N
        self._last_uptime_ms: int | None = None
        self._ft8_counter: int | None = None
        self._ft8_changed_s: float | None = None
        self._ft8_period_s = FT8.DEFAULT_SAMPLE_PERIOD_MS / 1000.0
        self._probes: dict[int, _ProbeTrack] = {}

    # --- session -----------------------------------------------------------------------------

    def begin_session(
        self,
        *,
        ls4: LS4Snapshot,
        limits: SafetyLimits | None = None,
        now_s: float | None = None,
        cem43_min: Mapping[int, float] | None = None,
    ) -> None:
        """Start the energy accounting from the LS-4's counters as they are now.

        `limits`: the session's limits (device limits lowered by the plan). `now_s`: session start
        for `max_session_s`; None starts it at the next check. `cem43_min`: thermal dose already
        received at each probe (continuing the same placement); None starts every probe at 0.
        Per-fibre stops and the causes that only a new session clears are reset; the latch is not.
        """
        if limits is not None:
            self.limits = limits
        integrator = PowerIntegrator()
        integrator.start(uptime_ms=ls4.uptime_ms, output_power_mw=ls4.output_power_mw)
        self._session = _Session(
            start_s=now_s,
            baseline_mj=tuple(ls4.energy_mj),
            last_energy_mj=tuple(ls4.energy_mj),
            integrator=integrator,
            measured_at_s=now_s,
        )
        self._session_blockers.clear()
        self._cem43 = Cem43Accumulator()
        for probe, minutes in (cem43_min or {}).items():
            self._cem43.minutes[int(probe)] = float(minutes)
        self._gain = [1.0 + self.limits.power_tolerance_fraction] * N

    def begin_illumination(self, *, ls4: LS4Snapshot | None = None) -> None:
        """A new illumination of the same session (after an operator-confirmed fibre pull-back):
        each fibre's budget counts afresh from here and stopped fibres may run again; the session
        budget, session time and thermal dose go on. `ls4`: the counters now, if fresher than the
        last check's."""
        sess = self._session
        if sess is None:
            raise RuntimeError("begin_illumination needs a session: begin_session first")
        base = list(sess.delivered_j)
        if ls4 is not None:
            base = [max(b, (e - b0) / 1000.0) for b, e, b0 in zip(base, ls4.energy_mj, sess.baseline_mj)]
        sess.fibre_base_j = base
        sess.fibre_stopped.clear()

    def end_session(self, *, limits: SafetyLimits | None = None) -> None:
        """No session: every proposal is held at 0 until the next begin_session. `limits`: the
        limits to hold meanwhile (e.g. the device limits with no fibre in use). The latch stays, but
        causes that only mattered inside the session (spent budgets, its time, its dose) no longer
        block an ack: with no session every channel is held off anyway."""
        self._session = None
        self._session_blockers.clear()
        if limits is not None:
            self.limits = limits

    @property
    def in_session(self) -> bool:
        return self._session is not None

    @property
    def delivered_j(self) -> tuple[float, ...]:
        """Energy per fibre this session: the larger of the LS-4 counter and the host integral."""
        return tuple(self._session.delivered_j) if self._session else (0.0,) * N

    @property
    def counter_j(self) -> tuple[float, ...]:
        return tuple(self._session.counter_j) if self._session else (0.0,) * N

    @property
    def host_integral_j(self) -> tuple[float, ...]:
        return tuple(self._session.integrator.energy_j) if self._session else (0.0,) * N

    @property
    def fibre_energy_j(self) -> tuple[float, ...]:
        """Energy per fibre this illumination (what its budget counts)."""
        if self._session is None:
            return (0.0,) * N
        return tuple(d - b for d, b in zip(self._session.delivered_j, self._session.fibre_base_j))

    @property
    def fibres_stopped(self) -> frozenset[int]:
        return frozenset(self._session.fibre_stopped) if self._session else frozenset()

    def cem43_min(self, probe: int) -> float:
        return self._cem43.value_min(probe)

    # --- the latch ---------------------------------------------------------------------------

    def trip(self, finding: Finding) -> None:
        """A hard finding from outside the checks (operator stop, writer, daemon error): latch it.

        Idempotent: a trip while latched is reported but the first cause stays."""
        if finding.severity is not Severity.HARD:
            raise ValueError(f"trip needs a hard finding, got {finding.severity.value} {finding.rule}")
        if finding.rule not in RULES:
            raise ValueError(f"trip: rule {finding.rule!r} is not in safety.rules.RULES")
        if self.latched is None:
            self.latched = finding
        if RULES[finding.rule].reset is Reset.SESSION:
            self._session_blockers[finding.key] = finding
        self._report(finding)

    def add_ack_blocker(self, blocker: AckBlocker) -> None:
        """A cause outside this supervisor's view (e.g. the writer's stopped heartbeat): returns a
        one-line reason while the ack must wait, else None."""
        self._ack_blockers.append(blocker)

    def ack(self, now_s: float) -> str | None:
        """The operator's reset. None: reset done (or nothing to reset); else one line saying why not."""
        if self.latched is None:
            return None
        if self._last_check_s is None or now_s - self._last_check_s > ACK_FRESH_S:
            return f"ack refused: no check in the last {ACK_FRESH_S:g} s; the cause must be judged on fresh readings"
        for finding in self._session_blockers.values():
            return f"ack refused: {finding.message}; this clears only with a new session"
        for finding in self._present_hard.values():
            return f"ack refused: cause still present: {finding.message}"
        for blocker in self._ack_blockers:
            reason = blocker()
            if reason:
                return f"ack refused: {reason}"
        cause = self.latched
        self.latched = None
        self._report(RULES["latch_reset"].finding(time_s=now_s, cause=f"{cause.rule}: {cause.message}"))
        return None

    def _report(self, finding: Finding) -> None:
        if self._on_finding is None:
            return
        try:
            self._on_finding(finding)
        except Exception:  # noqa: BLE001 - a journal failure must never stop the safety checks
            self.report_failures += 1
            log.exception("event=finding-report-failed rule=%s", finding.rule)

    # --- the check ---------------------------------------------------------------------------

    def check(
        self,
        *,
        now_s: float,
        ls4: LS4Snapshot | None,
        ft8: FT8Snapshot | None,
        proposal: Proposal,
        expected_state: DeviceState | None = None,
        expected_states: Collection[DeviceState] | None = None,
        link_ok: bool,
        cycle_overrun_s: float,
    ) -> Decision:
        """One cycle. `ls4`/`ft8` None: that read failed this cycle. `link_ok`: no request to either
        device failed since the previous check, the previous cycle's write included (so the previous
        Decision is what the LS-4 has). `expected_state`: the LS-4 state the host asked for (ARMED
        and EMITTING count as one), or `expected_states`: the states that are acceptable; neither:
        not judged. `cycle_overrun_s`: how late this cycle started against its schedule."""
        if expected_state is not None and expected_states is not None:
            raise ValueError("give expected_state or expected_states, not both")
        accepted: frozenset[DeviceState] | None = None
        if expected_state is not None:
            accepted = COMPATIBLE_STATES.get(expected_state, frozenset({expected_state}))
        elif expected_states is not None:
            accepted = frozenset(expected_states)
        cyc = _Cycle(now_s=now_s, ceiling_mw=[float(p) for p in self.limits.max_power_mw])
        self._track_allowed(link_ok)
        self._check_cycle(cyc, ls4=ls4, ft8=ft8, link_ok=link_ok, cycle_overrun_s=cycle_overrun_s)
        if ls4 is not None:
            self._check_ls4(cyc, ls4, accepted)
        self._check_energy(cyc, ls4)
        self._check_probes(cyc, ft8)
        setpoints = self._shape(cyc, proposal)
        active = self._qualify(cyc)
        if self.latched is not None:
            decision = Decision(setpoint_mw=SAFE_OUTPUT.setpoint_mw, enable=SAFE_OUTPUT.enable, findings=active)
        else:
            decision = Decision(
                setpoint_mw=tuple(setpoints), enable=tuple(s > 0 for s in setpoints), findings=active
            )
        self._last_decision = decision
        self._last_check_s = now_s
        return decision

    def _track_allowed(self, link_ok: bool) -> None:
        """What the LS-4 may be applying: the last decision if it was written, else the most of both."""
        last = self._last_decision.setpoint_mw
        self._allowed_before_mw = list(self._allowed_mw)
        if link_ok:
            self._allowed_mw = list(last)
        else:
            self._allowed_mw = [max(a, b) for a, b in zip(self._allowed_mw, last)]

    def _check_cycle(self, cyc: _Cycle, *, ls4: LS4Snapshot | None, ft8: FT8Snapshot | None, link_ok: bool, cycle_overrun_s: float) -> None:
        lim = self.limits
        missing = []
        if ls4 is None:
            missing.append("LS-4")
        if ft8 is None and lim.monitored_probes:
            missing.append("FT-8")
        what = [f"{m} read failed" for m in missing] + ([] if link_ok else ["a request failed"])
        if what:
            since = self._since.get(("link_lost", None), cyc.now_s)
            cyc.add("link_lost", window_s=lim.link_loss_window_s, what=", ".join(what), value=cyc.now_s - since)
        if missing:
            cyc.add("reading_missing", what=" and ".join(missing))
            cyc.hold = True
        if cycle_overrun_s > lim.max_cycle_overrun_s:
            cyc.add("cycle_overrun", value=cycle_overrun_s, limit=lim.max_cycle_overrun_s)

    def _check_ls4(self, cyc: _Cycle, s: LS4Snapshot, accepted: frozenset[DeviceState] | None) -> None:
        lim = self.limits
        for register, attr, want in LS4_IDENTITY:
            got = getattr(s, attr)
            if got != want:
                cyc.add("wrong_device", device="LS-4", what=register, got=got, expected=want)
        if s.device_state is DeviceState.FAULT or s.fault_code is not LS4.FaultCode.NONE:
            where = "" if s.fault_channel is None else f" on channel {s.fault_channel}"
            cyc.add("ls4_fault", fault=s.fault_code.name, where=where)
        elif accepted is not None and s.device_state not in accepted:
            expected = " or ".join(sorted(state.name for state in accepted))
            cyc.add("ls4_unexpected_state", state=s.device_state.name, expected=expected)
        if self._last_uptime_ms is not None and uptime_delta_ms(self._last_uptime_ms, s.uptime_ms) is None:
            cyc.add("ls4_rebooted", value=s.uptime_ms, limit=self._last_uptime_ms)
        self._last_uptime_ms = s.uptime_ms
        tol = lim.power_tolerance_fraction
        for c in range(N):
            out, active, allowed = s.output_power_mw[c], s.active_setpoint_mw[c], self._allowed_mw[c]
            if active >= lim.power_check_min_mw:
                # the channel's real gain feeds the energy taper, never below the device's own tolerance
                self._gain[c] = max(1.0 + tol, out / active)
                apart = abs(out - active)
                if apart > tol * active:
                    gross = apart > L.POWER_GROSS_MISMATCH_FRACTION * active
                    window = 0.0 if gross else lim.power_mismatch_window_s
                    cyc.add("power_mismatch", window_s=window, channel=c, value=out, limit=active, tolerance=tol)
            if lim.max_power_mw[c] > 0 and out > lim.max_power_mw[c] * (1.0 + tol):
                cyc.add("power_above_limit", channel=c, value=out, limit=lim.max_power_mw[c], tolerance=tol)
            if active > allowed:
                cyc.add("uncontrolled_emission", window_s=lim.uncommanded_window_s, channel=c, what="ACTIVE_SETPOINT", value=active, limit=allowed)
            elif allowed == 0 and out > lim.uncommanded_power_mw:
                cyc.add("uncontrolled_emission", window_s=lim.uncommanded_window_s, channel=c, what="output", value=out, limit=allowed)

    def _check_energy(self, cyc: _Cycle, s: LS4Snapshot | None) -> None:
        sess = self._session
        if sess is None:
            return
        lim = self.limits
        now = cyc.now_s
        if sess.start_s is None:
            sess.start_s = now
        if sess.measured_at_s is None:
            sess.measured_at_s = now
        if s is not None:
            gap_ms = sess.integrator.gap_ms(s.uptime_ms)
            if gap_ms is not None and gap_ms > ENERGY_TRAPEZOID_MAX_GAP_MS:
                most = [
                    max(a, b) * self._gain[c] * gap_ms / 1e6
                    for c, (a, b) in enumerate(zip(self._allowed_mw, self._allowed_before_mw))
                ]
                seen = [max(0.0, (e - e0) / 1000.0) for e, e0 in zip(s.energy_mj, sess.last_energy_mj)]
                sess.integrator.bridge(
                    uptime_ms=s.uptime_ms, output_power_mw=s.output_power_mw, energy_j=[min(a, b) for a, b in zip(seen, most)]
                )
            else:
                sess.integrator.add(uptime_ms=s.uptime_ms, output_power_mw=s.output_power_mw)
            for c in range(N):
                if s.energy_mj[c] < sess.last_energy_mj[c]:
                    cyc.add("energy_counter_backwards", channel=c, value=s.energy_mj[c] / 1000.0, limit=sess.last_energy_mj[c] / 1000.0)
                counter_j = (s.energy_mj[c] - sess.baseline_mj[c]) / 1000.0
                host_j = sess.integrator.energy_j[c]
                tolerance_j = lim.energy_crosscheck_tolerance_j + lim.energy_crosscheck_tolerance_fraction * max(counter_j, host_j, 0.0)
                if abs(counter_j - host_j) > tolerance_j:
                    cyc.add("energy_crosscheck", channel=c, value=counter_j, host_j=host_j, limit=tolerance_j)
                sess.counter_j[c] = max(sess.counter_j[c], counter_j)
                # a counter that went back never gives energy back: the budget counts the most seen
                sess.delivered_j[c] = max(sess.delivered_j[c], counter_j, host_j)
            sess.last_energy_mj = tuple(s.energy_mj)
            sess.measured_at_s = now
        # what may have been delivered since the last LS-4 reading, at what the host allowed
        unmeasured_s = max(0.0, now - sess.measured_at_s)
        estimate = [
            sess.delivered_j[c] + self._allowed_mw[c] * self._gain[c] * unmeasured_s / 1000.0 for c in range(N)
        ]
        horizon = lim.write_horizon_s
        for c in range(N):
            stop = sess.fibre_stopped.get(c)
            budget = lim.energy_budget_j[c]
            if stop is None and budget is not None:
                fibre_j = estimate[c] - sess.fibre_base_j[c]
                left = budget - fibre_j
                ceiling = energy_ceiling_mw(left, horizon_s=horizon, gain=self._gain[c])
                if ceiling < TAPER_FLOOR_MW:
                    stop = RULES["fibre_energy_budget"].finding(time_s=now, channel=c, value=fibre_j, limit=budget)
                    sess.fibre_stopped[c] = stop
                else:
                    cyc.fibre_ceiling_mw[c], cyc.fibre_left_j[c] = ceiling, left
            if stop is not None:
                cyc.conditions.append((stop, 0.0))  # stays active, reported once
        left = lim.session_energy_budget_j - sum(estimate)
        ceiling = energy_ceiling_mw(left, horizon_s=horizon, gain=max(self._gain))
        if ceiling < TAPER_FLOOR_MW:
            cyc.add("session_energy_budget", value=sum(estimate), limit=lim.session_energy_budget_j)
        else:
            cyc.session_ceiling_mw, cyc.session_left_j = ceiling, left
        elapsed = now - sess.start_s
        if elapsed > lim.max_session_s:
            cyc.add("session_time", value=elapsed, limit=lim.max_session_s)

    def _check_probes(self, cyc: _Cycle, s: FT8Snapshot | None) -> None:
        lim = self.limits
        now = cyc.now_s
        fresh = False
        if self._ft8_changed_s is None:
            self._ft8_changed_s = now  # staleness counts from the first check
        if s is not None:
            for register, attr, want in FT8_IDENTITY:
                got = getattr(s, attr)
                if got != want:
                    cyc.add("wrong_device", device="FT-8", what=register, got=got, expected=want)
            if self._ft8_counter is None or s.sample_counter != self._ft8_counter:
                fresh = True
                self._ft8_changed_s = now
            self._ft8_counter = s.sample_counter
            if s.sample_period_actual_ms > 0:
                self._ft8_period_s = s.sample_period_actual_ms / 1000.0
        if not lim.monitored_probes:
            return
        window = min(lim.stale_after_periods * self._ft8_period_s, L.STALE_WINDOW_MAX_S)
        age = now - self._ft8_changed_s
        if age > window + EPSILON_S:
            cyc.add("probe_stale", value=age, limit=window)
        if s is None:
            return
        device_bad = FT8.Status.FAULT in s.status or FT8.Status.MEASURING not in s.status
        for p in sorted(lim.monitored_probes):
            track = self._probes.setdefault(p, _ProbeTrack())
            temp, status = s.temperature_c[p], s.probe_status[p]
            if device_bad or temp is None or not FT8.reading_is_valid(status):
                cyc.add("probe_invalid", channel=p, why=_invalid_why(s, p))
                track.frozen_value, track.frozen_count = None, 0
                continue
            lo, hi = lim.probe_range_c
            if not lo <= temp <= hi:
                cyc.add("probe_implausible", channel=p, value=temp, why=f"{temp:.2f} °C outside the plausible {lo:g}..{hi:g} °C")
                continue
            if fresh:
                self._fresh_sample(cyc, p, track, temp, s.sample_counter)
            self._temperature_limits(cyc, p, temp)

    def _fresh_sample(self, cyc: _Cycle, p: int, track: _ProbeTrack, temp: float, counter: int) -> None:
        lim = self.limits
        now = cyc.now_s
        if track.last is not None:
            t0, c0, temp0 = track.last
            dt = max(now - t0, ((counter - c0) & 0xFFFF) * self._ft8_period_s)
            if abs(temp - temp0) > lim.max_probe_rate_c_per_s * dt + L.PROBE_RATE_ALLOWANCE_C:
                cyc.add(
                    "probe_implausible",
                    channel=p,
                    value=temp,
                    why=f"changed {temp - temp0:+.1f} °C in {dt:.2f} s: faster than {lim.max_probe_rate_c_per_s:g} °C/s physics allows",
                )
        if temp == track.frozen_value:
            track.frozen_count += 1
        else:
            track.frozen_value, track.frozen_count = temp, 1
        if track.frozen_count >= lim.probe_frozen_reads:
            cyc.add("probe_frozen", channel=p, value=track.frozen_count, reading=temp)
        track.last = (now, counter, temp)
        self._cem43.add(p, time_s=now, temp_c=temp)

    def _temperature_limits(self, cyc: _Cycle, p: int, temp: float) -> None:
        lim = self.limits
        guarded = lim.tip_probes.get(p)
        if guarded is not None:
            cap, margin = lim.tip_temp_cap_c, lim.tip_backoff_margin_c
            if temp >= cap:
                cyc.add("tip_temp_cap", channel=p, value=temp, limit=cap, guarded=guarded)
            elif temp > cap - margin:
                ceiling = int(lim.max_power_mw[guarded] * (cap - temp) / margin)
                cyc.ceiling_mw[guarded] = min(cyc.ceiling_mw[guarded], ceiling)
                cyc.add("tip_temp_backoff", channel=p, value=temp, limit=cap, guarded=guarded, margin=margin, ceiling_mw=ceiling)
        protected = lim.protected_probes.get(p)
        if protected is not None:
            max_c, max_cem = protected
            margin = lim.protected_backoff_margin_c
            if temp >= max_c:
                cyc.add("protected_temp_limit", channel=p, value=temp, limit=max_c)
            elif temp > max_c - margin:
                fraction = (max_c - temp) / margin
                ceiling = int(max(lim.max_power_mw) * fraction)
                cyc.ceiling_mw = [min(cm, mp * fraction) for cm, mp in zip(cyc.ceiling_mw, lim.max_power_mw)]
                cyc.add("protected_temp_backoff", channel=p, value=temp, limit=max_c, margin=margin, ceiling_mw=ceiling)
            dose = self._cem43.value_min(p)
            if dose >= max_cem:
                cyc.add("protected_cem43_limit", channel=p, value=dose, limit=max_cem)
            elif dose >= lim.cem43_warn_fraction * max_cem:
                cyc.hold = True
                cyc.add("cem43_warning", channel=p, value=dose, limit=max_cem, fraction=lim.cem43_warn_fraction)

    # --- the decision ----------------------------------------------------------------------------

    def _shape(self, cyc: _Cycle, proposal: Proposal) -> list[int]:
        """The proposal limited by every soft rule; findings only where a rule actually bit."""
        lim = self.limits
        if len(proposal.setpoint_mw) != N or len(proposal.enable) != N:
            # a controller bug must not crash the safety check: it trips, and nothing is let through
            cyc.add("host_error", why=f"a proposal needs {N} setpoints and enables, got {len(proposal.setpoint_mw)} and {len(proposal.enable)}")
            return [0] * N
        wanted = [int(s) if bool(e) else 0 for s, e in zip(proposal.setpoint_mw, proposal.enable)]
        if self._session is None:
            if any(w != 0 for w in wanted):
                cyc.add("no_session")
            return [0] * N
        out: list[int] = []
        last = self._last_decision.setpoint_mw
        for c, want in enumerate(wanted):
            s = want
            if not lim.in_plan(c):
                if s != 0:
                    cyc.add("channel_not_in_plan", channel=c)
                out.append(0)
                continue
            if not 0 <= s <= lim.max_power_mw[c]:
                cyc.add("power_clamp", channel=c, value=s, limit=lim.max_power_mw[c])
                s = min(max(s, 0), lim.max_power_mw[c])
            if c in self._session.fibre_stopped:
                s = 0
            s = min(s, int(cyc.ceiling_mw[c]))
            taper = cyc.fibre_ceiling_mw[c]
            if taper is not None and s > taper:
                cyc.add("fibre_energy_taper", channel=c, value=cyc.fibre_left_j[c], ceiling_mw=taper)
                s = taper
            if cyc.hold:
                s = min(s, last[c])
            out.append(max(0, s))
        total = sum(out)
        if cyc.session_ceiling_mw is not None and total > cyc.session_ceiling_mw:
            cyc.add("session_energy_taper", value=cyc.session_left_j, ceiling_mw=cyc.session_ceiling_mw)
            out = [s * cyc.session_ceiling_mw // total for s in out]
        return out

    def _qualify(self, cyc: _Cycle) -> tuple[Finding, ...]:
        """Persistence windows, then the latch, then reporting of what is new."""
        since: dict[tuple[str, int | None], float] = {}
        active: dict[tuple[str, int | None], Finding] = {}
        present_hard: dict[tuple[str, int | None], Finding] = {}
        for finding, window in cyc.conditions:
            key = finding.key
            if key in active or key in present_hard:
                continue  # one condition per rule and channel; the first description wins
            start = self._since.get(key, cyc.now_s)
            since[key] = start
            if finding.severity is Severity.HARD:
                present_hard[key] = finding
            if cyc.now_s - start >= window - EPSILON_S:
                active[key] = finding
        self._since = since
        self._present_hard = present_hard
        new = [f for k, f in active.items() if k not in self._active]
        for f in active.values():
            if f.severity is Severity.HARD:
                if self.latched is None:
                    self.latched = f
                if RULES[f.rule].reset is Reset.SESSION:
                    self._session_blockers[f.key] = f
        self._active = active
        # the latching cause first, so the journal's first trip line is the cause
        new.sort(key=lambda f: (f is not self.latched, f.severity is not Severity.HARD))
        for f in new:
            self._report(f)
        return tuple(active.values())


def _invalid_why(s: FT8Snapshot, p: int) -> str:
    if FT8.Status.FAULT in s.status:
        return "FT-8 reports FAULT"
    if FT8.Status.MEASURING not in s.status:
        return "FT-8 not measuring"
    status = s.probe_status[p]
    if ProbeStatus.CONNECTED not in status:
        return "not connected"
    if ProbeStatus.SIGNAL_OK not in status:
        return "signal lost"
    if ProbeStatus.OUT_OF_RANGE in status:
        return "out of range"
    return "reads 0x8000"

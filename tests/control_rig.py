"""Closed loop in-process: a SimWorld with the tissue model, the real SafetySupervisor and LS4Writer
over tests/direct_link.py, a real journal and TreatmentSession, stepped one 100 ms control cycle at
a time on a frozen clock. `cycle()` is the daemon's `_one_cycle` without sockets.

Used by tests/test_control_*.py and bench/bench_control.py.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from controller.config import DaemonConfig, parse_config
from controller.journal import Journal
from controller.plan import Plan, load_plan
from controller.safety_limits import idle_limits, plan_limits
from controller.session import TreatmentSession
from controller.session_states import Event, State
from direct_link import DirectLink, drive
from protocol import ft8 as FT8
from protocol import ls4 as LS4
from safety.supervisor import SafetySupervisor
from safety.types import Decision, Finding, Proposal, Severity
from safety.writer import LS4Writer
from sim.tissue import TissueModel, load_scenario, load_thermal_model
from sim.world import SimWorld

CYCLE_MS = 100
# A site config like examples/laserd.toml; the protected limits allow what the plans below ask.
CONFIG_TEXT = """
control_period_ms = 100
[bus.main]
transport = "tcp"
host = "127.0.0.1"
port = 5020
[devices.ls4]
bus = "main"
watchdog_timeout_ms = 500
[devices.ft8]
bus = "main"
sample_period_ms = 50
[limits]
max_channel_power_w = 10.0
max_fibre_energy_j = 9000.0
max_session_energy_j = 36000.0
max_session_duration_s = 3600
tip_temp_cap_c = 95.0
protected_max_temp_c = 45.0
protected_max_cem43_min = 60.0
probe_stale_ms = 500
max_temp_rate_c_per_s = 20.0
power_tolerance_fraction = 0.20
power_tolerance_persist_ms = 200
energy_crosscheck_tolerance_fraction = 0.05
energy_crosscheck_tolerance_j = 5.0
[journal]
path = "journal.sqlite"
[socket]
path = "laserd.sock"
"""


def config(base_dir: Path, *, max_session_s: int | None = None) -> DaemonConfig:
    """The rig's site config; `max_session_s` replaces its session limit (the bench's longer sessions)."""
    text = CONFIG_TEXT if max_session_s is None else CONFIG_TEXT.replace("max_session_duration_s = 3600", f"max_session_duration_s = {int(max_session_s)}")
    return parse_config(text, base_dir=base_dir)


@dataclass
class Trace:
    """One row per control cycle."""

    t_s: list[float] = field(default_factory=list)
    measured_c: list[tuple[float | None, ...]] = field(default_factory=list)  # FT-8 readings
    tissue_c: list[tuple[float | None, ...]] = field(default_factory=list)  # ground truth at the probes
    setpoint_mw: list[tuple[int, ...]] = field(default_factory=list)  # the decision written
    proposed_mw: list[tuple[int, ...]] = field(default_factory=list)
    output_mw: list[tuple[int, ...]] = field(default_factory=list)

    def probe(self, channel: int) -> list[float]:
        return [row[channel] if row[channel] is not None else math.nan for row in self.measured_c]  # type: ignore[misc]


class Rig:
    def __init__(
        self,
        scenario: str,
        plan_text: str,
        *,
        grid_mm: float | None = None,
        seed: int = 0,
        kernel: str = "compiled",
        workdir: Path | None = None,
        thermal: TissueModel | None = None,
        max_session_s: int | None = None,
    ) -> None:
        self._tmp = None if workdir is not None else tempfile.TemporaryDirectory()
        self.workdir = workdir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.config = config(self.workdir, max_session_s=max_session_s)
        self.thermal = thermal if thermal is not None else load_thermal_model(scenario, grid_mm=grid_mm)
        self.world = SimWorld(thermal=self.thermal, seed=seed)
        self.world.clock.freeze()
        self.link = DirectLink(self.world)
        self.findings: list[Finding] = []
        self.supervisor = SafetySupervisor(limits=idle_limits(self.config), on_finding=self.findings.append)
        self.writer = LS4Writer(self.link, supervisor=self.supervisor)
        self.journal = Journal(self.config.journal_path)
        self.plan: Plan = load_plan(plan_text, limits=self.config.limits)
        self.kernel = kernel
        self.session: TreatmentSession | None = None
        self.trace = Trace()
        self.write_failed = False
        self.events: list[Event] = []
        drive(self.writer.take_control(self.config.ls4.watchdog_timeout_ms))
        self.cycle()  # the daemon reads the devices before accepting commands

    # --- the operator ------------------------------------------------------------------------------

    def load(self) -> TreatmentSession:
        ls4 = self.read_ls4()
        assert ls4 is not None
        limits = plan_limits(self.config, self.plan)
        session_id = self.journal.create_session(self.plan, energy_baseline_j=[e / 1000.0 for e in ls4.energy_mj])
        self.session = TreatmentSession(session_id=session_id, plan=self.plan, journal=self.journal, safety=self.supervisor, kernel=self.kernel)
        self.supervisor.begin_session(ls4=ls4, limits=limits, now_s=self.world.time_s)
        drive(self.writer.apply_power_limits(limits.max_power_mw))
        return self.session

    def arm_and_press(self) -> None:
        assert self.session is not None
        assert drive(self.writer.arm()) is None
        self.session.apply(Event.ARM, "operator armed")
        self.world.bench(["footswitch", "press"])

    def pull_back(self, distance_mm: float) -> None:
        """Between illuminations: the clinician pulls the fibres back (bench), the operator confirms
        (the daemon's `pullback` command), then presses the footswitch again."""
        session = self.session
        assert session is not None and session.state is State.PULLBACK
        self.release()  # the LS-4 starts emission on a press, not on a held pedal
        self.world.bench(["pullback", f"{distance_mm:g}"])
        while self.world.truth()["tissue"]["pullback_remaining_mm"] > 0.0:  # the hand takes seconds
            self.cycle()
        assert drive(self.writer.arm()) is None
        ls4 = self.read_ls4()
        assert ls4 is not None
        session.illumination += 1
        self.supervisor.begin_illumination(ls4=ls4)
        session.apply(Event.PULLBACK_CONFIRMED, "operator confirmed pull-back")
        self.press()

    def release(self) -> None:
        self.world.bench(["footswitch", "release"])

    def press(self) -> None:
        self.world.bench(["footswitch", "press"])

    # --- the cycle -------------------------------------------------------------------------------------

    def read_ls4(self) -> LS4.LS4Snapshot | None:
        try:
            return LS4.LS4Snapshot.from_words(drive(self.link.read_input(unit=LS4.UNIT_ID, address=LS4.INPUT_FIRST, count=LS4.INPUT_COUNT)))
        except Exception:  # noqa: BLE001 - a failed read is None, as in the daemon
            return None

    def read_ft8(self) -> FT8.FT8Snapshot | None:
        try:
            return FT8.FT8Snapshot.from_words(drive(self.link.read_input(unit=FT8.UNIT_ID, address=FT8.INPUT_FIRST, count=FT8.INPUT_COUNT)))
        except Exception:  # noqa: BLE001
            return None

    def cycle(self) -> Decision:
        self.world.bench(["clock", "step", str(CYCLE_MS)])
        now_s = self.world.time_s
        ls4, ft8 = self.read_ls4(), self.read_ft8()
        session = self.session
        live = session is not None and session.open
        if live and session.controller is not None:  # type: ignore[union-attr]
            # the controller's fits run in a worker thread; on the frozen clock they take no device
            # time (like everything here), so a run does not depend on the machine's speed
            session.controller.wait_fits()  # type: ignore[union-attr]
        proposal = session.propose(ls4, ft8, now_s=now_s) if live else None  # type: ignore[union-attr]
        decision = self.supervisor.check(
            now_s=now_s,
            ls4=ls4,
            ft8=ft8,
            proposal=proposal or Proposal(),
            expected_state=self.writer.expected_state,
            link_ok=ls4 is not None and ft8 is not None and not self.write_failed,
            cycle_overrun_s=0.0,
        )
        if self.supervisor.latched is not None:
            drive(self.writer.shutdown(self.supervisor.latched))
            if session is not None and session.open:
                session.apply(Event.FAULT, f"safety trip: {self.supervisor.latched.message}")
                self.supervisor.end_session(limits=idle_limits(self.config))
        drive(self.writer.write_cycle(decision))
        if session is not None and session.open:
            event = session.observe(now_s=now_s, ls4=ls4, ft8=ft8, setpoint_mw=decision.setpoint_mw)
            if event is not None:
                self.events.append(event)
                drive(self.writer.disarm())
                if event is Event.ENDPOINT_REACHED:
                    session.apply(event, "endpoint reached")
                    self.supervisor.end_session(limits=idle_limits(self.config))
                else:
                    session.apply(event, "illumination done")
        tr = self.trace
        tr.t_s.append(now_s)
        tr.measured_c.append(ft8.temperature_c if ft8 is not None else (None,) * FT8.CHANNEL_COUNT)
        tr.tissue_c.append(tuple(self.thermal.probe_temperature_c()))
        tr.setpoint_mw.append(decision.setpoint_mw)
        tr.proposed_mw.append(proposal.setpoint_mw if proposal is not None else (0,) * LS4.CHANNEL_COUNT)
        tr.output_mw.append(ls4.output_power_mw if ls4 is not None else (0,) * LS4.CHANNEL_COUNT)
        return decision

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds * 1000 / CYCLE_MS)):
            self.cycle()
            if self.session is not None and not self.session.open:
                break

    @property
    def trips(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.HARD]

    @property
    def state(self) -> State | None:
        return None if self.session is None else self.session.state

    def close(self) -> None:
        self.journal.close()
        if self._tmp is not None:
            self._tmp.cleanup()


# --- step-response figures, as the issue defines them ---------------------------------------------------


@dataclass(frozen=True)
class StepFigures:
    overshoot_c: float  # the highest reading above the target after the step (0 if never above)
    settling_s: float  # from the step until the reading stays within +-band of the target
    rms_c: float  # RMS of (reading - target) over the steady-state window


def step_figures(t_s: list[float], y: list[float], *, target_c: float, step_at_s: float, steady_from_s: float, band_c: float = 1.0) -> StepFigures:
    after = [(t, v) for t, v in zip(t_s, y) if t >= step_at_s]
    overshoot = max(0.0, max(v - target_c for _, v in after))
    settled_at = step_at_s
    for t, v in after:
        if abs(v - target_c) > band_c:
            settled_at = t
    steady = [v - target_c for t, v in after if t >= steady_from_s]
    rms = math.sqrt(sum(e * e for e in steady) / len(steady))
    return StepFigures(overshoot_c=overshoot, settling_s=settled_at - step_at_s, rms_c=rms)


def scenario_probes(scenario: str) -> list[tuple[int, str, tuple[float, float, float]]]:
    return [(p.channel, p.role, p.position_mm) for p in load_scenario(scenario).probes]

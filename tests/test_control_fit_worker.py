"""Fits off the event loop (issue #8): the cycle that ends a tune, and SHAPED's online refits, hand
the fit to the controller's worker and return; the result is installed on a later cycle. Each
(probe, fibre) pair's FOPDT is fitted once per model, in the worker. A failed fit is `tune_error`
as before; the session's end shuts the worker down.

The worker is held on a gate (threading.Event) so that "the fit is still pending" is a fact, not a
race; the tests wait on the future, never on time. The plant: a first-order response per (probe,
fibre) pair, fed exactly what the controller proposes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from control_rig import config
from controller import control, tune
from controller.control import MPC_REFIT_PERIOD_S, FibreController
from controller.journal import Journal
from controller.plan import Plan, load_plan
from controller.safety_limits import plan_limits
from controller.session import TreatmentSession
from controller.session_states import Event, State
from controller.tune import TuneSettings
from protocol import ft8 as FT8
from protocol import ls4 as LS4
from safety.supervisor import SafetySupervisor
from safety.types import Proposal
from sim.world import SimWorld
from test_control_step import four_fibre_plan, single_fibre_plan

CYCLE_S = 0.1
SHORT_TUNE = TuneSettings(on_s=20.0, stagger_s=5.0, tail_s=5.0)
_WORLD = SimWorld()
BASE_LS4 = LS4.LS4Snapshot.from_words(_WORLD.ls4.input_words())
BASE_FT8 = FT8.FT8Snapshot.from_words(_WORLD.ft8.input_words())


class Plant:
    """Probe p's rise toward sum_f gain[p, f] x power_f, first order (tau_s)."""

    def __init__(self, gains: np.ndarray, *, tau_s: float = 15.0, delivers: bool = True) -> None:
        self.gains = gains  # (8 probes, 4 channels), degC/W
        self.tau_s = tau_s
        self.delivers = delivers  # False: the LS-4 reports no output (a tune that saw no power)
        self.rise = np.zeros(8)
        self.out_mw: tuple[int, ...] = (0,) * 4

    def snapshots(self) -> tuple[LS4.LS4Snapshot, FT8.FT8Snapshot]:
        ls4 = replace(BASE_LS4, device_state=LS4.DeviceState.EMITTING, output_power_mw=self.out_mw, active_setpoint_mw=self.out_mw)
        ft8 = replace(BASE_FT8, temperature_c=tuple(37.0 + float(r) for r in self.rise))
        return ls4, ft8

    def apply(self, proposal: Proposal) -> None:
        self.out_mw = tuple(proposal.setpoint_mw) if self.delivers else (0,) * 4
        u = np.asarray(self.out_mw) / 1000.0
        self.rise += CYCLE_S / self.tau_s * (self.gains @ u - self.rise)


class Driver:
    """Steps a controller against a plant, one 100 ms cycle per call."""

    def __init__(self, ctl: FibreController, plant: Plant) -> None:
        self.ctl, self.plant, self.t = ctl, plant, 0.0

    def cycle(self) -> Proposal:
        ls4, ft8 = self.plant.snapshots()
        proposal = self.ctl.step(now_s=self.t, ls4=ls4, ft8=ft8)
        self.plant.apply(proposal)
        self.t += CYCLE_S
        return proposal

    def until(self, done: Callable[[], bool], *, max_s: float) -> None:
        start = self.t
        while not done():
            self.cycle()
            assert self.t - start < max_s, "never happened"

    def tune(self) -> None:
        """Until the tune ends, wait for its fit, one more cycle installs the model."""
        self.until(lambda: self.ctl.tune_fit is not None, max_s=120.0)
        assert self.ctl.tune_fit is not None
        self.ctl.tune_fit.result(timeout=120)
        self.cycle()
        assert self.ctl.phase == "closed_loop"


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], threading.Event]]:
    """gate(name): hold control.<name> (a worker function) until the returned event is set
    (all are set when the test ends, so that a failed test leaves no worker waiting)."""
    events: list[threading.Event] = []

    def make(name: str) -> threading.Event:
        opened = threading.Event()
        real = getattr(control, name)

        def held(*args: Any) -> Any:
            assert opened.wait(timeout=120), "the test never opened the gate"
            return real(*args)

        monkeypatch.setattr(control, name, held)
        events.append(opened)
        return opened

    yield make
    for opened in events:
        opened.set()


@pytest.fixture
def fopdt_fits(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The thread of every FOPDT grid fit."""
    threads: list[str] = []
    real = tune.fit_fopdt

    def counted(t_s: np.ndarray, y: np.ndarray) -> tune.Fopdt:
        threads.append(threading.current_thread().name)
        return real(t_s, y)

    monkeypatch.setattr(tune, "fit_fopdt", counted)
    yield threads


def margin_plan(tmp_path: Path) -> Plan:
    """One fibre, TEMPERATURE on a margin probe: needs the model, so it tunes first."""
    return load_plan(single_fibre_plan(55.0).replace("control_probe = 0", "control_probe = 1"), limits=config(tmp_path).limits)


def shaped_plan(tmp_path: Path) -> Plan:
    text = four_fibre_plan(80.0).replace('mode = "TEMPERATURE"', 'mode = "SHAPED"')
    text = "\n".join(line for line in text.splitlines() if not line.startswith(("target_temp_c", "control_probe")))
    return load_plan(text, limits=config(tmp_path).limits)


def single_gains() -> np.ndarray:
    g = np.zeros((8, 4))
    g[0, 0], g[1, 0], g[2, 0] = 15.0, 6.0, 3.0
    return g


def four_gains() -> np.ndarray:
    g = np.full((8, 4), 0.3)
    for f in range(4):
        g[f, f] = 15.0  # each tip probe: its own fibre
    g[4:7, :] = 2.0  # margins: every fibre a little
    g[7, :] = 0.5  # protected: far
    return g


def emitting_session(tmp_path: Path) -> tuple[Journal, TreatmentSession]:
    """A journaled session on margin_plan, EMITTING, with a controller that tunes briefly."""
    plan = margin_plan(tmp_path)
    journal = Journal(tmp_path / "j.sqlite")
    session = TreatmentSession(session_id=journal.create_session(plan), plan=plan, journal=journal, safety=SafetySupervisor(limits=plan_limits(config(tmp_path), plan)))
    session.state = State.EMITTING
    session.controller = FibreController(plan=plan, tune_settings=SHORT_TUNE)
    return journal, session


def test_the_cycle_that_ends_a_tune_returns_with_the_fit_pending_and_a_later_one_installs_it(
    tmp_path: Path, gate: Callable[[str], threading.Event], fopdt_fits: list[str]
) -> None:
    opened = gate("_fit_tune")
    ctl = FibreController(plan=margin_plan(tmp_path), tune_settings=SHORT_TUNE)
    drive = Driver(ctl, Plant(single_gains()))
    drive.cycle()
    assert ctl.phase == "tuning"
    drive.until(lambda: ctl.tune is None, max_s=60.0)
    # the cycle that ended the tune returned: the fit waits at the gate, in the worker
    fut = ctl.tune_fit
    assert ctl.phase == "fitting" and fut is not None and not fut.done()
    assert ctl.model is None and not ctl.loops and ctl.take_tune_result() is None
    for _ in range(30):  # however long the fit takes: the tune's 0 W, nothing installed, no new tune
        assert drive.cycle().setpoint_mw == (0, 0, 0, 0)
        assert ctl.phase == "fitting" and ctl.tune_pending and ctl.tune is None and ctl.tune_fit is fut
        assert ctl.status().tune_progress == 1.0
    opened.set()
    result = fut.result(timeout=120)  # done in the worker ...
    assert ctl.model is None and ctl.phase == "fitting"  # ... installed by the next cycle, not by the worker
    drive.cycle()
    assert ctl.phase == "closed_loop" and ctl.model is result.model and ctl.tune_fit is None and not ctl.tune_pending
    assert ctl.take_tune_result() is result
    assert [(loop.probe, loop.role) for loop in ctl.loops] == [(1, "control"), (0, "tip_limit")]
    # every FOPDT grid fit ran in the worker, once per pair: installing and journaling only looked up
    fitted = len(fopdt_fits)
    assert fitted == len(result.model._fopdts) and all(t.startswith("laserd-fit") for t in fopdt_fits)
    details = result.model.to_details()
    assert set(details["gains"]) == {"0->0", "0->1", "0->2"}
    assert len(fopdt_fits) == fitted
    assert result.gains[0] == ctl.loops[0].gains == result.model.gains(probe=1, fibre=0)
    drive.until(lambda: ctl.status().output_w[0] > 0.5, max_s=10.0)  # closed loop, from 0 W
    ctl.close()


def test_a_fit_that_fails_is_the_tune_error_and_no_new_tune_starts(tmp_path: Path) -> None:
    journal, session = emitting_session(tmp_path)
    ctl = session.controller
    assert ctl is not None
    plant = Plant(single_gains(), delivers=False)  # the LS-4 reports no output: nothing to identify
    t = 0.0

    def cycle() -> None:
        nonlocal t
        ls4, ft8 = plant.snapshots()
        plant.apply(session.propose(ls4, ft8, now_s=t))
        t += CYCLE_S

    while ctl.tune_fit is None:
        cycle()
        assert t < 60.0
    with pytest.raises(tune.TuneError, match="no power"):
        ctl.tune_fit.result(timeout=120)
    assert ctl.tune_error is None and session.tune_running  # not yet seen by a cycle
    cycle()
    assert ctl.tune_error is not None and "no power delivered" in ctl.tune_error
    assert ctl.phase == "waiting" and ctl.model is None and not session.tune_running
    for _ in range(20):
        cycle()
    assert ctl.phase == "waiting" and ctl.tune is None and ctl.tune_fit is None  # no new tune by itself
    kinds = [e.kind for e in journal.events(session_id=session.session_id)]
    assert kinds.count("tune_failed") == 1 and "tune_model" not in kinds
    journal.close()


def test_an_online_refit_runs_in_the_worker_and_is_installed_on_a_later_cycle(tmp_path: Path, gate: Callable[[str], threading.Event]) -> None:
    opened = gate("_refit")
    ctl = FibreController(plan=shaped_plan(tmp_path), tune_settings=SHORT_TUNE)
    drive = Driver(ctl, Plant(four_gains()))
    drive.tune()
    tuned = ctl.model
    assert tuned is not None and tuned.source == "tune" and ctl.planner is not None and ctl.planner.model is tuned
    drive.until(lambda: ctl.refit is not None, max_s=MPC_REFIT_PERIOD_S + 1.0)
    fut = ctl.refit
    assert fut is not None and not fut.done()
    for _ in range(50):  # the planner goes on with the model it has; no second refit meanwhile
        drive.cycle()
        assert ctl.refit is fut and ctl.model is tuned and ctl.planner.model is tuned
    opened.set()
    online = fut.result(timeout=120)
    assert online is not None and online.source == "online" and ctl.model is tuned
    drive.cycle()
    assert ctl.model is online and ctl.planner.model is online and ctl.refit is None
    ctl.close()


def test_a_refit_of_the_old_position_is_thrown_away(tmp_path: Path, gate: Callable[[str], threading.Event]) -> None:
    opened = gate("_refit")
    ctl = FibreController(plan=shaped_plan(tmp_path), tune_settings=SHORT_TUNE)
    drive = Driver(ctl, Plant(four_gains()))
    drive.tune()
    drive.until(lambda: ctl.refit is not None, max_s=MPC_REFIT_PERIOD_S + 1.0)
    fut = ctl.refit
    assert fut is not None
    ctl.new_position()  # the fibres moved
    opened.set()
    if not fut.cancelled():  # it was running: it ends, and nothing takes its result
        fut.result(timeout=120)
    drive.cycle()
    assert ctl.model is None and ctl.planner is None and ctl.refit is None and ctl.phase == "tuning"
    ctl.close()


def test_the_session_end_shuts_the_fit_worker_down(tmp_path: Path) -> None:
    journal, session = emitting_session(tmp_path)
    ctl = session.controller
    assert ctl is not None
    drive = Driver(ctl, Plant(single_gains()))
    drive.until(lambda: ctl.tune_fit is not None, max_s=60.0)
    worker = ctl._executor
    assert worker is not None
    session.apply(Event.ABORT, "operator stop")
    assert ctl._executor is None and ctl.tune_fit is None
    with pytest.raises(RuntimeError, match="shutdown"):
        worker.submit(lambda: None)
    journal.close()


def test_the_shifted_fopdt_fit_chooses_what_the_full_grid_chooses() -> None:
    """fit_fopdt on the model's uniform grid (one table of responses, shifted per dead time) and
    the full grid (every dead time's responses computed): the same grid point, the same K."""
    rng = np.random.default_rng(7)
    t = np.arange(0.0, tune.FOPDT_WINDOW_S + 1e-9, tune.FOPDT_DT_S)
    for _ in range(60):
        k, tau, theta = rng.uniform(0.1, 30.0), rng.uniform(0.5, 400.0), rng.uniform(0.0, 12.0)
        y = k * -np.expm1(-np.clip(t - theta, 0.0, None) / tau) + rng.normal(0.0, rng.choice([0.0, 0.01, 0.3]), len(t))
        y += rng.uniform(0.0, 5.0) * -np.expm1(-t / rng.uniform(50.0, 300.0))  # a slow tail, as the far field
        fast, full = tune.fit_fopdt(t, y), tune._fit_fopdt_grid(t, y)
        assert (fast.tau_s, fast.dead_time_s) == (full.tau_s, full.dead_time_s)
        assert fast.gain_c_per_w == pytest.approx(full.gain_c_per_w, rel=1e-9) and fast.rms_c == pytest.approx(full.rms_c, rel=1e-6, abs=1e-9)
    odd = np.sort(rng.uniform(0.0, 60.0, 200))  # not a uniform grid: the full grid
    y = 5.0 * -np.expm1(-np.clip(odd - 2.0, 0.0, None) / 20.0)
    assert tune.fit_fopdt(odd, y) == tune._fit_fopdt_grid(odd, y)

"""The controller in the session: FIXED_POWER unchanged, every mode available, the tune's model and
its record, identification on synthetic data, and SHAPED in closed loop on the vessel scenario."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from control_rig import Rig, config
from controller.control import FibreController, needs_model
from controller.journal import Journal
from controller.plan import FibreMode, load_plan
from controller.session import AVAILABLE_MODES, SessionError, TreatmentSession, check_modes_available
from controller.safety_limits import plan_limits
from controller.session_states import State
from controller.tune import (
    BASES,
    DEFAULT_TIP_GAINS,
    Fopdt,
    History,
    IdentificationRun,
    ThermalModel,
    TuneError,
    TuneSettings,
    fit_fopdt,
    fit_model,
    imc_gains,
    regressors,
)
from protocol import ft8 as FT8
from protocol import ls4 as LS4
from safety.supervisor import SafetySupervisor
from sim.world import SimWorld
from test_control_step import four_fibre_plan, single_fibre_plan

FIXED_PLAN = """
[session]
max_session_energy_j = 1000
max_duration_s = 1800
tip_temp_cap_c = 95
endpoint = "all_fibres_at_budget"
[[fibres]]
channel = 0
mode = "FIXED_POWER"
power_w = 3.0
energy_budget_j = 150
[[fibres]]
channel = 2
mode = "FIXED_POWER"
power_w = 2.25
max_power_w = 8.0
energy_budget_j = 150
[[probes]]
channel = 0
role = "tip"
fibre = 0
[[probes]]
channel = 1
role = "tip"
fibre = 2
"""


def snapshots(state: LS4.DeviceState = LS4.DeviceState.EMITTING, temps: tuple[float, ...] = (37.0,) * 8) -> tuple[LS4.LS4Snapshot, FT8.FT8Snapshot]:
    world = SimWorld()
    ls4 = replace(LS4.LS4Snapshot.from_words(world.ls4.input_words()), device_state=state)
    ft8 = replace(FT8.FT8Snapshot.from_words(world.ft8.input_words()), temperature_c=temps)
    return ls4, ft8


def session_for(plan_text: str, tmp_path: Path, state: State = State.EMITTING) -> TreatmentSession:
    cfg = config(tmp_path)
    plan = load_plan(plan_text, limits=cfg.limits)
    journal = Journal(tmp_path / "j.sqlite")
    sid = journal.create_session(plan)
    session = TreatmentSession(session_id=sid, plan=plan, journal=journal, safety=SafetySupervisor(limits=plan_limits(cfg, plan)))
    session.state = state
    return session


def test_every_mode_is_available() -> None:
    assert AVAILABLE_MODES == frozenset(FibreMode)
    cfg = config(Path("/tmp"))
    for text in (single_fibre_plan(80.0), four_fibre_plan(80.0), FIXED_PLAN):
        check_modes_available(load_plan(text, limits=cfg.limits))


def test_fixed_power_proposes_exactly_what_it_did_before(tmp_path: Path) -> None:
    session = session_for(FIXED_PLAN, tmp_path)
    ls4, ft8 = snapshots()
    for t in range(20):  # the same every cycle, from the first: no ramp, no state
        p = session.propose(ls4, ft8, now_s=0.1 * t)
        assert p.setpoint_mw == (3000, 0, 2250, 0) and p.enable == (True, False, True, False)
    # the old call (no FT-8 snapshot) still drives FIXED_POWER
    assert session.propose(ls4).setpoint_mw == (3000, 0, 2250, 0)
    # paused: the same proposal, the LS-4 does not emit anyway
    paused, _ = snapshots(LS4.DeviceState.ARMED)
    assert session.propose(paused, ft8, now_s=3.0).setpoint_mw == (3000, 0, 2250, 0)
    # not armed, or no reading: nothing
    session.state = State.LOADED
    assert session.propose(ls4, ft8).setpoint_mw == (0, 0, 0, 0)
    session.state = State.EMITTING
    assert session.propose(None, ft8).setpoint_mw == (0, 0, 0, 0)


def test_a_fibre_at_its_budget_is_proposed_0(tmp_path: Path) -> None:
    session = session_for(FIXED_PLAN, tmp_path)
    session.safety._session = type("S", (), {"fibre_stopped": {0: None}, "delivered_j": [0.0] * 4})()  # type: ignore[attr-defined]
    ls4, ft8 = snapshots()
    assert session.propose(ls4, ft8, now_s=1.0).setpoint_mw == (0, 0, 2250, 0)


def test_closed_loop_without_the_ft8_snapshot_is_held_at_0(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    session = session_for(single_fibre_plan(80.0), tmp_path)
    ls4, ft8 = snapshots()
    for t in range(5):
        assert session.propose(ls4, now_s=0.1 * t).setpoint_mw == (0, 0, 0, 0)  # an older caller: never blind
    assert "closed-loop-blind" in caplog.text
    p = [session.propose(ls4, ft8, now_s=1.0 + 0.1 * t).setpoint_mw[0] for t in range(5)]
    assert p[-1] > 0  # with the readings it heats


def test_start_tune_only_in_a_session_that_can_emit(tmp_path: Path) -> None:
    session = session_for(single_fibre_plan(80.0), tmp_path, state=State.COMPLETE)
    with pytest.raises(SessionError, match="tune needs"):
        session.start_tune()
    session.state = State.ARMED
    assert "press the footswitch" in session.start_tune()
    with pytest.raises(SessionError, match="already running"):
        session.start_tune()
    assert session.tune_status()["phase"] == "tuning"


def test_needs_model() -> None:
    cfg = config(Path("/tmp"))
    assert not needs_model(load_plan(single_fibre_plan(80.0), limits=cfg.limits))  # TEMPERATURE on its tip probe
    assert not needs_model(load_plan(FIXED_PLAN, limits=cfg.limits))
    margin = single_fibre_plan(55.0).replace("control_probe = 0", "control_probe = 1")
    assert needs_model(load_plan(margin, limits=cfg.limits))
    shaped = four_fibre_plan(80.0).replace('mode = "TEMPERATURE"', 'mode = "SHAPED"')
    shaped = "\n".join(line for line in shaped.splitlines() if not line.startswith(("target_temp_c", "control_probe")))
    assert needs_model(load_plan(shaped, limits=cfg.limits))


def test_a_closed_loop_mode_needing_a_model_tunes_first(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    margin = load_plan(single_fibre_plan(55.0).replace("control_probe = 0", "control_probe = 1"), limits=cfg.limits)
    ctl = FibreController(plan=margin)
    ls4, ft8 = snapshots()
    ls4 = replace(ls4, output_power_mw=(1500, 0, 0, 0), active_setpoint_mw=(1500, 0, 0, 0))
    ctl.step(now_s=0.0, ls4=ls4, ft8=ft8)
    assert ctl.phase == "tuning"
    armed, _ = snapshots(LS4.DeviceState.ARMED)
    ctl2 = FibreController(plan=margin)
    ctl2.step(now_s=0.0, ls4=armed, ft8=ft8)
    assert ctl2.phase == "waiting"  # only once emission starts


# --- identification ---------------------------------------------------------------------------------


def synthetic(weights: np.ndarray, *, seconds: int = 200, seed: int = 0, noise_c: float = 0.03) -> History:
    """Two fibres, three probes, a known model; staggered steps like a tune."""
    rng = np.random.default_rng(seed)
    h = History(fibres=(0, 1), probes=(0, 1, 2))
    h.begin_fit()
    u = np.zeros((seconds, 2))
    u[10:70, 0] = 1.5
    u[30:90, 1] = 1.5
    u[120:160, :] = 0.8
    phi = regressors(u)
    y = 37.0 + np.einsum("tfk,pfk->tp", phi, weights) + rng.normal(0, noise_c, size=(seconds, 3))
    # feed it as the controller does: ten cycles a second, power held over each second
    for t in range(seconds):
        for c in range(10):
            h.add(now_s=t + c * 0.1, power_w=[u[t, 0], u[t, 1], 0, 0], temperature_c=[y[t - 1, 0] if t else 37.0, y[t - 1, 1] if t else 37.0, y[t - 1, 2] if t else 37.0])
    return h


def test_the_fit_recovers_a_known_model() -> None:
    w = np.zeros((3, 2, len(BASES)))
    w[0, 0, 2] = 14.0  # probe 0: fibre 0's near field (lag 15 s) ...
    w[0, 0, 4] = 6.0  # ... and a slow tail
    w[1, 1, 1] = 10.0  # probe 1: fibre 1, lag 4 s
    w[2, 0, 6] = 3.0  # probe 2: both fibres, far field
    w[2, 1, 7] = 2.0
    h = synthetic(w)
    model = fit_model(h)
    t = np.arange(0, 120.0)
    basis = np.stack([b.step(t) for b in BASES])
    for p in range(3):
        scale = max(float((w[p, f] @ basis).max()) for f in range(2))  # the probe's largest response
        for f in range(2):
            err = np.max(np.abs(model.step_response(probe=p, fibre=f, t_s=t) - w[p, f] @ basis))
            assert err < 0.05 * scale + 0.1, (p, f, err)
    assert max(model.rms_c) < 0.06
    assert model.baseline_c == pytest.approx((37.0, 37.0, 37.0), abs=0.05)


def test_model_details_round_trip_and_refuse_garbage() -> None:
    w = np.zeros((3, 2, len(BASES)))
    w[0, 0, 2] = 14.0
    w[1, 1, 1] = 10.0
    model = fit_model(synthetic(w, seconds=120))
    again = ThermalModel.from_details(model.to_details())
    assert again.fibres == model.fibres and again.probes == model.probes
    assert np.allclose(again.theta, model.theta, atol=1e-8)
    assert again.gains(probe=0, fibre=0).kp_w_per_c == pytest.approx(model.gains(probe=0, fibre=0).kp_w_per_c, rel=1e-6)
    bad = model.to_details() | {"version": 2}
    with pytest.raises(TuneError):
        ThermalModel.from_details(bad)
    with pytest.raises(TuneError):
        ThermalModel.from_details(model.to_details() | {"bases": ["lag 1 s"]})
    with pytest.raises(TuneError):
        ThermalModel.from_details({"version": 1})
    negative = model.to_details()
    negative["weights"][0][0][0] = -1.0
    with pytest.raises(TuneError):
        ThermalModel.from_details(negative)


def test_fit_refuses_too_little_or_no_power() -> None:
    h = History(fibres=(0,), probes=(0,))
    h.begin_fit()
    for k in range(100):
        h.add(now_s=0.1 * k, power_w=[0.0] * 4, temperature_c=[37.0] * 8)
    with pytest.raises(TuneError, match="at least"):
        fit_model(h)
    for k in range(100, 400):
        h.add(now_s=0.1 * k, power_w=[0.0] * 4, temperature_c=[37.0] * 8)
    with pytest.raises(TuneError, match="no power"):
        fit_model(h)


def test_history_bins_mean_power_and_the_last_reading() -> None:
    h = History(fibres=(0, 2), probes=(1,))
    h.add(now_s=10.0, power_w=[2.0, 0, 1.0, 0], temperature_c=[None, 40.0])
    h.add(now_s=10.5, power_w=[0.0, 0, 1.0, 0], temperature_c=[None, 41.0])  # 2 W was held 0.5 s
    assert h.add(now_s=11.25, power_w=[0.0, 0, 1.0, 0], temperature_c=[None, None]) == 1
    assert h.u.tolist() == [[1.0, 1.0]]
    assert h.y.tolist() == [[41.0]]  # an invalid reading keeps the last valid one


def test_fopdt_and_imc_gains() -> None:
    t = np.arange(0, 60.0, 0.25)
    y = 17.0 * -np.expm1(-np.clip(t - 1.0, 0, None) / 25.0)
    f = fit_fopdt(t, y)
    assert f.gain_c_per_w == pytest.approx(17.0, rel=0.03) and f.tau_s == pytest.approx(25.0, rel=0.05) and f.dead_time_s == pytest.approx(1.0, abs=0.25)
    g = imc_gains(f)
    assert g.ti_s == pytest.approx(f.tau_s)  # IMC: Ti = tau
    assert g.kp_w_per_c == pytest.approx(f.tau_s / (f.gain_c_per_w * (max(1.5, f.dead_time_s, 0.05 * f.tau_s) + f.dead_time_s)))
    assert g.kaw_1_per_s == pytest.approx(3.0 / g.ti_s)  # tracking time Ti / 3
    assert 0.3 < DEFAULT_TIP_GAINS.kp_w_per_c < 1.5
    slow = imc_gains(Fopdt(gain_c_per_w=7.0, tau_s=180.0, dead_time_s=3.0, rms_c=0.0))
    assert slow.td_s <= 0.5  # the derivative never shakes the power with the probe's noise


def test_tune_settings_are_bounded() -> None:
    with pytest.raises(TuneError):
        TuneSettings(power_w=0.0)
    with pytest.raises(TuneError):
        TuneSettings(on_s=1.0)
    run = IdentificationRun(fibres=(0, 1), probes=(0, 1), max_power_w={0: 1.0, 1: 10.0}, tip_probes={0: (0,), 1: (1,)}, tip_cap_c=95.0)
    assert run.power_w == {0: 1.0, 1: 1.5}  # never above a fibre's cap
    assert run.duration_s == 15.0 + 45.0 + 15.0
    hot = run.step(now_s=0.0, emitting=True, output_w=[0.0] * 4, temperature_c=[95.0 - 12.0, 37.0] + [37.0] * 6)
    assert hot == {0: 0.0, 1: 0.0} and run.stopped_early == {0}  # fibre 0's tip at the tune margin: its step ends


# --- SHAPED in closed loop ------------------------------------------------------------------------------


def shaped_plan() -> str:
    text = four_fibre_plan(80.0).replace('mode = "TEMPERATURE"', 'mode = "SHAPED"').replace('endpoint = "all_fibres_at_budget"', 'endpoint = "margin_lethal"')
    return "\n".join(line for line in text.splitlines() if not line.startswith(("target_temp_c", "control_probe"))) + "\n"


@pytest.fixture(scope="module")
def shaped() -> Rig:
    rig = Rig("vessel_protected_4fibres", shaped_plan())
    rig.load()
    rig.arm_and_press()
    rig.run(300.0)
    yield rig
    rig.close()


def test_shaped_tunes_then_plans_with_a_model_refitted_online(shaped: Rig) -> None:
    rig = shaped
    assert rig.trips == [] and rig.session is not None and rig.session.open
    ctl = rig.session.controller
    assert ctl is not None and ctl.phase == "closed_loop"
    assert ctl.model is not None and ctl.model.source == "online"  # refitted on the treatment's data
    assert ctl.planner is not None and ctl.planner.last_prediction
    kinds = [e.kind for e in rig.journal.events(session_id=rig.session.session_id)]
    assert "tune_model" in kinds


def test_shaped_keeps_tips_below_the_cap_and_protected_below_its_limit(shaped: Rig) -> None:
    rig = shaped
    tips = [p.channel for p in rig.plan.probes if p.role.value == "tip"]
    assert max(max(v for v in rig.trace.probe(p) if not math.isnan(v)) for p in tips) < rig.plan.tip_temp_cap_c
    assert max(v for v in rig.trace.probe(7) if not math.isnan(v)) < 45.0
    assert max(row[7] for row in rig.trace.tissue_c) < 45.0
    assert not [f for f in rig.findings if f.rule.startswith(("protected", "power_clamp", "session_energy"))]


def test_shaped_stays_within_per_fibre_and_total_power(shaped: Rig) -> None:
    rig = shaped
    assert max(max(row) for row in rig.trace.proposed_mw) <= 10_000
    assert max(sum(row) for row in rig.trace.proposed_mw) <= 20_000
    # after the tune every fibre heats: the margins, 16 mm from the nearest tip, begin to warm
    margins = [4, 5, 6]
    assert all(rig.trace.tissue_c[-1][p] > rig.trace.tissue_c[0][p] + 0.3 for p in margins)


def test_a_pull_back_forgets_the_model_and_tunes_again(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    margin = load_plan(single_fibre_plan(55.0).replace("control_probe = 0", "control_probe = 1"), limits=cfg.limits)
    w = np.zeros((3, 1, len(BASES)))
    w[0, 0, 2], w[1, 0, 4], w[2, 0, 6] = 17.0, 7.0, 1.0
    model = ThermalModel(fibres=(0,), probes=(0, 1, 2), weights=w.tolist(), baseline_c=(37.0,) * 3, rms_c=(0.05,) * 3, samples=60)
    ctl = FibreController(plan=margin, model=model)
    assert ctl.ready and [loop.role for loop in ctl.loops] == ["control", "tip_limit"]
    ls4, ft8 = snapshots()
    assert ctl.step(now_s=0.0, ls4=ls4, ft8=ft8).setpoint_mw[0] == 0  # bumpless from 0 ...
    assert ctl.step(now_s=0.1, ls4=ls4, ft8=ft8).setpoint_mw[0] > 0  # ... then heating
    ctl.new_position()
    assert ctl.model is None and not ctl.loops and ctl.phase == "waiting"
    ctl.step(now_s=10.0, ls4=ls4, ft8=ft8)
    assert ctl.phase == "tuning"  # the next emission identifies the new position


PROTECTED_NEAR = str(Path(__file__).parent / "scenarios" / "protected_near_2fibres.toml")
PROTECTED_NEAR_PLAN = """
[session]
max_session_energy_j = 12000
max_duration_s = 3600
tip_temp_cap_c = 95
endpoint = "margin_lethal"
[[fibres]]
channel = 0
mode = "SHAPED"
energy_budget_j = 6000
[[fibres]]
channel = 1
mode = "SHAPED"
energy_budget_j = 6000
[[probes]]
channel = 0
role = "tip"
fibre = 0
[[probes]]
channel = 1
role = "tip"
fibre = 1
[[probes]]
channel = 2
role = "margin"
[[probes]]
channel = 3
role = "protected"
max_temp_c = 44
max_cem43_min = 30
"""


def test_shaped_predicts_heat_on_its_way_to_a_protected_structure() -> None:
    """A structure 8 mm beyond fibre 0, the margin 8 mm beyond fibre 1: the planner holds the
    protected probe at its planning limit (44 - 4 degC) by throttling fibre 0 before the heat
    arrives, while fibre 1 heats the margin at its tip limit."""
    from controller.control import PROTECTED_MARGIN_C, SHAPED_TIP_MARGIN_C

    rig = Rig(PROTECTED_NEAR, PROTECTED_NEAR_PLAN)
    try:
        rig.load()
        rig.arm_and_press()
        rig.run(330.0)
        assert rig.trips == []
        # fibre 1's tip is planned inside the tip back-off band (SHAPED_TIP_MARGIN_C), which the
        # safety layer records, but its law never had to lower what the controller proposed
        assert {f.rule for f in rig.findings} <= {"tip_temp_backoff"}
        assert rig.trace.setpoint_mw == rig.trace.proposed_mw
        protected = [v for v in rig.trace.probe(3) if not math.isnan(v)]
        assert max(protected) < 44.0 - PROTECTED_MARGIN_C + 0.5
        assert max(row[3] for row in rig.trace.tissue_c) < 44.0
        last = rig.trace.setpoint_mw[-300:]  # the last 30 s
        assert np.mean([r[0] for r in last]) < 0.5 * np.mean([r[1] for r in last])  # fibre 0 throttled
        # fibre 1 at its tip limit: planned up to it (the slow tail brings the tip there within the
        # horizon; the protected probe, 16 mm from fibre 1, shares its limit with fibre 0) ...
        ctl = rig.session.controller
        assert ctl is not None and ctl.planner is not None
        assert max(ctl.planner.last_prediction[1]) > 95.0 - SHAPED_TIP_MARGIN_C - 0.5
        assert max(rig.trace.probe(1)[-300:]) < 95.0 - SHAPED_TIP_MARGIN_C + 1.0
        assert min(rig.trace.probe(1)[-300:]) > 95.0 - SHAPED_TIP_MARGIN_C - 5.0
        assert rig.trace.probe(2)[-1] > protected[-1] + 1.5  # ... and the margin ends warmer than the structure
    finally:
        rig.close()

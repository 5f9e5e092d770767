"""Step responses of TEMPERATURE control on the simulated patient, with the safety layer in the loop.

In-process (tests/control_rig.py): the tissue model of a shipped scenario in a SimWorld, the FT-8's
lag and noise, the real SafetySupervisor and LS4Writer over a direct link, one 100 ms cycle at a
time on a frozen clock. The figures are the issue's, measured on the FT-8 readings of the control
probe:

* overshoot: the highest reading above the target after the step;
* settling: from the step until the reading stays within 1 degC of the target;
* steady-state RMS error: over STEADY_S at the end of the run, after the settling limit.

Limits: overshoot <= 1.0 degC, RMS <= 0.3 degC, settling <= 60 s; in the vessel and protected-
structure scenario no protected probe ever above its limit.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from control_rig import Rig, StepFigures, step_figures
from controller.tune import ThermalModel

OVERSHOOT_MAX_C = 1.0
RMS_MAX_C = 0.3
SETTLING_MAX_S = 60.0
STEADY_S = 60.0  # the RMS window: the run's last minute
RUN_S = 150.0  # the settling limit, a margin, then the RMS window

PROBES_1 = """
[[probes]]
channel = 0
role = "tip"
fibre = 0
[[probes]]
channel = 1
role = "margin"
[[probes]]
channel = 2
role = "margin"
"""


def single_fibre_plan(target_c: float) -> str:
    return f"""
[session]
max_session_energy_j = 6000
max_duration_s = 3600
tip_temp_cap_c = 95
endpoint = "all_fibres_at_budget"
[[fibres]]
channel = 0
mode = "TEMPERATURE"
target_temp_c = {target_c}
control_probe = 0
energy_budget_j = 6000
""" + PROBES_1


def four_fibre_plan(target_c: float) -> str:
    fibres = "".join(
        f"""
[[fibres]]
channel = {c}
mode = "TEMPERATURE"
target_temp_c = {target_c}
control_probe = {c}
energy_budget_j = 3000
"""
        for c in range(4)
    )
    probes = "".join(f"\n[[probes]]\nchannel = {c}\nrole = \"tip\"\nfibre = {c}\n" for c in range(4))
    probes += "".join(f"\n[[probes]]\nchannel = {c}\nrole = \"margin\"\n" for c in (4, 5, 6))
    probes += '\n[[probes]]\nchannel = 7\nrole = "protected"\nmax_temp_c = 45\nmax_cem43_min = 60\n'
    return f"""
[session]
max_session_energy_j = 12000
max_duration_s = 3600
tip_temp_cap_c = 95
endpoint = "all_fibres_at_budget"
""" + fibres + probes


def figures(rig: Rig, probe: int, *, target_c: float, step_at_s: float, end_s: float) -> StepFigures:
    t = rig.trace.t_s
    return step_figures(t, rig.trace.probe(probe), target_c=target_c, step_at_s=step_at_s, steady_from_s=end_s - STEADY_S)


def assert_meets_the_issue(fig: StepFigures) -> None:
    assert fig.overshoot_c <= OVERSHOOT_MAX_C, fig
    assert fig.settling_s <= SETTLING_MAX_S, fig
    assert fig.rms_c <= RMS_MAX_C, fig


@pytest.fixture(scope="module")
def single_80() -> Rig:
    """One fibre, 37 -> 80 degC at the tip probe, typical gains (no tune)."""
    rig = Rig("single_fibre", single_fibre_plan(80.0))
    rig.load()
    rig.arm_and_press()
    rig.step_at = rig.world.time_s  # type: ignore[attr-defined]
    rig.run(RUN_S)
    yield rig
    rig.close()


def test_single_fibre_step_to_80_meets_the_issue(single_80: Rig) -> None:
    rig = single_80
    assert rig.trips == [] and rig.session is not None and rig.session.open
    fig = figures(rig, 0, target_c=80.0, step_at_s=rig.step_at, end_s=rig.world.time_s)  # type: ignore[attr-defined]
    assert_meets_the_issue(fig)


def test_the_safety_layer_wrote_what_the_controller_proposed(single_80: Rig) -> None:
    """The controller stays inside the safety layer: nothing was clamped or backed off."""
    rig = single_80
    assert [f.rule for f in rig.findings] == []
    assert rig.trace.setpoint_mw == rig.trace.proposed_mw
    assert max(s[0] for s in rig.trace.setpoint_mw) <= 10_000


def test_the_tip_probe_never_reaches_the_cap(single_80: Rig) -> None:
    assert max(v for v in rig_probe(single_80, 0)) < 95.0 - 5.0  # not even the back-off band


def rig_probe(rig: Rig, probe: int) -> list[float]:
    return [v for v in rig.trace.probe(probe) if not math.isnan(v)]


@pytest.mark.parametrize("target_c", [55.0, 90.0])
def test_single_fibre_steps_to_other_targets_meet_the_issue(target_c: float) -> None:
    rig = Rig("single_fibre", single_fibre_plan(target_c))
    try:
        rig.load()
        rig.arm_and_press()
        start = rig.world.time_s
        rig.run(RUN_S)
        assert rig.trips == []
        assert_meets_the_issue(figures(rig, 0, target_c=target_c, step_at_s=start, end_s=rig.world.time_s))
    finally:
        rig.close()


@pytest.fixture(scope="module")
def four_80() -> Rig:
    """Four fibres around a tumour beside a vessel and the gallbladder, each tip probe to 80 degC."""
    rig = Rig("vessel_protected_4fibres", four_fibre_plan(80.0))
    rig.load()
    rig.arm_and_press()
    rig.step_at = rig.world.time_s  # type: ignore[attr-defined]
    rig.run(RUN_S + 30.0)
    yield rig
    rig.close()


@pytest.mark.parametrize("fibre", [0, 1, 2, 3])
def test_vessel_scenario_four_coupled_loops_meet_the_issue(four_80: Rig, fibre: int) -> None:
    rig = four_80
    assert rig.trips == []
    assert_meets_the_issue(figures(rig, fibre, target_c=80.0, step_at_s=rig.step_at, end_s=rig.world.time_s))  # type: ignore[attr-defined]


def test_vessel_scenario_no_protected_probe_ever_above_its_limit(four_80: Rig) -> None:
    rig = four_80
    assert rig.session is not None
    limit = rig.plan.probe(7).max_temp_c
    assert limit is not None
    assert max(rig_probe(rig, 7)) < limit
    assert max(row[7] for row in rig.trace.tissue_c) < limit  # the truth too, not only the reading
    assert rig.session.cem43_min(7) < rig.plan.probe(7).max_cem43_min  # type: ignore[operator]
    assert not [f for f in rig.findings if f.rule.startswith("protected")]


def test_a_target_change_is_a_step_that_meets_the_issue() -> None:
    rig = Rig("single_fibre", single_fibre_plan(70.0))
    try:
        rig.load()
        rig.arm_and_press()
        rig.run(100.0)
        assert rig.session is not None and rig.session.controller is not None
        step_at = rig.world.time_s
        rig.session.controller.set_target(fibre=0, target_c=80.0)
        rig.run(RUN_S)
        assert rig.trips == []
        assert_meets_the_issue(figures(rig, 0, target_c=80.0, step_at_s=step_at, end_s=rig.world.time_s))
    finally:
        rig.close()


def test_a_pause_is_bumpless_and_resumes_without_overshoot() -> None:
    rig = Rig("single_fibre", single_fibre_plan(75.0))
    try:
        rig.load()
        rig.arm_and_press()
        rig.run(120.0)
        held = rig.trace.setpoint_mw[-1][0]
        rig.release()
        rig.run(20.0)  # the footswitch released for 20 s: the tissue cools
        paused = rig.trace.setpoint_mw[-150:]
        assert all(row[0] == held for row in paused[5:])  # the controller holds, nothing integrates
        cooled = rig.trace.probe(0)[-1]
        assert cooled < 75.0 - 5.0
        rig.press()
        resume_at = rig.world.time_s
        rig.run(RUN_S)
        after = [row[0] for row in rig.trace.setpoint_mw[-round(RUN_S * 10) :]]
        assert after[0] == pytest.approx(held, abs=250)  # continues from the power it had (+ one rate step)
        assert max(np.diff(after)) <= 2.0 * 0.1 * 1000 + 1  # then rises at most at the rate limit
        fig = figures(rig, 0, target_c=75.0, step_at_s=resume_at, end_s=rig.world.time_s)
        assert_meets_the_issue(fig)
        assert rig.trips == []
    finally:
        rig.close()


def test_compiled_and_reference_kernels_drive_the_same_treatment() -> None:
    """The same 20 s, cycle for cycle, with the compiled kernel and with its pure-Python twin."""
    runs = []
    for kernel in ("compiled", "reference"):
        rig = Rig("single_fibre", single_fibre_plan(80.0), kernel=kernel)
        try:
            rig.load()
            rig.arm_and_press()
            rig.run(20.0)
            runs.append(list(rig.trace.proposed_mw))
        finally:
            rig.close()
    assert runs[0] == runs[1]


# --- auto-tune ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tuned() -> Rig:
    """`laserctl tune` on a loaded, armed session: the identification run, then closed loop."""
    rig = Rig("single_fibre", single_fibre_plan(80.0))
    rig.load()
    assert rig.session is not None
    rig.arm_and_press()
    rig.session.start_tune()
    while rig.session.controller is not None and rig.session.controller.phase != "closed_loop":
        rig.cycle()
        assert rig.world.time_s < 200.0
    rig.tune_end = rig.world.time_s  # type: ignore[attr-defined]
    rig.run(RUN_S)
    yield rig
    rig.close()


def test_tune_is_recorded_with_the_session_and_rebuilds_the_model(tuned: Rig) -> None:
    rig = tuned
    assert rig.session is not None
    events = [e for e in rig.journal.events(session_id=rig.session.session_id) if e.kind.startswith("tune")]
    assert [e.kind for e in events] == ["tune_started", "tune_model"]
    details = events[1].details
    assert details is not None
    model = ThermalModel.from_details(details["model"])
    assert model.fibres == (0,) and model.probes == (0, 1, 2)
    # physically sensible: the tip probe heats most, the 10 mm probe least; the fit is tight
    gains = [model.steady_gain_c_per_w(probe=p, fibre=0) for p in (0, 1, 2)]
    assert gains[0] > gains[1] > gains[2] > 0
    assert 10.0 < gains[0] < 40.0
    assert max(model.rms_c) < 0.3
    assert details["gains"]["0"]["kp_w_per_c"] == pytest.approx(model.gains(probe=0, fibre=0).kp_w_per_c, rel=1e-6)
    # the tune's energy is small next to a budget
    assert sum(details["energy_j"]) < 120.0


def test_tuned_loop_meets_the_issue_from_where_the_tune_left_the_tissue(tuned: Rig) -> None:
    rig = tuned
    assert rig.trips == []
    fig = figures(rig, 0, target_c=80.0, step_at_s=rig.tune_end, end_s=rig.world.time_s)  # type: ignore[attr-defined]
    assert_meets_the_issue(fig)


def test_tune_power_is_low_and_stepped(tuned: Rig) -> None:
    rig = tuned
    during = [row[0] for t, row in zip(rig.trace.t_s, rig.trace.setpoint_mw) if t < rig.tune_end]  # type: ignore[attr-defined]
    assert max(during) == 1500  # TUNE_POWER_W, reached at the rate limit (2 W/s: 0.2 W a cycle)
    assert set(during) <= {0, 200, 400, 600, 800, 1000, 1200, 1400, 1500}
    assert sum(1 for p in during if 0 < p < 1500) <= 16  # one ramp up (8 cycles), one step down


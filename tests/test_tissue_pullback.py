"""Pull-back between illuminations: the tissue model moves the fibres, the bench and ablate drive it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from safety.limits import PROBE_RATE_ALLOWANCE_C
from sim.tissue import TissueModel, load_scenario
from sim.tissue.ablate import main as ablate_main
from sim.tissue.run import simulate
from sim.world import BenchError, SimWorld

COARSE_MM = 2.0  # 32^3 voxels: geometry and bookkeeping, not the physics' accuracy


def _model(name: str = "tumour_20mm_2fibres") -> TissueModel:
    return TissueModel(load_scenario(name), grid_mm=COARSE_MM, threads=1)


def test_pull_back_moves_tips_and_riding_tip_probes_only() -> None:
    model = _model()
    before_tips = {f.spec.channel: f.spec.tip_mm for f in model.fibres}
    before_probes = {p.channel: (p.role, p.position_mm) for p in model.scenario.probes}
    model.pull_back(7.5)
    assert model.pullback_remaining_mm == 7.5 and model.pulled_back_mm == 0.0  # a hand takes seconds
    model.step(model.pullback_time_s, [0.0] * 4)
    assert model.pullback_remaining_mm == 0.0
    for f in model.fibres:
        moved = np.subtract(before_tips[f.spec.channel], f.spec.tip_mm)
        assert moved == pytest.approx(np.multiply(f.spec.direction, 7.5))
    for p in model.scenario.probes:
        role, old = before_probes[p.channel]
        shift = math.dist(old, p.position_mm)
        assert shift == pytest.approx(7.5 if role == "tip" else 0.0)
    assert model.pulled_back_mm == 7.5
    assert model.truth()["pulled_back_mm"] == 7.5


def test_the_light_follows_the_fibre() -> None:
    model = _model("single_fibre")
    model.step(2.0, [2.0, 0, 0, 0])
    z_before = _heat_centroid_z(model)
    model.pull_back(10.0)
    model.step(model.pullback_time_s, [0.0] * 4)
    model.step(2.0, [2.0, 0, 0, 0])
    direction_z = model.fibres[0].spec.direction[2]
    assert (z_before - _heat_centroid_z(model)) * direction_z == pytest.approx(10.0, abs=COARSE_MM)


def _heat_centroid_z(model: TissueModel) -> float:
    z = model.grid.axis_mm(2)
    weights = model.heat_w_m3.sum(axis=(0, 1))
    return float((weights * z).sum() / weights.sum())


def test_energy_still_balances_across_a_pull_back() -> None:
    model = _model()
    model.run(60.0, [3.0, 3.0, 0, 0])
    model.pull_back(10.0)
    model.run(60.0, [3.0, 3.0, 0, 0])
    eb = model.energy_balance()
    assert eb.in_j == pytest.approx(2 * 3.0 * 120.0)
    assert abs(eb.residual_fraction) < 1e-6


def test_a_second_position_lengthens_the_zone_along_the_fibres() -> None:
    one, _ = simulate("single_fibre", {0: 3.0}, 300.0, grid_mm=COARSE_MM, threads=1)
    two, _ = simulate("single_fibre", {0: 3.0}, 300.0, grid_mm=COARSE_MM, threads=1, illuminations=2, pullback_mm=10.0)
    along = lambda m: int(m.coagulated.any(axis=(0, 1)).sum())  # noqa: E731 - voxels along z with any damage
    assert along(two) >= along(one) + 10.0 / COARSE_MM - 1


@pytest.mark.parametrize("distance", [0.0, -5.0, 31.0])
def test_out_of_range_distances_are_refused(distance: float) -> None:
    with pytest.raises(ValueError, match="pull-back distance"):
        _model().pull_back(distance)


def test_a_tip_leaving_the_grid_is_refused_and_nothing_moves() -> None:
    model = _model()
    model.pull_back(25.0)
    model.step(model.pullback_time_s, [0.0] * 4)
    tips = [f.spec.tip_mm for f in model.fibres]
    with pytest.raises(ValueError, match="outside the grid") as info:
        model.pull_back(25.0)
    assert "\n" not in str(info.value)
    assert model.pullback_remaining_mm == 0.0 and [f.spec.tip_mm for f in model.fibres] == tips


def test_one_pull_back_at_a_time() -> None:
    model = _model()
    model.pull_back(5.0)
    with pytest.raises(ValueError, match="under way"):
        model.pull_back(5.0)


def test_a_riding_probe_sweeps_through_the_tissue_instead_of_jumping() -> None:
    """The safety layer's plausibility rule (at its strictest, 20 degC/s plus 1 degC per FT-8 sample)
    must not take a pull-back for a broken probe."""
    model = TissueModel(load_scenario("tumour_20mm_2fibres"), threads=1)  # 1 mm: the gradient beside a charred tip
    model.run(300.0, [3.0, 3.0, 0, 0])
    model.pull_back(10.0)
    sample_s = 0.05
    readings = [model.probe_temperature_c()[0]]
    while model.pullback_remaining_mm > 0.0:
        model.step(sample_s, [0.0] * 4)
        readings.append(model.probe_temperature_c()[0])
    assert readings[0] - readings[-1] > 5.0  # it did leave the hot zone
    assert max(abs(b - a) for a, b in zip(readings, readings[1:])) < 20.0 * sample_s + PROBE_RATE_ALLOWANCE_C


def test_bench_pullback_needs_the_tissue_model() -> None:
    with pytest.raises(BenchError, match="--scenario"):
        SimWorld().bench(["pullback", "10"])


def test_bench_pullback_moves_the_served_patient() -> None:
    world = SimWorld(thermal=_model())
    truth = world.bench(["pullback", "10"])
    assert truth["tissue"]["pullback_remaining_mm"] == 10.0
    world.clock.freeze()
    truth = world.bench(["clock", "step", "30000"])
    assert truth["tissue"]["pulled_back_mm"] == 10.0 and truth["tissue"]["pullback_remaining_mm"] == 0.0
    with pytest.raises(BenchError, match="pull-back distance"):
        world.bench(["pullback", "0"])


def test_ablate_illuminations_need_a_pullback(capsys: pytest.CaptureFixture[str]) -> None:
    code = ablate_main(["--scenario", "single_fibre", "--power", "0=2", "--seconds", "30", "--illuminations", "2", "--grid-mm", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "pull-back" in err and err.count("\n") == 1


def test_ablate_reports_the_whole_run(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--scenario", "single_fibre", "--power", "0=2", "--seconds", "30", "--illuminations", "2", "--pullback-mm", "5", "--cooldown", "20", "--grid-mm", "2", "--json"]
    assert ablate_main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["seconds"] == pytest.approx(80.0)
    assert r["energy_j"] == pytest.approx(120.0)

"""Verification of the tissue model against analytic solutions, conservation and grid refinement."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from sim.thermal import ThermalModel
from sim.tissue import TissueModel, load_thermal_model, parse_scenario
from sim.tissue.light import diffuse_basis, escaped_fraction_bound
from sim.tissue.metrics import coagulated_run, equivalent_diameter_mm, fibre_extents

THREADS = 1  # the tests share two cores with the rest of the suite; one thread is the steady choice


def scenario(*, size_mm: float, spacing_mm: float, fibres: list[dict[str, Any]], tissue: dict[str, Any] | None = None, **extra: Any):
    doc: dict[str, Any] = {"name": "test", "grid": {"size_mm": [size_mm] * 3, "spacing_mm": spacing_mm}, "fibres": fibres, **extra}
    if tissue:
        doc["tissue"] = tissue
    return parse_scenario(doc)


FIBRE_Z = [{"channel": 0, "tip_mm": [0, 0, -1], "direction": [0, 0, 1]}]


def test_steady_point_source_matches_the_analytic_solution() -> None:
    """T - 37 = P / (4 pi k r) exp(-r / L), L = sqrt(k / (w rho_b c_b)), within 2 % for r = 3..15 mm."""
    h = 0.5
    sc = scenario(
        size_mm=48, spacing_mm=h,
        fibres=[{"channel": 0, "tip_mm": [h / 2] * 3, "direction": [0, 0, 1], "emission": "point_heat"}],
        # the upper end of liver perfusion (L = 2.9 mm) keeps the 24 mm to the boundary at 3 L beyond 15 mm
        tissue={"perfusion_1_s": 0.016, "perfusion_stops_when_coagulated": False},
    )  # fmt: skip
    model = TissueModel(sc, threads=THREADS)
    power_w = 1.0
    model.run(600.0, [power_w, 0, 0, 0], chunk_s=600.0)  # 10 perfusion time constants: steady to < 0.2 %
    k = sc.tissue.conductivity_w_m_k
    length_mm = sc.tissue.perfusion_length_mm
    assert length_mm == pytest.approx(2.925, abs=0.01)
    src = np.asarray(model.grid.index_of([h / 2] * 3))
    errors = []
    for direction in ((1, 0, 0), (0, -1, 0), (0, 0, 1), (1, 1, 0), (1, -1, 1), (2, 1, 0)):
        d = np.asarray(direction)
        for n in range(1, 40):
            r_mm = n * h * float(np.linalg.norm(d))
            if not 3.0 - 1e-9 <= r_mm <= 15.0 + 1e-9:
                continue
            numeric = model.temperature_c[tuple(src + n * d)] - 37.0
            analytic = power_w / (4 * math.pi * k * r_mm / 1000.0) * math.exp(-r_mm / length_mm)
            errors.append((abs(numeric / analytic - 1.0), r_mm, direction))
    worst = max(errors)
    assert len(errors) > 60
    assert worst[0] <= 0.02, f"worst relative error {worst[0]:.4f} at r = {worst[1]:.2f} mm along {worst[2]}"


def test_energy_balance_closes_over_600_s() -> None:
    """Power in = heat stored + carried off by perfusion + lost at the boundary, within 0.5 %."""
    sc = scenario(size_mm=40, spacing_mm=1.0, fibres=FIBRE_Z)
    model = TissueModel(sc, threads=THREADS)
    model.run(600.0, [1.2, 0, 0, 0])
    eb = model.energy_balance()
    delivered = 1.2 * 600.0
    assert eb.in_j == pytest.approx(delivered, rel=1e-12)
    assert eb.char_loss_j == 0.0 and eb.vessels_j == 0.0
    stored = float((model.temperature_c - 37.0).sum()) * sc.tissue.volumetric_heat_capacity_j_m3_k * 1e-9
    assert eb.stored_j == pytest.approx(stored, rel=1e-12)
    assert eb.stored_j > 0.1 * delivered and eb.perfusion_j > 0.1 * delivered and eb.boundary_j > 0.0
    assert abs(delivered - eb.stored_j - eb.perfusion_j - eb.boundary_j) <= 0.005 * delivered


def test_energy_balance_with_vessels_and_char() -> None:
    sc = scenario(
        size_mm=40, spacing_mm=1.0, fibres=FIBRE_Z,
        vessels=[{"point_mm": [7, 0, 0], "direction": [0, 1, 0], "radius_mm": 2.5}],
    )  # fmt: skip
    model = TissueModel(sc, threads=THREADS)
    model.run(300.0, [4.0, 0, 0, 0])
    eb = model.energy_balance()
    assert model.char_fraction[0] > 0.9
    assert eb.vessels_j > 0.02 * eb.in_j and eb.char_loss_j > 0.05 * eb.in_j
    assert abs(eb.residual_fraction) < 0.005


def test_energy_ledger_of_compiled_and_numpy_kernels_agree() -> None:
    sc = scenario(size_mm=24, spacing_mm=1.0, fibres=FIBRE_Z, vessels=[{"point_mm": [5, 0, 0], "direction": [0, 1, 0], "radius_mm": 1.5}])
    a, b = TissueModel(sc, kernel="compiled", threads=2), TissueModel(sc, kernel="numpy")
    for m in (a, b):
        m.run(120.0, [3.0, 0, 0, 0])
    np.testing.assert_allclose(a.temperature_c, b.temperature_c, rtol=1e-9)
    np.testing.assert_allclose(a.omega, b.omega, rtol=1e-9)
    for x, y in zip(vars(a.energy_balance()).values(), vars(b.energy_balance()).values()):
        assert x == pytest.approx(y, rel=1e-9, abs=1e-9)


def _single_fibre_lesion(spacing_mm: float) -> tuple[float, float]:
    sc = scenario(size_mm=40, spacing_mm=spacing_mm, fibres=FIBRE_Z)
    model = TissueModel(sc, threads=THREADS)
    model.run(600.0, [1.5, 0, 0, 0])
    assert model.tip_max_temp_c[0] < 100.0  # no char: the comparison is about the discretisation
    _, across, _, _ = fibre_extents(model, 0)
    volume = float(model.coagulated.sum()) * model.grid.voxel_volume_mm3
    return across, equivalent_diameter_mm(volume)


def test_coagulated_diameter_converges_from_1_mm_to_half_mm() -> None:
    coarse, fine = _single_fibre_lesion(1.0), _single_fibre_lesion(0.5)
    assert fine[0] > 8.0  # a lesion worth measuring
    assert abs(coarse[0] / fine[0] - 1.0) <= 0.05, f"across: {coarse[0]:.2f} mm at 1 mm, {fine[0]:.2f} mm at 0.5 mm"
    assert abs(coarse[1] / fine[1] - 1.0) <= 0.05, f"equivalent diameter: {coarse[1]:.2f} mm at 1 mm, {fine[1]:.2f} mm at 0.5 mm"


def test_a_large_vessel_is_a_heat_sink() -> None:
    """Coagulation reaches less far toward a 5 mm vessel than away from it."""
    sc = scenario(size_mm=40, spacing_mm=1.0, fibres=FIBRE_Z, vessels=[{"point_mm": [9, 0, 0], "direction": [0, 1, 0], "radius_mm": 2.5}])
    model = TissueModel(sc, threads=THREADS)
    model.run(600.0, [1.8, 0, 0, 0])
    away, toward = coagulated_run(model, model.fibres[0].source_mm, (1, 0, 0))
    away = -away
    assert away > 5.0
    assert toward < away - 1.0, f"toward the vessel {toward:.1f} mm, away {away:.1f} mm"
    assert not model.coagulated[model.vessel_mask].any()
    assert np.all(model.temperature_c[model.vessel_mask] == 37.0)


def test_perfusion_stops_where_coagulated() -> None:
    sc = scenario(size_mm=32, spacing_mm=1.0, fibres=FIBRE_Z)
    model = TissueModel(sc, threads=THREADS)
    model.run(300.0, [1.5, 0, 0, 0])
    coag = model.coagulated
    assert coag.sum() > 50
    assert np.all(model._perfusion[coag] == 0.0)
    assert np.all(model._perfusion[~coag] == pytest.approx(sc.tissue.perfusion_rate_1_s))


def test_char_concentrates_light_at_the_tip_and_shrinks_the_lesion() -> None:
    sc = scenario(size_mm=40, spacing_mm=1.0, fibres=FIBRE_Z)
    charring, clean = TissueModel(sc, threads=THREADS), TissueModel(sc.with_tissue(char_absorbed_fraction_max=0.0), threads=THREADS)
    for m in (charring, clean):
        m.run(600.0, [3.0, 0, 0, 0])
    assert charring.char_fraction[0] > 0.99 and clean.char_fraction[0] > 0.99  # both boiled at the tip...
    tip = charring.grid.index_of(sc.fibres[0].tip_mm)
    assert charring.heat_w_m3[tip] > 3 * clean.heat_w_m3[tip]  # ...but only the first absorbs at the tip
    assert charring.tip_max_temp_c[0] > clean.tip_max_temp_c[0] + 50.0
    assert charring.coagulated.sum() < 0.8 * clean.coagulated.sum()  # deep heating suffers


def test_no_char_below_100_c() -> None:
    sc = scenario(size_mm=32, spacing_mm=1.0, fibres=FIBRE_Z)
    model = TissueModel(sc, threads=THREADS)
    model.run(300.0, [1.0, 0, 0, 0])
    assert model.tip_max_temp_c[0] < 100.0 and model.char_fraction == [0.0]


def test_no_power_no_change() -> None:
    """A broken fibre (the LS-4 reports 0 W at the tip) heats nothing."""
    model = load_thermal_model("single_fibre")
    for _ in range(20):
        model.step(0.5, [0.0, 2.0, 2.0, 2.0])  # channels without a fibre in this scenario deliver nowhere
    assert np.all(model.temperature_c == 37.0)
    assert model.probe_temperature_c()[0] == 37.0


def test_the_light_basis_deposits_the_power_forward_of_the_tip() -> None:
    sc = scenario(size_mm=40, spacing_mm=1.0, fibres=FIBRE_Z)
    model = TissueModel(sc, threads=THREADS)
    f = model.fibres[0]
    assert f.diffuse is not None
    assert f.diffuse.fraction.sum() == pytest.approx(1.0, rel=1e-12)
    bound = escaped_fraction_bound(model.grid, source_mm=f.source_mm, mu_eff_1_mm=sc.tissue.mu_eff_1_mm)
    assert 0.0 <= f.escaped <= bound < 0.01
    z = model.grid.axis_mm(2)
    centroid_z = float((f.diffuse.fraction.sum(axis=(0, 1)) * z).sum())
    assert centroid_z == pytest.approx(-1.0 + sc.tissue.transport_mean_free_path_mm, abs=0.05)
    # the cell averages converge: a finer grid puts the same power within 3 mm of the source
    fine = diffuse_basis(sc.grid.grid(0.5), source_mm=f.source_mm, mu_eff_1_mm=sc.tissue.mu_eff_1_mm)
    near = lambda grid, frac: float(frac[grid.sphere_mask(f.source_mm, 3.0)].sum())  # noqa: E731
    mu3 = sc.tissue.mu_eff_1_mm * 3.0
    assert near(sc.grid.grid(0.5), fine.fraction) == pytest.approx(1 - (1 + mu3) * math.exp(-mu3), abs=0.02)


def test_probes_read_the_interpolated_tissue_temperature() -> None:
    sc = scenario(
        size_mm=20, spacing_mm=1.0, fibres=FIBRE_Z,
        probes=[
            {"channel": 3, "position_mm": [2.5, 0.5, 0.5], "role": "tip"},  # a voxel centre
            {"channel": 6, "position_mm": [3.0, 0.5, 0.5], "role": "margin"},  # between two centres
        ],
    )  # fmt: skip
    model = TissueModel(sc, threads=THREADS)
    model.run(30.0, [2.0, 0, 0, 0])
    probes = model.probe_temperature_c()
    assert len(probes) == 8 and [i for i, p in enumerate(probes) if p is not None] == [3, 6]
    g = model.grid
    a, b = g.index_of([2.5, 0.5, 0.5]), g.index_of([3.5, 0.5, 0.5])
    assert probes[3] == pytest.approx(model.temperature_c[a], rel=1e-12)
    assert probes[6] == pytest.approx(0.5 * (model.temperature_c[a] + model.temperature_c[b]), rel=1e-12)
    assert probes[3] > probes[6] > 37.0


def test_any_step_size_is_stable() -> None:
    sc = scenario(size_mm=24, spacing_mm=0.5, fibres=FIBRE_Z)
    model = TissueModel(sc, threads=THREADS)
    for dt in (0.01, 7.3, 0.26, 31.0):
        model.step(dt, [3.0, 0, 0, 0])
    t = model.temperature_c
    assert np.isfinite(t).all() and t.min() >= 37.0 - 1e-9
    assert model.time_s == pytest.approx(0.01 + 7.3 + 0.26 + 31.0)


def test_the_served_model_is_a_thermal_model() -> None:
    model: ThermalModel = load_thermal_model("tumour_35mm_4fibres")
    assert 0 < model.preferred_dt_s <= 0.1
    model.step(model.preferred_dt_s, [2.0, 2.0, 2.0, 2.0])
    readings = model.probe_temperature_c()
    assert len(readings) == 8 and all(r is not None and r >= 37.0 for r in readings)

"""The compiled bioheat kernel: built by the install, equal to its numpy twin, exact where it must be."""

from __future__ import annotations

import importlib.machinery
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cython_ext.bioheat as compiled
from bioheat_fields import random_fields
from cython_ext import bioheat_ref as reference
from sim.tissue.properties import GAS_CONSTANT_J_MOL_K, LIVER_ARRHENIUS_A_1_S, LIVER_ARRHENIUS_EA_J_MOL

LN_A = math.log(LIVER_ARRHENIUS_A_1_S)
EA_OVER_R = LIVER_ARRHENIUS_EA_J_MOL / GAS_CONSTANT_J_MOL_K


def test_the_kernel_is_a_compiled_extension() -> None:
    assert compiled.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))




@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 12)),
    steps=st.integers(1, 6),
    threads=st.integers(1, 3),
    a=st.floats(0.0, 1.0 / 6.0),
    dt_s=st.floats(0.01, 2.0),
    t_max=st.floats(37.0, 400.0),
    vessel_fraction=st.sampled_from([0.0, 0.1, 0.5]),
    stops=st.booleans(),
)
def test_compiled_equals_reference_on_random_fields(seed, shape, steps, threads, a, dt_s, t_max, vessel_fraction, stops) -> None:
    t, heat, perf, vessel, rows, omega, cem, peak = random_fields(seed, shape, t_max=t_max, vessel_fraction=vessel_fraction)
    kw = dict(
        steps=steps, a=a, dt_s=dt_s, body_c=37.0, arrhenius_min_c=43.0, cem_min_c=39.0,
        ln_a=LN_A, ea_over_r=EA_OVER_R, coagulated_omega=1.0 if stops else math.inf,
    )  # fmt: skip
    out_c, out_r = np.full_like(t, 37.0), np.full_like(t, 37.0)
    fc = [x.copy() for x in (perf, omega, cem, peak)]
    fr = [x.copy() for x in (perf, omega, cem, peak)]
    ring = np.full((max(steps - 1, 1), 3, shape[1] + 2, shape[2] + 2), 37.0)
    totals_c = compiled.sweep(t, out_c, ring, heat, fc[0], vessel, rows, fc[1], fc[2], fc[3], threads=threads, **kw)
    totals_r = reference.sweep(t, out_r, None, heat, fr[0], vessel, rows, fr[1], fr[2], fr[3], **kw)
    np.testing.assert_allclose(out_c, out_r, rtol=1e-9, atol=0)
    for got, want in zip(fc, fr):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-300)
    assert totals_c[3] == totals_r[3]
    for got, want in zip(totals_c[:3], totals_r[:3]):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("kernel", [compiled, reference], ids=["compiled", "numpy"])
@pytest.mark.parametrize("temp_c", [40.0, 42.5, 43.0, 47.0, 55.0, 70.0])
def test_omega_and_cem43_are_exact_for_a_constant_temperature(kernel, temp_c: float) -> None:
    # A uniform field whose boundary and body temperature equal it stays exactly constant.
    shape = (4, 5, 6)
    t = np.full((6, 7, 8), temp_c)
    out = t.copy()
    perf = np.full(shape, 0.0064)
    omega, cem, peak = np.zeros(shape), np.zeros(shape), np.full(shape, 37.0)
    vessel = np.zeros(shape, np.uint8)
    rows = np.zeros(shape[:2], np.uint8)
    ring = np.full((3, 3, 7, 8), temp_c)
    elapsed = 0.0
    for steps, dt in ((1, 0.5), (4, 0.25), (3, 1.1), (2, 0.05)):
        kernel.sweep(t, out, ring, np.zeros(shape), perf, vessel, rows, omega, cem, peak,
                     steps=steps, a=0.125, dt_s=dt, body_c=temp_c, arrhenius_min_c=43.0, cem_min_c=39.0,
                     ln_a=LN_A, ea_over_r=EA_OVER_R)  # fmt: skip
        t, out = out, t
        elapsed += steps * dt
        assert np.all(t == temp_c)
    want_omega = elapsed * LIVER_ARRHENIUS_A_1_S * math.exp(-LIVER_ARRHENIUS_EA_J_MOL / (GAS_CONSTANT_J_MOL_K * (temp_c + 273.15)))
    r = 0.5 if temp_c >= 43.0 else 0.25
    want_cem = elapsed / 60.0 * r ** (43.0 - temp_c)
    if temp_c > 43.0:
        np.testing.assert_allclose(omega, want_omega, rtol=1e-12)
    else:
        assert np.all(omega == 0.0)  # Arrhenius is integrated only above 43 degC (docs/physics.md)
    np.testing.assert_allclose(cem, want_cem, rtol=1e-12)
    np.testing.assert_allclose(peak, temp_c)


def test_one_minute_at_43_is_one_cem43_minute() -> None:
    shape = (3, 3, 3)
    t = np.full((5, 5, 5), 43.0 + 1e-12)
    cem = np.zeros(shape)
    compiled.sweep(t, t.copy(), np.full((1, 3, 5, 5), 43.0), np.zeros(shape), np.zeros(shape), np.zeros(shape, np.uint8),
                   np.zeros((3, 3), np.uint8), np.zeros(shape), cem, np.zeros(shape),
                   steps=1, a=0.1, dt_s=60.0, body_c=43.0, arrhenius_min_c=43.0, cem_min_c=39.0, ln_a=LN_A, ea_over_r=EA_OVER_R)  # fmt: skip
    np.testing.assert_allclose(cem, 1.0, rtol=1e-9)


def test_steps_fused_in_one_sweep_equal_single_steps() -> None:
    t, heat, perf, vessel, rows, omega, cem, peak = random_fields(7, (10, 8, 9), t_max=42.0, vessel_fraction=0.05)
    fused = np.full_like(t, 37.0)
    ring = np.full((4, 3, 10, 11), 37.0)
    args = dict(body_c=37.0, arrhenius_min_c=43.0, cem_min_c=39.0, ln_a=LN_A, ea_over_r=EA_OVER_R, a=0.15, dt_s=0.3)
    compiled.sweep(t, fused, ring, heat, perf.copy(), vessel, rows, omega.copy(), cem.copy(), peak.copy(), steps=5, threads=2, **args)
    a, b = t.copy(), np.full_like(t, 37.0)
    for _ in range(5):
        compiled.sweep(a, b, ring, heat, perf.copy(), vessel, rows, omega.copy(), cem.copy(), peak.copy(), steps=1, **args)
        a, b = b, a
    np.testing.assert_allclose(fused, a, rtol=1e-13)


def test_bad_shapes_are_refused() -> None:
    t, heat, perf, vessel, rows, omega, cem, peak = random_fields(1, (4, 4, 4), t_max=50.0, vessel_fraction=0.0)
    kw = dict(steps=2, a=0.1, dt_s=0.1, body_c=37.0, arrhenius_min_c=43.0, cem_min_c=39.0, ln_a=LN_A, ea_over_r=EA_OVER_R)
    ring = np.full((1, 3, 6, 6), 37.0)
    with pytest.raises(ValueError, match="t_out"):
        compiled.sweep(t, np.zeros((5, 6, 6)), ring, heat, perf, vessel, rows, omega, cem, peak, **kw)
    with pytest.raises(ValueError, match="ring"):
        compiled.sweep(t, t.copy(), np.zeros((1, 3, 5, 6)), heat, perf, vessel, rows, omega, cem, peak, **kw)
    with pytest.raises(ValueError, match="different"):
        compiled.sweep(t, t, ring, heat, perf, vessel, rows, omega, cem, peak, **kw)

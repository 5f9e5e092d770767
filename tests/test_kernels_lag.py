"""The compiled lag kernel is built by the normal install and agrees with its pure-Python twin."""

from __future__ import annotations

import importlib.machinery

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cython_ext.lag as compiled
from cython_ext import lag_ref

finite = st.floats(min_value=-200.0, max_value=200.0, allow_nan=False)


def test_the_kernel_is_a_compiled_extension() -> None:
    assert compiled.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(finite, finite), min_size=1, max_size=16),
    st.floats(min_value=0.0, max_value=5.0),
    st.floats(min_value=0.0, max_value=5.0),
)
def test_compiled_equals_reference(pairs, dt_s: float, tau_s: float) -> None:
    state = np.array([p[0] for p in pairs])
    target = np.array([p[1] for p in pairs])
    expected = list(state)
    lag_ref.lag_step(expected, list(target), dt_s, tau_s)
    compiled.lag_step(state, target, dt_s, tau_s)
    assert state.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_one_time_constant_reaches_63_percent() -> None:
    state = np.zeros(8)
    compiled.lag_step(state, np.ones(8), 0.2, 0.2)
    assert state == pytest.approx(1 - np.exp(-1))


def test_steps_compose_exactly_for_a_constant_target() -> None:
    a, b = np.zeros(1), np.zeros(1)
    for _ in range(10):
        compiled.lag_step(a, np.ones(1), 0.01, 0.2)
    compiled.lag_step(b, np.ones(1), 0.1, 0.2)
    assert a[0] == pytest.approx(b[0], rel=1e-12)

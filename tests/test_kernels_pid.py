"""The fibre PID kernel: compiled and reference agree to 1e-9, and each feature does its job."""

from __future__ import annotations

import importlib.machinery

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cython_ext.fibre_pid as compiled
from cython_ext import fibre_pid_ref as reference

N = 4
gains = st.tuples(
    st.floats(0, 2000), st.floats(0, 200), st.floats(0, 2000), st.floats(0.05, 5.0), st.floats(0, 5.0)
)
temps = st.floats(20.0, 120.0)


def _arrays(step: dict) -> tuple:
    return (
        np.array(step["measured"]),
        np.array(step["target"]),
        np.array(step["max_out"]),
        np.array(step["rate"]),
        np.array(step["active"], dtype=np.uint8),
    )


cycle = st.fixed_dictionaries(
    {
        "dt": st.floats(0.01, 1.0),
        "measured": st.lists(temps, min_size=N, max_size=N),
        "target": st.lists(temps, min_size=N, max_size=N),
        "max_out": st.lists(st.floats(0, 10_000), min_size=N, max_size=N),
        "rate": st.lists(st.floats(0, 20_000), min_size=N, max_size=N),
        "active": st.lists(st.sampled_from([0, 1, 1, 1]), min_size=N, max_size=N),
        "reset": st.one_of(st.none(), st.tuples(st.integers(0, N - 1), st.floats(0, 10_000))),
    }
)


def test_the_kernel_is_compiled() -> None:
    assert compiled.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


@settings(max_examples=200, deadline=None)
@given(st.lists(gains, min_size=N, max_size=N), st.lists(cycle, min_size=1, max_size=30))
def test_compiled_equals_reference(channel_gains, cycles) -> None:
    fast, slow = compiled.FibrePid(N), reference.FibrePid(N)
    for i, g in enumerate(channel_gains):
        fast.set_gains(i, *g)
        slow.set_gains(i, *g)
    out_fast, out_slow = np.zeros(N), [0.0] * N
    for c in cycles:
        if c["reset"] is not None:
            fast.reset_channel(*c["reset"])
            slow.reset_channel(*c["reset"])
        fast.step(c["dt"], *_arrays(c), out_fast)
        slow.step(c["dt"], c["measured"], c["target"], c["max_out"], c["rate"], c["active"], out_slow)
        assert out_fast.tolist() == pytest.approx(out_slow, rel=1e-9, abs=1e-9)
        for i in range(N):
            assert fast.state(i) == pytest.approx(slow.state(i), rel=1e-9, abs=1e-9)


def _one(kp=100.0, ki=10.0, kd=0.0, tau_d=0.5, kaw=1.0, impl=compiled):
    pid = impl.FibrePid(1)
    pid.set_gains(0, kp, ki, kd, tau_d, kaw)
    return pid


def _step(pid, measured, target, *, dt=0.1, max_out=10_000.0, rate=1e9, active=1) -> float:
    out = np.zeros(1)
    pid.step(dt, np.array([measured]), np.array([target]), np.array([max_out]), np.array([rate]), np.array([active], dtype=np.uint8), out)
    return float(out[0])


def test_output_never_leaves_0_to_max() -> None:
    pid = _one(kp=1e6)
    assert _step(pid, 37.0, 90.0, max_out=3000.0) == 3000.0
    assert _step(pid, 120.0, 90.0, max_out=3000.0) == 0.0


def test_rate_limit_bounds_each_step() -> None:
    pid = _one(kp=1e6)
    outs = [_step(pid, 37.0, 90.0, rate=500.0) for _ in range(5)]
    assert outs == pytest.approx([50.0, 100.0, 150.0, 200.0, 250.0])


def test_anti_windup_keeps_the_integral_within_the_output_range() -> None:
    pid = _one(kp=0.0, ki=1000.0, kaw=2.0)
    for _ in range(1000):
        _step(pid, 37.0, 90.0, max_out=2000.0)
    integral = pid.state(0)[0]
    assert integral <= 2000.0
    # once the target is reached, the output falls at once instead of unwinding for minutes
    assert _step(pid, 95.0, 90.0, max_out=2000.0) < 2000.0


def test_derivative_acts_on_the_measurement_so_a_target_step_does_not_kick() -> None:
    pid = _one(kp=0.0, ki=0.0, kd=1000.0)
    _step(pid, 50.0, 60.0)
    assert _step(pid, 50.0, 90.0) == 0.0  # target jumped, measurement did not: no derivative kick
    rising = _step(pid, 52.0, 90.0)
    assert rising == 0.0  # rising temperature: derivative pushes power down (clamped at 0)


def test_bumpless_transfer_continues_from_the_applied_power() -> None:
    pid = _one(kp=10.0, ki=1.0)
    pid.reset_channel(0, 2500.0)
    first = _step(pid, 80.0, 80.0)  # no error: the output stays where the channel was
    assert first == pytest.approx(2500.0)


def test_an_inactive_channel_outputs_zero_and_forgets() -> None:
    pid = _one()
    _step(pid, 37.0, 90.0)
    assert _step(pid, 37.0, 90.0, active=0) == 0.0
    assert pid.state(0)[0] == 0.0 and pid.state(0)[4] is False


@pytest.mark.parametrize("impl", [compiled, reference], ids=["compiled", "reference"])
def test_bad_arguments_are_refused(impl) -> None:
    pid = impl.FibrePid(2)
    with pytest.raises(ValueError):
        pid.set_gains(0, -1, 0, 0, 1, 0)
    with pytest.raises(IndexError):
        pid.set_gains(5, 1, 0, 0, 1, 0)
    with pytest.raises(ValueError):
        impl.FibrePid(0)
    with pytest.raises(ValueError):
        pid.step(0.0, np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(2, dtype=np.uint8), np.zeros(2))

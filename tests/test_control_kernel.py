"""The control kernel (cython_ext/fibre_control.pyx): compiled and reference twin agree to 1e-9, and
each feature does its job: limits, rate limits, modes, bumpless transfer, override selection,
tracking anti-windup, the reference trajectory; the SHAPED solver finds the constrained optimum."""

from __future__ import annotations

import importlib.machinery
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cython_ext.fibre_control as compiled
from cython_ext import fibre_control_ref as reference

N_CH = 4
N_LOOPS = 6
N_PROBES = 8
IMPLS = pytest.mark.parametrize("impl", [compiled, reference], ids=["compiled", "reference"])


def test_the_kernel_is_compiled() -> None:
    assert compiled.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    assert (compiled.OFF, compiled.PASS, compiled.LOOPS, compiled.HOLD) == (reference.OFF, reference.PASS, reference.LOOPS, reference.HOLD)


# --- compiled == reference ------------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
loop_st = st.tuples(
    st.integers(-1, N_CH - 1),  # channel
    st.integers(0, N_PROBES - 1),  # probe
    st.floats(0, 20), st.floats(0, 2), st.floats(0, 20),  # kp ki kd
    st.floats(0.05, 5.0), st.floats(0, 2.0),  # tau_d kaw
    st.one_of(st.just(math.inf), st.floats(0.01, 10.0)), st.floats(0, 20.0),  # ref_rate ref_tau
    st.floats(20.0, 110.0),  # target
)
channel_st = st.tuples(st.floats(0, 10), st.one_of(st.just(math.inf), st.floats(0.01, 50)), st.one_of(st.just(math.inf), st.floats(0.01, 50)))
cycle_st = st.fixed_dictionaries(
    {
        "dt": st.floats(0.01, 1.0),
        "measured": st.lists(st.floats(20.0, 120.0), min_size=N_PROBES, max_size=N_PROBES),
        "applied": st.lists(st.floats(0.0, 10.0), min_size=N_CH, max_size=N_CH),
        "requests": st.lists(st.floats(-1.0, 12.0), min_size=N_CH, max_size=N_CH),
        "mode": st.one_of(st.none(), st.tuples(st.integers(0, N_CH - 1), st.integers(0, 3), st.floats(0, 10))),
        "target": st.one_of(st.none(), st.tuples(st.integers(0, N_LOOPS - 1), st.floats(20.0, 110.0))),
    }
)


def _configure(kernel, channels, loops) -> None:  # noqa: ANN001
    for i, (mx, up, down) in enumerate(channels):
        kernel.set_channel(i, mx, up, down)
    for k, (ch, probe, kp, ki, kd, tau_d, kaw, rate, tau, target) in enumerate(loops):
        kernel.set_loop(k, ch, probe, kp, ki, kd, tau_d, kaw, rate, tau)
        kernel.set_target(k, target)
    for i in range(N_CH):
        kernel.set_mode(i, 2, 0.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(channel_st, min_size=N_CH, max_size=N_CH), st.lists(loop_st, min_size=N_LOOPS, max_size=N_LOOPS), st.lists(cycle_st, min_size=1, max_size=40))
def test_loops_compiled_equals_reference(channels, loops, cycles) -> None:
    fast, slow = compiled.FibreLoops(N_CH, N_LOOPS), reference.FibreLoops(N_CH, N_LOOPS)
    _configure(fast, channels, loops)
    _configure(slow, channels, loops)
    for c in cycles:
        for impl in (fast, slow):
            if c["mode"] is not None:
                impl.set_mode(*c["mode"])
            if c["target"] is not None:
                impl.set_target(*c["target"])
            for i, r in enumerate(c["requests"]):
                impl.set_request(i, r)
        out_fast = fast.step(c["dt"], tuple(c["measured"]), tuple(c["applied"]))
        out_slow = slow.step(c["dt"], list(c["measured"]), list(c["applied"]))
        assert out_fast == pytest.approx(out_slow, rel=1e-9, abs=1e-9)
        for k in range(N_LOOPS):
            assert fast.loop_state(k) == pytest.approx(slow.loop_state(k), rel=1e-9, abs=1e-9)
        for i in range(N_CH):
            assert fast.channel_state(i) == pytest.approx(slow.channel_state(i), rel=1e-9, abs=1e-9)


mpc_case = st.integers(1, 3).flatmap(
    lambda n_group: st.integers(1, 3).flatmap(
        lambda n_blocks: st.integers(1, 6).flatmap(
            lambda n_rows: st.fixed_dictionaries(
                {
                    "n_group": st.just(n_group),
                    "a": st.lists(st.lists(st.floats(0, 30), min_size=n_group * n_blocks, max_size=n_group * n_blocks), min_size=n_rows, max_size=n_rows),
                    "y_free": st.lists(st.floats(30, 100), min_size=n_rows, max_size=n_rows),
                    "goal_lo": st.lists(st.floats(30, 100), min_size=n_rows, max_size=n_rows),
                    "w_under": st.lists(st.floats(0, 10), min_size=n_rows, max_size=n_rows),
                    "goal_hi": st.lists(st.floats(30, 100), min_size=n_rows, max_size=n_rows),
                    "w_over": st.lists(st.floats(0, 100), min_size=n_rows, max_size=n_rows),
                    "hi": st.lists(st.floats(0, 10), min_size=n_group * n_blocks, max_size=n_group * n_blocks),
                    "c": st.lists(st.floats(0, 1), min_size=n_group * n_blocks, max_size=n_group * n_blocks),
                    "q": st.lists(st.floats(0, 2), min_size=n_group * n_blocks, max_size=n_group * n_blocks),
                    "x_ref": st.lists(st.floats(0, 10), min_size=n_group * n_blocks, max_size=n_group * n_blocks),
                    "group_max": st.lists(st.floats(0, 20), min_size=n_blocks, max_size=n_blocks),
                    "x0": st.lists(st.floats(-5, 15), min_size=n_group * n_blocks, max_size=n_group * n_blocks),
                    "iterations": st.integers(0, 60),
                }
            )
        )
    )
)


def _mpc_args(case: dict) -> tuple:
    arr = lambda key: np.ascontiguousarray(case[key], dtype=float)  # noqa: E731
    n_vars = len(case["hi"])
    return (arr("y_free"), arr("goal_lo"), arr("w_under"), arr("goal_hi"), arr("w_over"), np.zeros(n_vars), arr("hi"), arr("c"), arr("q"), arr("x_ref"), arr("group_max"))


@settings(max_examples=150, deadline=None)
@given(mpc_case)
def test_mpc_compiled_equals_reference(case) -> None:
    n_rows, n_vars = len(case["a"]), len(case["hi"])
    fast = compiled.ShapedMpc(n_rows, n_vars, case["n_group"])
    slow = reference.ShapedMpc(n_rows, n_vars, case["n_group"])
    a = np.ascontiguousarray(case["a"], dtype=float)
    fast.set_matrix(a)
    slow.set_matrix(case["a"])
    args = _mpc_args(case)
    x_fast = np.ascontiguousarray(case["x0"], dtype=float)
    x_slow = list(case["x0"])
    cost_fast = fast.solve(*args, case["iterations"], x_fast)
    cost_slow = slow.solve(*[list(v) for v in args], case["iterations"], x_slow)
    assert x_fast.tolist() == pytest.approx(x_slow, rel=1e-9, abs=1e-9)
    assert cost_fast == pytest.approx(cost_slow, rel=1e-9, abs=1e-9)
    assert fast.predictions() == pytest.approx(slow.predictions(), rel=1e-9, abs=1e-9)
    assert fast.lipschitz == pytest.approx(slow.lipschitz, rel=1e-9)


# --- the loops ---------------------------------------------------------------------------------------------


def _one(impl, *, kp=1.0, ki=0.05, kd=0.0, kaw=0.05, rate=math.inf, tau=0.0, target=80.0, max_out=10.0, up=math.inf, down=math.inf):  # noqa: ANN001, ANN202
    k = impl.FibreLoops(1, 2)
    k.set_channel(0, max_out, up, down)
    k.set_loop(0, 0, 0, kp, ki, kd, 1.0, kaw, rate, tau)
    k.set_target(0, target)
    k.set_loop(1, -1, 0, 0, 0, 0, 1.0, 0, math.inf, 0.0)
    k.set_request(0, max_out)
    k.set_mode(0, impl.LOOPS, 0.0)
    return k


@IMPLS
def test_output_stays_within_0_and_max(impl) -> None:
    k = _one(impl, kp=100.0, max_out=3.0)
    k.step(0.1, [37.0], [0.0])  # the first step continues from 0 (bumpless)
    assert k.step(0.1, [37.0], [0.0]) == (3.0,)
    assert k.step(0.1, [120.0], [3.0]) == (0.0,)


@IMPLS
def test_rate_limits_up_and_down(impl) -> None:
    k = _one(impl, kp=100.0, up=2.0, down=5.0)
    outs = [k.step(0.1, [37.0], [0.0])[0] for _ in range(4)]
    assert outs == pytest.approx([0.0, 0.2, 0.4, 0.6])
    assert k.step(0.1, [120.0], [0.6])[0] == pytest.approx(0.1)  # 0.6 - 5 W/s x 0.1 s


@IMPLS
def test_modes_off_pass_hold(impl) -> None:
    k = _one(impl)
    k.set_request(0, 2.5)
    k.set_mode(0, impl.PASS, 0.0)
    assert k.step(0.1, [37.0], [0.0]) == (2.5,)
    k.set_request(0, 12.0)
    assert k.step(0.1, [37.0], [2.5]) == (10.0,)  # a request is limited too
    k.set_mode(0, impl.HOLD, 1.75)
    assert k.step(0.1, [90.0], [0.0]) == (1.75,)  # frozen, whatever the measurement
    k.set_mode(0, impl.OFF, 5.0)
    assert k.step(0.1, [37.0], [0.0]) == (0.0,)


@IMPLS
def test_bumpless_transfer_continues_from_the_applied_power(impl) -> None:
    k = _one(impl, kp=2.0, ki=0.1, rate=1.0)
    k.set_mode(0, impl.PASS, 0.0)
    k.set_request(0, 2.2)
    k.step(0.1, [60.0], [2.2])
    k.set_mode(0, impl.LOOPS, 2.2)  # e.g. the end of a tune, 20 degC below the target
    k.set_request(0, 10.0)
    assert k.step(0.1, [60.0], [2.2]) == pytest.approx((2.2,))
    # then the working setpoint moves up 1 degC/s: a small, steady rise, no jump of kp x 20 degC
    assert k.step(0.1, [60.0], [2.2])[0] == pytest.approx(2.2 + 2.0 * 0.1 + 0.1 * 0.1 * 0.1, rel=1e-6, abs=1e-3)


@IMPLS
def test_a_paused_loop_does_not_wind_up(impl) -> None:
    k = _one(impl)
    for _ in range(50):
        k.step(0.1, [70.0], [1.0])
    before = k.loop_state(0)
    k.set_mode(0, impl.HOLD, 1.0)
    for _ in range(500):
        assert k.step(0.1, [40.0], [0.0]) == (1.0,)  # the laser is off, the tissue cools
    assert k.loop_state(0)[0] == before[0]  # the integral did not move


@IMPLS
def test_the_reference_trajectory_paces_a_big_step(impl) -> None:
    k = _one(impl, rate=1.5, tau=8.0)
    k.step(0.1, [37.0], [0.0])
    refs = []
    for _ in range(600):
        k.step(0.1, [37.0], [0.0])
        refs.append(k.loop_state(0)[4])
    steps = np.diff([37.0, *refs])
    assert steps.max() <= 1.5 * 0.1 + 1e-12  # never faster than the rate
    assert refs[-1] == pytest.approx(80.0, abs=0.1) and all(r <= 80.0 for r in refs)
    assert steps[-1] < steps[0]  # and slower near the target (first order)


@IMPLS
def test_the_derivative_acts_on_the_measurement(impl) -> None:
    k = _one(impl, kp=0.0, ki=0.0, kd=1.0, kaw=0.0)
    k.set_mode(0, impl.LOOPS, 5.0)
    k.step(0.1, [50.0], [5.0])
    k.set_target(0, 95.0)  # the target jumps: no derivative kick
    assert k.step(0.1, [50.0], [5.0]) == (5.0,)
    assert k.step(0.1, [51.0], [5.0])[0] < 5.0  # the probe rising pushes the power down


@IMPLS
def test_override_the_smaller_loop_wins_and_the_other_tracks(impl) -> None:
    """A control loop far below its target and a tip limiter: the limiter takes over only at its limit."""
    k = impl.FibreLoops(1, 2)
    k.set_channel(0, 10.0, math.inf, math.inf)
    k.set_loop(0, 0, 1, 0.2, 0.2 / 30, 0.0, 1.0, 1.0 / 30, math.inf, 0.0)  # control on probe 1
    k.set_target(0, 60.0)
    k.set_loop(1, 0, 0, 0.2, 0.2 / 30, 0.0, 1.0, 1.0 / 30, math.inf, 0.0)  # tip limiter on probe 0
    k.set_target(1, 89.5)
    k.set_request(0, 10.0)
    k.set_mode(0, impl.LOOPS, 0.0)
    out = (0.0,)
    for _ in range(30):
        out = k.step(0.1, [60.0, 40.0], [out[0]])  # tip well below its limit: control loop decides
    assert k.loop_state(1)[3] > k.loop_state(0)[3]
    assert out[0] == pytest.approx(k.loop_state(0)[3])
    for _ in range(30):
        out = k.step(0.1, [91.0, 45.0], [out[0]])  # tip above its limit: the limiter cuts
    assert k.loop_state(1)[3] < k.loop_state(0)[3]
    assert out[0] == pytest.approx(max(0.0, k.loop_state(1)[3]))


@IMPLS
def test_tracking_bleeds_the_integral_toward_what_was_really_applied(impl) -> None:
    """The safety layer clamps the channel to 1 W: the integral follows it instead of winding up."""
    k = _one(impl, kp=0.5, ki=0.5 / 20, kaw=1.0 / 20)
    for _ in range(3000):
        k.step(0.1, [60.0], [1.0])
    integral = k.loop_state(0)[0]
    assert integral == pytest.approx(1.0, abs=0.05)  # not 10 W, and not rising
    assert k.step(0.1, [80.5], [1.0])[0] < 1.0  # at the target, power drops at once


@IMPLS
def test_bad_arguments_are_refused(impl) -> None:
    with pytest.raises(ValueError):
        impl.FibreLoops(0, 1)
    with pytest.raises(ValueError):
        impl.FibreLoops(1, 99)
    k = impl.FibreLoops(2, 2)
    with pytest.raises(ValueError):
        k.set_loop(0, 0, 0, -1.0, 0, 0, 1.0, 0, 1.0, 0.0)
    with pytest.raises(IndexError):
        k.set_loop(5, 0, 0, 1.0, 0, 0, 1.0, 0, 1.0, 0.0)
    with pytest.raises(IndexError):
        k.set_loop(0, 7, 0, 1.0, 0, 0, 1.0, 0, 1.0, 0.0)
    with pytest.raises(ValueError):
        k.set_channel(0, -1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        k.set_mode(0, 9, 0.0)
    k.set_loop(0, 0, 5, 1.0, 0, 0, 1.0, 0, 1.0, 0.0)
    with pytest.raises(ValueError):
        k.step(0.1, [37.0] * 3, [0.0, 0.0])  # probe 5 not measured
    with pytest.raises(ValueError):
        k.step(0.0, [37.0] * 8, [0.0, 0.0])
    with pytest.raises(ValueError):
        k.step(0.1, [37.0] * 8, [0.0])
    with pytest.raises(TypeError):
        k.step(0.1, [None] * 8, [0.0, 0.0])


# --- the SHAPED solver -----------------------------------------------------------------------------------


def _brute_force(a, y_free, goal_lo, w_under, goal_hi, w_over, hi, c, group_max, step=0.05):  # noqa: ANN001, ANN202
    best = (math.inf, None)
    grid = [np.arange(0.0, h + 1e-9, step) for h in hi]
    for x in itertools.product(*grid):
        x = np.asarray(x)
        if x.sum() > group_max + 1e-12:
            continue
        y = y_free + a @ x
        cost = float((w_under * np.maximum(0, goal_lo - y) ** 2).sum() + (w_over * np.maximum(0, y - goal_hi) ** 2).sum() + c @ x)
        if cost < best[0]:
            best = (cost, x)
    return best


@IMPLS
def test_mpc_finds_the_constrained_optimum(impl) -> None:
    """Two fibres, a margin row to push up, a protected row that caps what fibre 0 may do, a total."""
    a = np.array([[2.0, 1.0], [3.0, 0.5], [0.2, 2.5]])  # margin, protected, tip of fibre 1
    y_free = np.array([40.0, 38.0, 60.0])
    goal_lo, w_under = np.array([52.0, 0.0, 0.0]), np.array([1.0, 0.0, 0.0])
    goal_hi, w_over = np.array([1e9, 41.0, 70.0]), np.array([0.0, 300.0, 30.0])
    hi, c, q, x_ref = np.array([4.0, 5.0]), np.array([0.01, 0.01]), np.zeros(2), np.zeros(2)
    mpc = impl.ShapedMpc(3, 2, 2)
    mpc.set_matrix(a if impl is compiled else a.tolist())
    x = np.zeros(2) if impl is compiled else [0.0, 0.0]
    args = (y_free, goal_lo, w_under, goal_hi, w_over, np.zeros(2), hi, c, q, x_ref, np.array([6.0]))
    if impl is reference:
        args = tuple(list(v) for v in args)
    cost = mpc.solve(*args, 2000, x)
    best_cost, best_x = _brute_force(a, y_free, goal_lo, w_under, goal_hi, w_over, hi, c, 6.0)
    assert cost <= best_cost + 0.05
    assert np.allclose(np.asarray(x), best_x, atol=0.1)


@IMPLS
def test_mpc_respects_bounds_and_the_group_total(impl) -> None:
    n_group, n_blocks = 4, 3
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 5, size=(8, n_group * n_blocks))
    mpc = impl.ShapedMpc(8, n_group * n_blocks, n_group)
    mpc.set_matrix(a if impl is compiled else a.tolist())
    hi = rng.uniform(0, 10, size=n_group * n_blocks)
    x = rng.uniform(-5, 20, size=n_group * n_blocks)
    xl = x if impl is compiled else x.tolist()
    args = [np.full(8, 40.0), np.full(8, 90.0), np.ones(8), np.full(8, 1e9), np.zeros(8), np.zeros(len(hi)), hi, np.zeros(len(hi)), np.zeros(len(hi)), np.zeros(len(hi)), np.array([7.0, 7.0, 7.0])]
    if impl is reference:
        args = [list(v) for v in args]
    mpc.solve(*args, 100, xl)
    got = np.asarray(xl).reshape(n_blocks, n_group)
    assert np.all(got >= -1e-12) and np.all(got <= hi.reshape(n_blocks, n_group) + 1e-12)
    assert np.all(got.sum(axis=1) <= 7.0 + 1e-9)


def test_mpc_refuses_bad_shapes() -> None:
    with pytest.raises(ValueError):
        compiled.ShapedMpc(3, 5, 2)  # 5 variables are not whole groups of 2
    mpc = compiled.ShapedMpc(2, 2, 2)
    with pytest.raises(ValueError):
        mpc.set_matrix(np.zeros((3, 2)))
    z2 = np.zeros(2)
    with pytest.raises(ValueError):
        mpc.solve(np.zeros(1), z2, z2, z2, z2, z2, z2, z2, z2, z2, np.zeros(1), 10, np.zeros(2))

"""sim/light_prefetch.py: after a pull-back, `laser-sim serve` places the fibres' light in a worker
thread, and installs it only on a fibre that is still stale, unmoved and unplaced."""

from __future__ import annotations

import copy
import threading
import time

import numpy as np

from sim.light_prefetch import LightPrefetch
from sim.tissue import TissueModel, load_scenario

COARSE_MM = 2.0  # geometry and bookkeeping, not the physics' accuracy


def _pulled_back(name: str = "tumour_20mm_2fibres", mm: float = 4.0, grid_mm: float = COARSE_MM) -> TissueModel:
    model = TissueModel(load_scenario(name), grid_mm=grid_mm, threads=1)
    model.step(1.0, [2.0] * 4)
    model.pull_back(mm)
    model.step(model.pullback_time_s, [0.0] * 4)
    assert model.pullback_remaining_mm == 0.0 and all(f.light_stale for f in model.fibres)
    return model


def _finish(prefetch: LightPrefetch) -> None:
    assert prefetch._job is not None
    prefetch._job.result(timeout=60)
    prefetch.poll()
    assert prefetch._job is None


def test_installs_what_the_model_would_place_itself() -> None:
    model = _pulled_back()
    expected = []
    for f in model.fibres:
        twin = copy.copy(f)
        twin.place_light(model)
        expected.append(twin)
    prefetch = LightPrefetch(model)
    assert LightPrefetch.applies(model)
    prefetch.poll()
    _finish(prefetch)
    assert prefetch.installed == len(model.fibres)
    for f, e in zip(model.fibres, expected, strict=True):
        assert not f.light_stale
        assert f.source_mm == e.source_mm
        np.testing.assert_array_equal(f.diffuse.fraction, e.diffuse.fraction)
        np.testing.assert_array_equal(f.char_ball.index, e.char_ball.index)
    prefetch.poll()  # nothing stale: nothing started
    assert prefetch._job is None
    prefetch.close()


def test_nothing_while_the_fibres_move() -> None:
    model = TissueModel(load_scenario("tumour_20mm_2fibres"), grid_mm=COARSE_MM, threads=1)
    model.pull_back(4.0)
    model.step(1.0, [0.0] * 4)
    assert model.pullback_remaining_mm > 0.0 and all(f.light_stale for f in model.fibres)
    prefetch = LightPrefetch(model)
    prefetch.poll()
    assert prefetch._job is None
    prefetch.close()


def test_a_fibre_placed_or_moved_meanwhile_is_left_to_the_model() -> None:
    model = _pulled_back()
    prefetch = LightPrefetch(model)
    gate = threading.Event()
    place = prefetch._place
    prefetch._place = lambda work: (gate.wait(30), place(work))[1]  # hold the worker
    prefetch.poll()
    model.step(0.5, [2.0, 0.0, 0.0, 0.0])  # channel 0 shines first: the model places it itself
    shone = model.fibres[0]
    assert not shone.light_stale
    diffuse = shone.diffuse
    model.pull_back(2.0)  # and the fibres move again
    gate.set()
    _finish(prefetch)
    assert prefetch.installed == 0
    assert shone.diffuse is diffuse
    prefetch.close()


def test_the_event_loop_keeps_running_while_it_places() -> None:
    """The point of it: gaps in the caller's thread stay short while the worker computes."""
    model = _pulled_back("tumour_35mm_4fibres", mm=2.0, grid_mm=1.0)  # the demo's patient: ~0.1 s per fibre
    prefetch = LightPrefetch(model)
    prefetch.poll()
    gaps, last = [], time.perf_counter()
    while prefetch._job is not None:
        time.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
        prefetch.poll()
    assert prefetch.installed == len(model.fibres)
    assert max(gaps) < 0.1, f"longest gap {max(gaps) * 1000:.0f} ms"
    prefetch.close()

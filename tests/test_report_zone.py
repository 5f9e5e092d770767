"""The simulator's bench action `render PATH`: the tissue model's picture as a PNG file, for
`laserctl report --sim-bench` (docs/report.md, docs/simulator.md)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import pytest

from sim.clock import SimClock
from sim.tissue import load_thermal_model
from sim.world import BenchError, SimWorld

SCENARIO = """
name = "zone_test"
description = "one fibre in a small cube"

[grid]
size_mm = [24, 24, 24]
spacing_mm = 1.0

[[fibres]]
channel = 0
tip_mm = [0, 0, -1]
direction = [0, 0, 1]

[[probes]]
channel = 0
position_mm = [2, 0, -1]
role = "tip"
name = "tip"
"""


@pytest.fixture
def world(tmp_path: Path) -> SimWorld:
    scenario = tmp_path / "zone.toml"
    scenario.write_text(SCENARIO)
    clock = SimClock()
    clock.freeze()
    return SimWorld(clock=clock, thermal=load_thermal_model(scenario))


def test_render_writes_the_tissue_picture(world: SimWorld, tmp_path: Path) -> None:
    world.bench(["clock", "step", "2000"])  # some time in the model
    target = tmp_path / "out" / "zone.png"
    target.parent.mkdir()
    truth = world.bench(["render", str(target)])
    assert truth["time_s"] == pytest.approx(2.0)
    data = target.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    pixels = matplotlib.image.imread(target)
    assert pixels.shape[1] > 400 and pixels.shape[0] > 400 and pixels.std() > 0.02
    assert [p.name for p in target.parent.iterdir()] == ["zone.png"]  # no partial file left


@pytest.mark.parametrize(
    ("words", "expect"),
    [
        (["render", "zone.png"], "absolute path"),
        (["render"], "usage: render PATH"),
        (["render", "/nonexistent-dir/zone.png"], "render: cannot write /nonexistent-dir/zone.png"),
    ],
)
def test_render_refuses_in_one_line(world: SimWorld, words: list[str], expect: str) -> None:
    with pytest.raises(BenchError, match=expect) as info:
        world.bench(words)
    assert "\n" not in str(info.value)


def test_render_needs_a_tissue_model(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="start laser-sim serve with --scenario"):
        SimWorld(clock=SimClock()).bench(["render", str(tmp_path / "zone.png")])
    assert not (tmp_path / "zone.png").exists()

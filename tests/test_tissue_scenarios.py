"""Scenario files: the shipped ones are sensible, bad ones fail with one line naming the field."""

from __future__ import annotations

import copy
import math
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.tissue import ScenarioError, load_scenario, load_thermal_model, parse_scenario, shipped_scenarios

REQUIRED = {"single_fibre", "tumour_20mm_2fibres", "tumour_35mm_4fibres", "vessel_protected_4fibres"}


def test_the_required_scenarios_ship() -> None:
    assert REQUIRED <= {p.stem for p in shipped_scenarios()}


@pytest.mark.parametrize("path", shipped_scenarios(), ids=lambda p: p.stem)
def test_shipped_scenarios_are_sensible(path: Path) -> None:
    sc = load_scenario(path)
    assert sc.name == path.stem and sc.description
    assert {f.channel for f in sc.fibres} <= {0, 1, 2, 3}
    for f in sc.fibres:
        # a tip probe per fibre, a couple of mm from the tip (a probe on the tip would read the char)
        gaps = [math.dist(p.position_mm, f.tip_mm) for p in sc.probes if p.role == "tip"]
        assert any(1.5 <= g <= 3.0 for g in gaps), f"fibre on channel {f.channel} has no tip probe 1.5-3 mm away"
    if sc.tumour is not None:
        margin = [p for p in sc.probes if p.role == "margin"]
        assert margin, "a tumour scenario needs margin probes"
        for p in margin:
            assert math.dist(p.position_mm, sc.tumour.center_mm) == pytest.approx(sc.tumour.target_radius_mm, abs=1.0)
    for s in sc.protected:
        near = [p for p in sc.probes if p.role == "protected"]
        assert near and all(math.dist(p.position_mm, s.center_mm) <= s.radius_mm + 3.0 for p in near)
    assert len(sc.fibres) == {"single_fibre": 1, "tumour_20mm_2fibres": 2}.get(sc.name, len(sc.fibres))


def test_the_35_mm_and_vessel_scenarios() -> None:
    big = load_scenario("tumour_35mm_4fibres")
    assert big.tumour is not None and big.tumour.radius_mm * 2 == 35 and len(big.fibres) == 4
    assert big.grid.size_mm == (64, 64, 64)
    v = load_scenario("vessel_protected_4fibres")
    assert len(v.fibres) == 4 and v.vessels[0].radius_mm * 2 >= 5 and v.protected


def test_a_scenario_loads_by_name_path_and_as_a_model() -> None:
    by_name = load_scenario("single_fibre")
    by_path = load_scenario(shipped_scenarios()[0].parent / "single_fibre.toml")
    assert by_name == by_path
    model = load_thermal_model("single_fibre.toml")
    assert model.grid.shape == (64, 64, 64)


def _valid() -> dict[str, Any]:
    return tomllib.loads((shipped_scenarios()[0].parent / "tumour_20mm_2fibres.toml").read_text())


def _error(doc: dict[str, Any]) -> str:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(doc)
    message = str(info.value)
    assert "\n" not in message
    return message


def _set(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


_DELETE = object()

BAD_FIELDS = [
    (("fibres", 1, "tip_mm"), [6, 0], "scenario fibres[1].tip_mm: expected 3 numbers, got 2"),
    (("fibres", 1, "tip_mm"), [6, "x", 0], "scenario fibres[1].tip_mm[1]: expected a number, got a string"),
    (("fibres", 0, "channel"), 4, "scenario fibres[0].channel: expected 0 to 3, got 4"),
    (("fibres", 1, "channel"), 0, "scenario fibres[1].channel: LS-4 channel 0 is already used by fibres[0]"),
    (("fibres", 0, "direction"), [0, 0, 0], "scenario fibres[0].direction: a direction must not be the zero vector"),
    (("fibres", 0, "tip_mm"), [0, 0, 40], "scenario fibres[0].tip_mm: (0, 0, 40) is outside the grid (-32..32, -32..32, -32..32 mm)"),
    (("fibres", 0, "emission"), "laser", "scenario fibres[0].emission: expected one of diffuse, point_heat, got 'laser'"),
    (("fibres", 0, "colour"), "red", "scenario fibres[0].colour: unknown field"),
    (("probes", 2, "channel"), 8, "scenario probes[2].channel: expected 0 to 7, got 8"),
    (("probes", 2, "channel"), 1, "scenario probes[2].channel: FT-8 channel 1 is already used by probes[1]"),
    (("probes", 0, "role"), "core", "scenario probes[0].role: expected one of tip, margin, protected, got 'core'"),
    (("probes", 0, "position_mm"), "here", "scenario probes[0].position_mm: expected 3 numbers, got a string"),
    (("grid", "spacing_mm"), 0.7, "scenario grid.size_mm[0]: 64 mm is not a whole number of 0.7 mm voxels"),
    (("grid", "spacing_mm"), 0.0, "scenario grid.spacing_mm: expected a number >= 0.1 and <= 5, got 0.0"),
    (("grid", "size_mm"), _DELETE, "scenario grid.size_mm: missing"),
    (("grid",), _DELETE, "scenario grid: missing"),
    (("tumour", "radius_mm"), -3, "scenario tumour.radius_mm: expected a number > 0 and <= 1000, got -3"),
    (("tumour", "margin_mm"), True, "scenario tumour.margin_mm: expected a number, got a boolean"),
    (("tissue",), {"perfusion_1_s": -1}, "scenario tissue.perfusion_1_s: expected a number >= 0 and <= 1, got -1"),
    (("tissue",), {"conductivity": 0.5}, "scenario tissue.conductivity: unknown field"),
    (("fibres",), [], "scenario fibres: expected 1 to 4 entries, got 0"),
    (("vessels",), [{"point_mm": [0, 0, 0], "direction": [0, 1, 0]}], "scenario vessels[0].radius_mm: missing"),
    (("protected",), [{"shape": "cube", "center_mm": [0, 0, 0], "radius_mm": 3}], "scenario protected[0].shape: expected one of sphere, cylinder, got 'cube'"),
    (("protected",), [{"shape": "sphere", "center_mm": [0, 0, 0], "radius_mm": 3, "direction": [1, 0, 0]}], "scenario protected[0].direction: unknown field"),
    (("extra",), 1, "scenario extra: unknown field"),
    (("placement",), {"illuminations": 3}, "scenario placement.pullback_mm: missing: 3 illuminations need a pull-back distance"),
    (("placement",), {"illuminations": 9, "pullback_mm": 5}, "scenario placement.illuminations: expected 1 to 8, got 9"),
    (("placement",), {"illuminations": 2, "pullback_mm": 0}, "scenario placement.pullback_mm: expected a number > 0 and <= 30, got 0"),
    (("placement",), {"illuminations": 3, "pullback_mm": 25}, "scenario placement.pullback_mm: fibre 0 pulled back 50 mm in all leaves the grid"),
    (("placement",), {"illuminations": 2, "pullback_mm": 5, "speed": 1}, "scenario placement.speed: unknown field"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD_FIELDS, ids=[m.split(":")[0][9:] for _, _, m in BAD_FIELDS])
def test_a_bad_field_is_named(path: tuple[Any, ...], value: Any, message: str) -> None:
    assert _error(_set(_valid(), path, value)) == message


def test_a_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no such file"):
        load_scenario(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid\nsize_mm = 3\n")
    with pytest.raises(ScenarioError, match=r"^scenario bad.toml: invalid TOML: "):
        load_scenario(bad)


garbage = st.one_of(
    st.none(), st.booleans(), st.integers(-100, 100), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
    st.lists(st.floats(-100, 100), max_size=4), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)  # fmt: skip
LEAVES = [
    ("grid", "spacing_mm"), ("grid", "size_mm"), ("tumour", "center_mm"), ("tumour", "radius_mm"), ("tumour", "margin_mm"),
    ("fibres", 0, "channel"), ("fibres", 1, "tip_mm"), ("fibres", 0, "direction"), ("probes", 3, "position_mm"),
    ("probes", 4, "role"), ("probes", 5, "channel"), ("name",), ("description",),
]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(path=st.sampled_from(LEAVES), value=garbage)
def test_garbage_in_any_field_loads_or_names_that_field(path: tuple[Any, ...], value: Any) -> None:
    doc = _set(_valid(), path, value)
    if value is None:  # TOML has no null: model it as the field left out
        doc = _set(_valid(), path, _DELETE)
    try:
        sc = parse_scenario(doc)
    except ScenarioError as exc:
        message = str(exc)
        assert "\n" not in message
        named = ".".join(f"{p}" if isinstance(p, str) else f"[{p}]" for p in path).replace(".[", "[")
        assert message.startswith(f"scenario {named}") or message.startswith(f"scenario {named.rsplit('.', 1)[0]}"), message
    else:
        assert np.isfinite(sc.grid.spacing_mm)

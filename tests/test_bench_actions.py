"""Bench actions: each one does what docs/simulator.md says, and bad input is one clear line."""

from __future__ import annotations

import pytest

from sim.clock import SimClock
from sim.world import BENCH_ACTIONS, BenchError, SimWorld


@pytest.fixture
def world() -> SimWorld:
    w = SimWorld(clock=SimClock())
    w.clock.freeze()
    w.sync()  # the models catch up with the moment of the freeze
    return w


GOOD = [
    (["key", "off"], lambda t: t["ls4"]["inputs"]["key_on"] is False),
    (["estop", "press"], lambda t: t["ls4"]["fault"] == "ESTOP"),
    (["interlock", "open"], lambda t: t["ls4"]["inputs"]["interlock_open"] is True),
    (["footswitch", "press"], lambda t: t["ls4"]["inputs"]["footswitch_pressed"] is True),
    (["fibre", "2", "break"], lambda t: t["ls4"]["inputs"]["fibre"][2] == "broken"),
    (["fibre", "3", "disconnect"], lambda t: t["ls4"]["inputs"]["fibre"][3] == "disconnected"),
    (["diode", "1", "cooling", "fail"], lambda t: t["ls4"]["inputs"]["cooling_ok"][1] is False),
    (["power", "0", "drift", "-25"], lambda t: t["ls4"]["inputs"]["emitter_drift"][0] == -0.25),
    (["monitor", "0", "error", "12.5"], lambda t: t["ls4"]["inputs"]["monitor_error"][0] == 0.125),
    (["ls4", "selftest", "fail"], lambda t: t["ls4"]["fault"] == "INTERNAL"),
    (["probe", "4", "force", "55"], lambda t: t["ft8"]["tissue_c"][4] == 55.0),
    (["ft8", "hang"], lambda t: t["ft8"]["health"] == "hung"),
    (["link", "delay", "150"], lambda t: t["link"]["delay_ms"] == 150.0),
    (["link", "drop", "3"], lambda t: t["link"]["drop_next"] == 3),
    (["link", "corrupt", "2"], lambda t: t["link"]["corrupt_next"] == 2),
    (["reboot", "ls4", "1.5"], lambda t: t["link"]["silent_until_s"] == pytest.approx(1.5, abs=1e-3)),
    (["clock", "step", "250"], lambda t: t["time_s"] == pytest.approx(0.25, abs=1e-3)),
    (["state"], lambda t: "ls4" in t and "ft8" in t),
]


@pytest.mark.parametrize(("words", "check"), GOOD, ids=[" ".join(g[0]) for g in GOOD])
def test_good_actions(world: SimWorld, words, check) -> None:
    assert check(world.bench(words))


BAD = [
    [],
    ["teleport"],
    ["key"],
    ["key", "maybe"],
    ["estop", "press", "twice"],
    ["fibre", "4", "break"],
    ["fibre", "x", "break"],
    ["fibre", "0", "melt"],
    ["diode", "0", "cooling"],
    ["power", "0", "drift", "lots"],
    ["power", "0", "drift", "500"],
    ["probe", "8", "disconnect"],
    ["probe", "0"],
    ["probe", "0", "noise", "-1"],
    ["ft8", "explode"],
    ["link", "delay"],
    ["link", "drop", "-1"],
    ["reboot", "router"],
    ["clock", "step", "-5"],
    ["clock", "rewind"],
    ["state", "now"],
]


@pytest.mark.parametrize("words", BAD, ids=[" ".join(b) or "<empty>" for b in BAD])
def test_bad_actions_are_one_line_errors_and_change_nothing(world: SimWorld, words) -> None:
    before = world.truth()
    with pytest.raises(BenchError) as err:
        world.bench(words)
    message = str(err.value)
    assert message and "\n" not in message
    assert world.truth() == before


def test_clock_step_needs_freeze() -> None:
    world = SimWorld(clock=SimClock())
    with pytest.raises(BenchError, match="clock freeze"):
        world.bench(["clock", "step", "10"])


def test_every_action_has_a_help_line() -> None:
    assert all(help_text for _, help_text in BENCH_ACTIONS.values())


def test_docs_list_every_bench_action() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "simulator.md").read_text()
    table = doc.split("## Bench commands", 1)[1]
    for action in BENCH_ACTIONS:
        assert f"| `{action} " in table or f"| `{action}`" in table, f"docs/simulator.md does not describe bench action {action!r}"

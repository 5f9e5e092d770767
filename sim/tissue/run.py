"""Open-loop runs: fixed powers for a fixed time, as fast as the physics allows (no Modbus)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

from .metrics import AblationResult, ablation_result
from .model import TissueModel
from .scenario import LS4_CHANNELS, Scenario, load_scenario

MAX_POWER_W = 10.0  # the LS-4's maximum per channel (protocol.ls4.MAX_CHANNEL_POWER_MW)
MAX_SECONDS = 3600.0
PROGRESS_CHUNK_S = 10.0


def check_powers(scenario: Scenario, powers_w: Mapping[int, float]) -> dict[int, float]:
    """Channel -> W, each channel 0-3 with a fibre in the scenario, 0 to MAX_POWER_W."""
    out: dict[int, float] = {}
    for ch, w in powers_w.items():
        if not isinstance(ch, int) or not 0 <= ch < LS4_CHANNELS:
            raise ValueError(f"power channel {ch!r}: expected an LS-4 channel 0-{LS4_CHANNELS - 1}")
        if scenario.fibre_on(ch) is None:
            raise ValueError(f"power channel {ch}: scenario {scenario.name} has no fibre on LS-4 channel {ch}")
        w = float(w)
        if not 0.0 <= w <= MAX_POWER_W:
            raise ValueError(f"power channel {ch}: expected 0 to {MAX_POWER_W:g} W, got {w:g}")
        out[ch] = w
    return out


def simulate(
    scenario: Scenario | str | Path,
    powers_w: Mapping[int, float],
    seconds: float,
    *,
    grid_mm: float | None = None,
    threads: int | None = None,
    kernel: str = "compiled",
    progress: Callable[[float], None] | None = None,
) -> tuple[TissueModel, AblationResult]:
    """Run fixed powers for `seconds`; returns the model (fields for images) and the metrics."""
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    powers = check_powers(sc, powers_w)
    if not 0.0 < seconds <= MAX_SECONDS:
        raise ValueError(f"seconds: expected more than 0 and at most {MAX_SECONDS:g}, got {seconds:g}")
    model = TissueModel(sc, grid_mm=grid_mm, threads=threads, kernel=kernel)
    tip = [powers.get(ch, 0.0) for ch in range(LS4_CHANNELS)]
    start = time.perf_counter()
    model.run(seconds, tip, progress=progress, chunk_s=PROGRESS_CHUNK_S)
    wall = time.perf_counter() - start
    return model, ablation_result(model, powers_w=powers, seconds=seconds, wall_s=wall)


def run_open_loop(
    scenario: Scenario | str | Path,
    powers_w: Mapping[int, float],
    seconds: float,
    grid_mm: float | None = None,
    *,
    threads: int | None = None,
    kernel: str = "compiled",
    progress: Callable[[float], None] | None = None,
) -> AblationResult:
    """The ablation metrics after `seconds` at fixed powers (LS-4 channel -> W at the tip)."""
    return simulate(scenario, powers_w, seconds, grid_mm=grid_mm, threads=threads, kernel=kernel, progress=progress)[1]

"""Tissue physics for the simulator: the patient between the LS-4's light and the FT-8's probes.

    load_thermal_model(path)  a scenario's TissueModel, ready to plug into SimWorld
    run_open_loop(...)        fixed powers for a while, then the ablation metrics
    ScenarioError             a scenario that cannot be used (one line naming the field)

See docs/physics.md for the equations, the parameters and their sources.
"""

from __future__ import annotations

from pathlib import Path

from .metrics import AblationResult
from .model import EnergyBalance, TissueModel
from .properties import TissueProperties
from .run import run_open_loop, simulate
from .scenario import Scenario, ScenarioError, load_scenario, parse_scenario, shipped_scenarios

# The served model: steps small enough for the tip probe to follow the tissue smoothly, and one
# thread so the kernel leaves the other core to the Modbus server and the daemon.
SERVE_MAX_DT_S = 0.1
SERVE_THREADS = 1


def load_thermal_model(path: str | Path, *, grid_mm: float | None = None) -> TissueModel:
    """Load and validate a scenario (a file, or a shipped scenario's name) and build its model."""
    return TissueModel(load_scenario(path), grid_mm=grid_mm, threads=SERVE_THREADS, max_dt_s=SERVE_MAX_DT_S)


__all__ = [
    "AblationResult",
    "EnergyBalance",
    "Scenario",
    "ScenarioError",
    "TissueModel",
    "TissueProperties",
    "load_scenario",
    "load_thermal_model",
    "parse_scenario",
    "run_open_loop",
    "simulate",
    "shipped_scenarios",
]

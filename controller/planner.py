"""laserctl plan: propose fibres, spacing, positions and energy for a tumour by running the tissue model.

Offline computation (no daemon). For a spherical tumour (diameter, margin), optionally near a
large vessel (a heat sink) and/or a protected structure, the planner searches layouts of 1-4
parallel bare fibres, numbers of positions (pull-backs) and energies per position on a coarse
grid, confirms the best candidate on a 1 mm grid, and either proposes it (a laserd plan TOML,
the matching simulator scenario TOML, an image and a summary) or refuses with one line saying why.

Every candidate is run the way laserd delivers it (sim.tissue.run.simulate with a TipCap): each
fibre at the plan's power, backed off by the safety layer's law as its tip probe nears the plan's
tip cap, each position lasting until every fibre has delivered its energy, the pull-backs in
between, all within the session limit. A proposal is accepted only if the model predicts that
laserd delivers every position within the session limit, that at least TARGET_COVERAGE of
tumour + margin is coagulated (Omega >= 1) and that no protected structure exceeds its
temperature or CEM43 limit. Candidates are ranked by the objective (default: fewest fibres, then
least session time). docs/planning.md has the geometry, the search and every choice.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn, TextIO

from .config import PROTECTED_CEM43_CEILING_MIN, PROTECTED_TEMP_RANGE_C, SESSION_DURATION_RANGE_S, TIP_TEMP_CAP_RANGE_C, HardLimits

PROG: Final = "laserctl plan"
EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2

# --- what counts as a good plan ------------------------------------------------------------------
# The acceptance criterion: this share of tumour + margin coagulated on the 1 mm confirmation grid.
TARGET_COVERAGE: Final = 0.99
# The coarse search asks for a little more: the coarse grids misreport coverage by up to about a
# percentage point either way (measured, same runs: 3 mm +0.3..0.6, 2 mm -1..+0.5 against 1 mm),
# and the confirmation only steps the time up when the 1 mm run falls short.
SEARCH_COVERAGE: Final = 0.995
# Protected structure defaults: the example site's limits (examples/laserd.toml), so the written
# plan's protected probe loads there. 44 degC is 1 degC above the Arrhenius threshold the model
# uses (no coagulation below 43 degC); 10 CEM43 minutes is a small fraction of the 240 min taken
# as lethal (controller.plan.LETHAL_CEM43_DEFAULT_MIN). Both can be given on the command line.
PROTECTED_MAX_TEMP_DEFAULT_C: Final = 44.0
PROTECTED_MAX_CEM43_DEFAULT_MIN: Final = 10.0
# The plan's tip temperature cap unless given: the example site's limit (examples/laserd.toml).
TIP_CAP_DEFAULT_C: Final = 95.0
# The session limit unless --config or --max-duration-s says otherwise: the example site's
# limits.max_session_duration_s (examples/laserd.toml). laserd ends a session that runs longer.
SESSION_LIMIT_DEFAULT_S: Final = 3600.0
# The full scale of the safety layer's tip back-off (a fibre's max_power_w; the planner's plans do
# not set it, so it is the site's limits.max_channel_power_w): the example site's, the LS-4's maximum.
CHANNEL_MAX_POWER_DEFAULT_W: Final = 10.0

# --- the treatment the planner may propose -------------------------------------------------------
POWER_DEFAULT_W: Final = 3.0  # clinical bare-fibre practice (Pacella et al.: 3 W per fibre)
MAX_FIBRES: Final = 4  # LS-4 channels
MAX_POSITIONS: Final = 4  # fibre positions (illuminations); the plan allows 10, clinically 1-4
PULLBACK_RANGE_MM: Final = (5.0, 15.0)  # clinically 10 mm steps; below 5 mm the zones just overlap
# The sources' axial spread (first to last position) as a share of the target radius: measured on
# 30 and 45 mm targets, a spread of about 1.1 R lengthens the zone to the target's length.
SPAN_PER_TARGET_RADIUS: Final = 1.1
# Fibre layouts: the fibres sit on a circle of this radius (share of the target radius) around
# the tumour's axis; about 0.55 R covered 30 and 45 mm targets in trial runs, these bracket it.
RING_PER_TARGET_RADIUS: Final = (0.4, 0.5, 0.6)
MIN_FIBRE_SPACING_MM: Final = 5.0  # closer fibres just heat as one, hotter fibre
# Energy per fibre per position: a ladder of rungs, 30 s of the plan's power apart (90 J at 3 W),
# from 60 s of it up to the clinical upper end of 1800 J per fibre per position (Pacella et al.:
# 1200-1800 J). Beyond it the tip has long charred and the model is extrapolating. How long a rung
# takes is what the emulation of laserd says (the back-off stretches it), within the session limit.
SECONDS_STEP: Final = 30.0
SECONDS_MIN: Final = 60.0
MAX_ENERGY_PER_POSITION_J: Final = 1800.0
# A rung whose session runs over the limit: the next rung tried is the one the delivered mean power
# would fit into this share of the limit (the mean power is higher at smaller budgets: the first
# minute of each position is at full power).
FIT_SHARE: Final = 0.98
# A layout short of SEARCH_COVERAGE by less than this steps up one rung; farther, it jumps to the most
# laserd delivers in the session. Beyond the two largest delivered runs at least PROJECTION_MIN_RUNGS
# apart, the line through them bounds the coverage (it saturates with the energy): if that line does
# not reach SEARCH_COVERAGE by the most laserd delivers, the geometry is short without more runs.
NEAR_COVERAGE: Final = 0.01
PROJECTION_MIN_RUNGS: Final = 3
# After the light is off the tissue is followed this long: coagulation goes on for a while, and a
# protected structure a few mm outside the zone peaks after the end (conduction takes ~r^2/6 alpha:
# 2 min at 10 mm). The plan's endpoint does not wait for it; the prediction does.
COOLDOWN_S: Final = 180.0
# With a protected structure, the layouts are also tried moved this far away from it. (Moving
# toward a vessel to fight its heat sink was tried and lost every time: it uncovers the far side.)
SHIFT_MM: Final = 3.0

# --- the grids ---------------------------------------------------------------------------------------
# The search runs on 1.5 mm voxels. Under the tip cap the coarse grid must get the back-off right,
# and that needs the tip probe (2 mm from a charring tip) resolved: measured against 1 mm (same
# runs, 3 W, cap 95): 2 cm tumour, 4 fibres on an 8 mm square, 3 positions, 360 J: coverage 100 %
# on 2 mm, 82.8 % on 1.5 mm, 84.3 % on 1 mm; 3 fibres 16 mm apart, 4 positions, 900 J: session
# 1773 s / 2123 s / 2053 s, coverage 99.7 / 96.7 / 97.2 %. A 1.5 mm run costs about what a 2 mm one
# does (the per-step work, not the voxels, dominates a coarse run under the cap).
SEARCH_GRID_MM: Final = 1.5
# Targets beyond this radius are searched on 3 mm voxels (the open-loop screen, which needs no
# resolution of the back-off, refuses them in all the cases tried).
LARGE_TARGET_RADIUS_MM: Final = 30.0
LARGE_SEARCH_GRID_MM: Final = 3.0
CONFIRM_GRID_MM: Final = 1.0  # the physics' verified resolution (docs/physics.md, grid convergence)
# Tissue around the target, to the grid's body-temperature boundary: over 2.5 perfusion lengths
# (L = 4.6 mm; the shipped scenarios leave 10 mm). Measured: 15 or 27 mm instead changed the
# coverage of a 30 mm target in the fourth digit.
GRID_PAD_MM: Final = 12.0
GRID_MIN_MM: Final = 60.0  # small targets: about the shipped scenarios' 64 mm cube
# Grid sizes are an even number of 1, 1.5 and 3 mm voxels, so at every grid the voxel centres sit
# symmetrically about the tumour's centre and coarse and fine runs sample the target alike (an
# odd count moved the coarse coverage by a percentage point).
GRID_MULTIPLE_MM: Final = 12.0
# Confirmation: 1 mm runs of a candidate, longer each time it falls short of TARGET_COVERAGE (at
# most CONFIRM_ATTEMPTS), then the next candidate (at most CONFIRM_CANDIDATES).
CONFIRM_ATTEMPTS: Final = 2  # a 1 mm run under the cap is a full session: 10-50 s
CONFIRM_CANDIDATES: Final = 3
CONFIRM_ROUNDS: Final = 3  # searches again without the candidates the 1 mm grid turned down
# One kernel thread unless --threads says otherwise: two threads meet at a barrier on every grid
# plane, and on a 2-core machine with anything else running that is ruinous (measured: a 1 mm
# confirmation run 6 s on one thread, 37-74 s on two with two other jobs running).
DEFAULT_THREADS: Final = 1

# --- geometry of what lies near the tumour -------------------------------------------------------
VESSEL_DIAMETER_DEFAULT_MM: Final = 5.0
PROTECTED_RADIUS_DEFAULT_MM: Final = 10.0  # a gallbladder- or bowel-sized sphere
TIP_PROBE_OFFSET_MM: Final = 2.0  # as in the shipped scenarios: a tip probe a couple of mm from its tip
# A protected structure nearer the target (tumour + margin) than one voxel of the confirmation grid
# is refused without a search: the model cannot tell a coagulated margin voxel from a spared
# structure voxel next to it, and a 99 % coverage would just leave out the margin beside it.
PROTECTED_MIN_CLEARANCE_MM: Final = CONFIRM_GRID_MM

# --- input ranges (beyond them the input is a typo, not a patient) ------------------------------
TUMOUR_RANGE_MM: Final = (3.0, 100.0)
MARGIN_RANGE_MM: Final = (0.0, 20.0)
NEAR_DISTANCE_RANGE_MM: Final = (0.0, 40.0)  # farther than this a vessel or structure plays no part
VESSEL_DIAMETER_RANGE_MM: Final = (1.0, 25.0)
PROTECTED_RADIUS_RANGE_MM: Final = (1.0, 40.0)
POWER_RANGE_W: Final = (0.5, 10.0)  # the LS-4's maximum per channel is 10 W

OBJECTIVES: Final = ("fibres", "time", "energy")

Progress = Callable[[str], None]


class PlanInputError(ValueError):
    """Bad input to the planner: one line naming the option."""


class PlanRefused(Exception):
    """No plan the model accepts: one line saying why (and `search` holds what was tried)."""

    def __init__(self, reason: str, search: SearchLog | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.search = search


# --- the request ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PlanRequest:
    tumour_mm: float  # diameter
    margin_mm: float = 5.0
    vessel_mm: float | None = None  # gap between the tumour's edge and the vessel's wall
    vessel_diameter_mm: float = VESSEL_DIAMETER_DEFAULT_MM
    protected_mm: float | None = None  # gap between the tumour's edge and the structure's surface
    protected_radius_mm: float = PROTECTED_RADIUS_DEFAULT_MM
    protected_max_temp_c: float = PROTECTED_MAX_TEMP_DEFAULT_C
    protected_max_cem43_min: float = PROTECTED_MAX_CEM43_DEFAULT_MIN
    max_fibres: int = MAX_FIBRES
    power_w: float = POWER_DEFAULT_W
    tip_cap_c: float = TIP_CAP_DEFAULT_C
    session_limit_s: float = SESSION_LIMIT_DEFAULT_S
    channel_max_power_w: float = CHANNEL_MAX_POWER_DEFAULT_W  # the tip back-off's full scale
    objective: str = "fibres"

    @property
    def tumour_radius_mm(self) -> float:
        return self.tumour_mm / 2.0

    @property
    def target_radius_mm(self) -> float:
        return self.tumour_radius_mm + self.margin_mm

    def check(self) -> PlanRequest:
        """Raise PlanInputError (one line, naming the option) on anything out of range."""
        _in("--tumour-mm", self.tumour_mm, TUMOUR_RANGE_MM, "mm")
        _in("--margin-mm", self.margin_mm, MARGIN_RANGE_MM, "mm")
        if self.vessel_mm is not None:
            _in("--vessel-mm", self.vessel_mm, NEAR_DISTANCE_RANGE_MM, "mm")
        _in("--vessel-diameter-mm", self.vessel_diameter_mm, VESSEL_DIAMETER_RANGE_MM, "mm")
        if self.protected_mm is not None:
            _in("--protected-mm", self.protected_mm, NEAR_DISTANCE_RANGE_MM, "mm")
        _in("--protected-radius-mm", self.protected_radius_mm, PROTECTED_RADIUS_RANGE_MM, "mm")
        _in("--protected-max-temp-c", self.protected_max_temp_c, PROTECTED_TEMP_RANGE_C, "degC")
        if not 0.0 < self.protected_max_cem43_min <= PROTECTED_CEM43_CEILING_MIN:
            raise PlanInputError(f"--protected-max-cem43-min: expected above 0 and at most {PROTECTED_CEM43_CEILING_MIN:g} min, got {self.protected_max_cem43_min:g}")
        if not 1 <= self.max_fibres <= MAX_FIBRES:
            raise PlanInputError(f"--max-fibres: expected 1 to {MAX_FIBRES}, got {self.max_fibres}")
        _in("--power-w", self.power_w, POWER_RANGE_W, "W")
        _in("--tip-cap-c", self.tip_cap_c, TIP_TEMP_CAP_RANGE_C, "degC")
        _in("--max-duration-s", self.session_limit_s, (float(SESSION_DURATION_RANGE_S[0]), float(SESSION_DURATION_RANGE_S[1])), "s")
        if not self.power_w <= self.channel_max_power_w <= POWER_RANGE_W[1]:
            raise PlanInputError(f"--power-w: {self.power_w:g} W is above the site's limits.max_channel_power_w {self.channel_max_power_w:g} W")
        if self.objective not in OBJECTIVES:
            raise PlanInputError(f"--objective: expected one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        return self


def _in(option: str, value: float, bounds: tuple[float, float], unit: str) -> None:
    lo, hi = bounds
    if not math.isfinite(value) or not lo <= value <= hi:
        raise PlanInputError(f"{option}: expected {lo:g} to {hi:g} {unit}, got {value:g}")


# --- geometry ---------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Geometry:
    """Where the fibres go: n parallel fibres along +z, `spacing_mm` between neighbours, the
    pattern's centre `shift_mm` along +x (away from a protected structure, which lies on -x);
    `positions` illuminations with `pullback_mm` between them, centred on the tumour."""

    fibres: int
    spacing_mm: float
    positions: int
    pullback_mm: float
    shift_mm: float = 0.0

    @property
    def layout(self) -> str:
        return {1: "single", 2: "pair", 3: "triangle", 4: "square"}[self.fibres]

    def describe(self) -> str:
        what = "1 fibre" if self.fibres == 1 else f"{self.fibres} fibres ({self.layout}, {self.spacing_mm:g} mm apart)"
        where = "1 position" if self.positions == 1 else f"{self.positions} positions {self.pullback_mm:g} mm apart"
        shift = f", shifted {self.shift_mm:g} mm" if self.shift_mm else ""
        return f"{what}, {where}{shift}"


def fibre_xy(geom: Geometry, *, pair_along_x: bool = True) -> list[tuple[float, float]]:
    """(x, y) of each fibre in channel order."""
    n, s, dx = geom.fibres, geom.spacing_mm, geom.shift_mm
    if n == 1:
        pts = [(0.0, 0.0)]
    elif n == 2:
        pts = [(-s / 2, 0.0), (s / 2, 0.0)] if pair_along_x else [(0.0, -s / 2), (0.0, s / 2)]
    elif n == 3:  # equilateral, one fibre toward +x
        r = s / math.sqrt(3.0)
        pts = [(r * math.cos(a), r * math.sin(a)) for a in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)]
    else:
        pts = [(-s / 2, -s / 2), (s / 2, -s / 2), (s / 2, s / 2), (-s / 2, s / 2)]
    return [(round(x + dx, 3), round(y, 3)) for x, y in pts]


def spacing_for_ring(fibres: int, ring_mm: float) -> float:
    """Neighbour spacing of n fibres on a circle of radius ring_mm."""
    return {1: 0.0, 2: 2.0 * ring_mm, 3: math.sqrt(3.0) * ring_mm, 4: math.sqrt(2.0) * ring_mm}[fibres]


def candidate_geometries(req: PlanRequest) -> list[Geometry]:
    """Every layout the search considers, before any simulation."""
    r = req.target_radius_mm
    spacings: dict[int, list[float]] = {1: [0.0]}
    for n in range(2, req.max_fibres + 1):
        values = sorted({float(round(spacing_for_ring(n, f * r))) for f in RING_PER_TARGET_RADIUS})
        spacings[n] = [s for s in values if s >= MIN_FIBRE_SPACING_MM] or [MIN_FIBRE_SPACING_MM]
    axial: list[tuple[int, float]] = [(1, 0.0)]
    for positions in range(2, MAX_POSITIONS + 1):
        p = SPAN_PER_TARGET_RADIUS * r / (positions - 1)
        if p < PULLBACK_RANGE_MM[0]:
            break
        axial.append((positions, float(round(min(p, PULLBACK_RANGE_MM[1])))))
    shifts = [0.0, SHIFT_MM] if req.protected_mm is not None else [0.0]
    out = []
    for n in range(1, req.max_fibres + 1):
        for s in spacings[n]:
            for positions, p in axial:
                for dx in shifts:
                    out.append(Geometry(fibres=n, spacing_mm=s, positions=positions, pullback_mm=p, shift_mm=dx))
    return out


def search_grid_mm(req: PlanRequest) -> float:
    return LARGE_SEARCH_GRID_MM if req.target_radius_mm > LARGE_TARGET_RADIUS_MM else SEARCH_GRID_MM


def _vessel_axis_x(req: PlanRequest) -> float:
    assert req.vessel_mm is not None
    return req.tumour_radius_mm + req.vessel_mm + req.vessel_diameter_mm / 2.0


def _protected_center_x(req: PlanRequest) -> float:
    assert req.protected_mm is not None
    return -(req.tumour_radius_mm + req.protected_mm + req.protected_radius_mm)


def grid_size_mm(req: PlanRequest) -> float:
    """Edge of the cubic grid centred on the tumour."""
    half = req.target_radius_mm + GRID_PAD_MM
    half = max(half, SPAN_PER_TARGET_RADIUS * req.target_radius_mm / 2.0 + GRID_PAD_MM)
    if req.vessel_mm is not None:
        half = max(half, _vessel_axis_x(req) + req.vessel_diameter_mm / 2.0 + TIP_PROBE_OFFSET_MM)
    if req.protected_mm is not None:  # the structure's near half is in the grid
        half = max(half, -_protected_center_x(req) + TIP_PROBE_OFFSET_MM)
    return GRID_MULTIPLE_MM * math.ceil(max(2.0 * half, GRID_MIN_MM) / GRID_MULTIPLE_MM)


def first_tip_z(geom: Geometry) -> float:
    """The tips' z at the first position: the light sources (a transport mean free path ahead of the
    tips) are centred on the tumour over all positions."""
    from sim.tissue.properties import TissueProperties

    ahead = TissueProperties().transport_mean_free_path_mm
    return round((geom.positions - 1) * geom.pullback_mm / 2.0 - ahead, 3)


def _pair_along_x(req: PlanRequest) -> bool:
    # A pair lies along the line to a vessel (one fibre fights the heat sink), but across the line
    # to a protected structure when there is no vessel (neither fibre comes closer to it).
    return not (req.protected_mm is not None and req.vessel_mm is None)


@dataclass(frozen=True, kw_only=True)
class Probe:
    channel: int
    position_mm: tuple[float, float, float]
    role: str
    name: str
    fibre: int | None = None


def probes_for(req: PlanRequest, geom: Geometry) -> list[Probe]:
    """A tip probe per fibre (toward the pattern's centre, like the shipped scenarios), margin
    probes on the target sphere, and one on the protected structure's near wall."""
    z = first_tip_z(geom)
    xy = fibre_xy(geom, pair_along_x=_pair_along_x(req))
    cx = sum(x for x, _ in xy) / len(xy)
    cy = sum(y for _, y in xy) / len(xy)
    probes = []
    for ch, (x, y) in enumerate(xy):
        dx, dy = cx - x, cy - y
        d = math.hypot(dx, dy)
        ux, uy = (dx / d, dy / d) if d > 1e-9 else (1.0, 0.0)
        pos = (round(x + TIP_PROBE_OFFSET_MM * ux, 3), round(y + TIP_PROBE_OFFSET_MM * uy, 3), z)
        probes.append(Probe(channel=ch, position_mm=pos, role="tip", name=f"tip {ch}", fibre=ch))
    r = round(req.target_radius_mm, 3)
    margins = [((0.0, r, 0.0), "margin +y")]
    margins.append(((r, 0.0, 0.0), "margin, vessel side") if req.vessel_mm is not None else ((0.0, -r, 0.0), "margin -y"))
    if req.protected_mm is not None:
        margins.append(((-r, 0.0, 0.0), "margin, protected side"))
    else:
        margins.append(((0.0, 0.0, r), "margin +z"))
    channel = len(xy)
    for pos, name in margins:
        probes.append(Probe(channel=channel, position_mm=pos, role="margin", name=name))
        channel += 1
    if req.protected_mm is not None:
        wall = round(_protected_center_x(req) + req.protected_radius_mm, 3)
        probes.append(Probe(channel=channel, position_mm=(wall, 0.0, 0.0), role="protected", name="protected structure"))
    return probes


def scenario_document(req: PlanRequest, geom: Geometry, *, grid_mm: float, name: str = "plan") -> dict[str, Any]:
    """The simulator scenario (the dict sim.tissue.parse_scenario validates) for this geometry."""
    size = grid_size_mm(req)
    z = first_tip_z(geom)
    xy = fibre_xy(geom, pair_along_x=_pair_along_x(req))
    doc: dict[str, Any] = {
        "name": name,
        "description": f"laserctl plan: {req.tumour_mm:g} mm tumour + {req.margin_mm:g} mm margin; {geom.describe()}",
        "grid": {"size_mm": [size, size, size], "spacing_mm": grid_mm},
        "tumour": {"center_mm": [0.0, 0.0, 0.0], "radius_mm": req.tumour_radius_mm, "margin_mm": req.margin_mm},
        "fibres": [{"channel": ch, "tip_mm": [x, y, z], "direction": [0.0, 0.0, 1.0]} for ch, (x, y) in enumerate(xy)],
        "probes": [
            {"channel": p.channel, "position_mm": list(p.position_mm), "role": p.role, "name": p.name} for p in probes_for(req, geom)
        ],
    }
    if req.vessel_mm is not None:
        doc["vessels"] = [{
            "name": f"vessel {req.vessel_diameter_mm:g} mm",
            "point_mm": [round(_vessel_axis_x(req), 3), 0.0, 0.0],
            "direction": [0.0, 1.0, 0.0],
            "radius_mm": req.vessel_diameter_mm / 2.0,
        }]  # fmt: skip
    if req.protected_mm is not None:
        doc["protected"] = [{
            "name": "protected structure",
            "shape": "sphere",
            "center_mm": [round(_protected_center_x(req), 3), 0.0, 0.0],
            "radius_mm": req.protected_radius_mm,
        }]  # fmt: skip
    return doc


def vessel_share_of_target(req: PlanRequest) -> float:
    """The share of the target's voxels (1 mm grid) inside the vessel: the model holds them at body
    temperature, so they never coagulate."""
    if req.vessel_mm is None or req.vessel_mm >= req.margin_mm:
        return 0.0
    from sim.tissue import parse_scenario

    geom = Geometry(fibres=1, spacing_mm=0.0, positions=1, pullback_mm=0.0)
    sc = parse_scenario(scenario_document(req, geom, grid_mm=CONFIRM_GRID_MM))
    grid = sc.grid.grid()
    target = grid.sphere_mask((0.0, 0.0, 0.0), req.target_radius_mm)
    v = sc.vessels[0]
    vessel = grid.cylinder_mask(point_mm=v.point_mm, direction=v.direction, radius_mm=v.radius_mm, length_mm=v.length_mm)
    return float((target & vessel).sum()) / float(target.sum())


# --- evaluating a candidate -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """One run of a candidate the way laserd delivers it (sim.tissue.run.simulate with a TipCap)."""

    geometry: Geometry
    budget_j: float  # energy per fibre per position (the plan's energy_budget_j)
    grid_mm: float
    coverage: float  # share of tumour + margin coagulated
    tumour_coverage: float
    coagulated_ml: float
    protected_max_temp_c: float | None
    protected_max_cem43_min: float | None
    tip_max_c: float  # tissue at the tips
    tip_probe_max_c: float  # the tip probes (what the plan's tip cap is enforced on)
    energy_j: float  # delivered
    end: str  # sim.tissue.run.Delivery.end: "budget" when every position was delivered
    positions_done: int
    position_s: tuple[float, ...]  # each position begun: first light to its last fibre's budget
    pullback_s: float
    session_s: float  # first light to the end of the last position: what laserd's session clock counts, the operator aside
    backed_off_s: float
    wall_s: float

    @property
    def complete(self) -> bool:
        """Every position delivered within the session limit, no trip."""
        return self.end == "budget"

    @property
    def light_s(self) -> float:
        return sum(self.position_s)

    def harm(self, req: PlanRequest) -> str | None:
        """Why this harms the protected structure, or None."""
        t, c = self.protected_max_temp_c, self.protected_max_cem43_min
        if t is not None and t >= req.protected_max_temp_c:  # laserd trips at the limit itself
            return f"the protected structure reaches {t:.1f} degC (limit {req.protected_max_temp_c:g})"
        if c is not None and c >= req.protected_max_cem43_min:
            return f"the protected structure gets {c:.3g} CEM43 min (limit {req.protected_max_cem43_min:g})"
        return None

    def shortfall(self, req: PlanRequest) -> str:
        """Why laserd does not deliver this (complete is False)."""
        if self.end == "tip_cap_trip":
            return f"a tip probe reaches the {req.tip_cap_c:g} degC cap: laserd trips"
        return (
            f"{self.positions_done} of {self.geometry.positions} positions within {req.session_limit_s:g} s "
            f"({100 * self.coverage:.1f} % covered by then)"
        )


# The coarse runs let the emulation's control step grow faster (sim.tissue.run.TipCap.step_tol_c):
# measured on 1.5 mm (3 fibres, 2 positions, 900 J) 0.5 degC instead of 0.1 changed the session by
# 0.1 s in 1022 s, with 17 % fewer sweeps. The 1 mm runs keep the default.
COARSE_STEP_TOL_C: Final = 0.5
COARSE_CONTROL_STEP_S: Final = 8.0


def tip_cap_for(req: PlanRequest, geom: Geometry, budget_j: float, *, grid_mm: float) -> Any:
    """The sim.tissue.run.TipCap of this candidate: the plan's cap and session limit, each tip probe
    (channel c) guarding fibre c as in the written plan. On the coarse grids a tip probe at the cap
    does not end the run (trip_at_cap: an interpolation artifact there); on the 1 mm grid it does."""
    from sim.tissue.run import CONTROL_STEP_MAX_S, STEP_TOL_C, TipCap

    fine = grid_mm <= CONFIRM_GRID_MM
    return TipCap(
        cap_c=req.tip_cap_c,
        energy_budget_j=budget_j,
        full_scale_w=req.channel_max_power_w,
        tip_probes={ch: ch for ch in range(geom.fibres)},
        session_limit_s=req.session_limit_s,
        trip_at_cap=fine,
        step_tol_c=STEP_TOL_C if fine else COARSE_STEP_TOL_C,
        control_step_s=CONTROL_STEP_MAX_S if fine else COARSE_CONTROL_STEP_S,
    )


def simulate_geometry(req: PlanRequest, geom: Geometry, budget_j: float, *, grid_mm: float, threads: int | None = None) -> tuple[Any, Any, Any]:
    """(model, AblationResult, Delivery) of this geometry at `budget_j` per fibre per position, as
    laserd delivers it under the tip cap, cool-down included."""
    from sim.tissue import parse_scenario
    from sim.tissue.run import simulate

    scenario = parse_scenario(scenario_document(req, geom, grid_mm=grid_mm))
    return simulate(
        scenario, {ch: req.power_w for ch in range(geom.fibres)}, None, grid_mm=grid_mm, threads=threads,
        illuminations=geom.positions, pullback_mm=geom.pullback_mm if geom.positions > 1 else 0.0, cooldown_s=COOLDOWN_S,
        tip_cap=tip_cap_for(req, geom, budget_j, grid_mm=grid_mm),
    )  # fmt: skip


# Light bases memoised during a search: a fibre position's basis depends only on the grid, the
# source and mu_eff, and the bisection runs each geometry at several times (it is most of a
# coarse run's cost: measured 1.1 s of 1.6 s for 4 fibres x 4 positions on 3 mm). Coarse grids only
# (a 1 mm basis is 6 MB); at most this many kept.
LIGHT_MEMO_MAX_VOXELS: Final = 200_000
LIGHT_MEMO_ENTRIES: Final = 256


@contextmanager
def memoised_light_bases() -> Iterator[None]:
    """Within the block, the tissue model reuses the light basis of a fibre position it has seen.
    (It wraps sim.tissue.model's diffuse_basis, a pure function; if that name goes away this does
    nothing and runs are just slower.)"""
    import sim.tissue.model as tissue_model

    original = getattr(tissue_model, "diffuse_basis", None)
    if original is None:
        yield
        return
    memo: dict[tuple[Any, ...], Any] = {}

    def diffuse_basis(grid: Any, *, source_mm: Sequence[float], mu_eff_1_mm: float) -> Any:
        if grid.voxel_count > LIGHT_MEMO_MAX_VOXELS:
            return original(grid, source_mm=source_mm, mu_eff_1_mm=mu_eff_1_mm)
        key = (grid, tuple(round(float(c), 9) for c in source_mm), mu_eff_1_mm)
        if key not in memo:
            if len(memo) >= LIGHT_MEMO_ENTRIES:
                memo.pop(next(iter(memo)))
            memo[key] = original(grid, source_mm=source_mm, mu_eff_1_mm=mu_eff_1_mm)
        return memo[key]

    tissue_model.diffuse_basis = diffuse_basis  # type: ignore[attr-defined]
    try:
        yield
    finally:
        tissue_model.diffuse_basis = original  # type: ignore[attr-defined]


def open_loop_coverage(req: PlanRequest, geom: Geometry, budget_j: float, *, grid_mm: float) -> float | None:
    """The share of tumour + margin coagulated with every fibre at full power for the whole budget
    of every position, no tip cap, no session limit (None if that is longer than the simulator
    runs). The tip cap only ever lowers a fibre's power and the session limit only cuts: in every
    case measured the capped coverage was well below this (1 cm: 78 % against 100 %; 2 cm: 81-86 %
    against 99 %; 3.5 cm: 66 % against 99.6 %), so a layout short of it is short under the cap too
    (assumed, not proven: it is what keeps a refusal quick)."""
    from sim.tissue import parse_scenario
    from sim.tissue.run import MAX_SECONDS, simulate

    seconds = budget_j / req.power_w
    if seconds * geom.positions + COOLDOWN_S > MAX_SECONDS:
        return None
    scenario = parse_scenario(scenario_document(req, geom, grid_mm=grid_mm))
    _, result = simulate(
        scenario, {ch: req.power_w for ch in range(geom.fibres)}, seconds, grid_mm=grid_mm, threads=DEFAULT_THREADS,
        illuminations=geom.positions, pullback_mm=geom.pullback_mm if geom.positions > 1 else 0.0, cooldown_s=COOLDOWN_S,
    )  # fmt: skip
    assert result.tumour is not None
    return float(result.tumour.target_coagulated_fraction)


def evaluate(req: PlanRequest, geom: Geometry, budget_j: float, *, grid_mm: float, threads: int | None = None) -> tuple[Evaluation, Any, Any]:
    start = time.perf_counter()
    model, result, delivery = simulate_geometry(req, geom, budget_j, grid_mm=grid_mm, threads=threads)
    assert result.tumour is not None
    prot = result.protected[0] if result.protected else None
    tip_probes = [p.max_temp_c for p in result.probes if p.role == "tip"]
    ev = Evaluation(
        geometry=geom,
        budget_j=budget_j,
        grid_mm=grid_mm,
        coverage=result.tumour.target_coagulated_fraction,
        tumour_coverage=result.tumour.tumour_coagulated_fraction,
        coagulated_ml=result.coagulated_volume_ml,
        protected_max_temp_c=None if prot is None else prot.max_temp_c,
        protected_max_cem43_min=None if prot is None else prot.max_cem43_min,
        tip_max_c=result.max_tip_temp_c,
        tip_probe_max_c=max(tip_probes, default=math.nan),
        energy_j=result.energy_j,
        end=delivery.end,
        positions_done=delivery.positions_done,
        position_s=delivery.position_s,
        pullback_s=delivery.pullback_s,
        session_s=delivery.session_s,
        backed_off_s=delivery.backed_off_s,
        wall_s=time.perf_counter() - start,
    )
    return ev, model, result


# --- the search -------------------------------------------------------------------------------------


def budget_ladder(power_w: float) -> list[float]:
    """The energies per fibre per position the search may choose, smallest first."""
    top = MAX_ENERGY_PER_POSITION_J / power_w
    n = int((top - SECONDS_MIN) // SECONDS_STEP + 1e-9)
    return [round(power_w * (SECONDS_MIN + i * SECONDS_STEP), 3) for i in range(n + 1)]


def hand_pullback_s(geom: Geometry) -> float:
    """The pull-backs' tissue time (the model's hand: sim.tissue.model.PULLBACK_SPEED_MM_S)."""
    from sim.tissue.model import PULLBACK_SPEED_MM_S

    return (geom.positions - 1) * geom.pullback_mm / PULLBACK_SPEED_MM_S


def objective_key(objective: str, geom: Geometry, session_s: float, budget_j: float) -> tuple[float, ...]:
    """Smaller is better. Time is the session laserd needs (emulated, back-off included)."""
    if objective == "time":
        return (session_s, geom.fibres, geom.positions)
    if objective == "energy":
        return (geom.fibres * geom.positions * budget_j, geom.fibres, geom.positions)
    return (geom.fibres, session_s, geom.positions)


def least_key(req: PlanRequest, geom: Geometry, budget_j: float) -> tuple[float, ...]:
    """objective_key's lower bound before a run: every fibre at full power, never backed off."""
    return objective_key(req.objective, geom, geom.positions * budget_j / req.power_w + hand_pullback_s(geom), budget_j)


def evaluation_key(req: PlanRequest, ev: Evaluation) -> tuple[float, ...]:
    return objective_key(req.objective, ev.geometry, ev.session_s, ev.budget_j)


@dataclass(kw_only=True)
class Outcome:
    """What the search learnt about one geometry."""

    geometry: Geometry
    status: str  # covers | short | harms | not_better | confirmed | not_confirmed
    budget_j: float | None = None  # the least covering energy per fibre per position (status covers/harms/confirmed)
    best: Evaluation | None = None  # the evaluation that decided the status
    reason: str = ""


@dataclass(kw_only=True)
class SearchLog:
    outcomes: list[Outcome] = field(default_factory=list)
    runs: int = 0
    search_s: float = 0.0
    confirm_s: float = 0.0
    best_short: Evaluation | None = None  # the best coverage seen among runs not accepted (short, or over the session)
    best_open: tuple[Geometry, float, float] | None = None  # (geometry, energy, coverage): the best open-loop screen that fell short


class _Searcher:
    def __init__(self, req: PlanRequest, *, progress: Progress | None, threads: int | None) -> None:
        self.req = req
        self.progress = progress
        self.threads = threads or DEFAULT_THREADS
        self.grid_mm = search_grid_mm(req)
        self.ladder = budget_ladder(req.power_w)
        self.log = SearchLog()
        self.cache: dict[tuple[Geometry, float, float], Evaluation] = {}
        self.fields: dict[tuple[Geometry, float], tuple[Any, Any]] = {}  # the latest 1 mm run's model and result
        self.rejected: dict[Geometry, Outcome] = {}
        self.open_cache: dict[tuple[Geometry, float, float], float | None] = {}

    def run(self, geom: Geometry, budget_j: float, grid_mm: float | None = None) -> Evaluation:
        h = grid_mm or self.grid_mm
        key = (geom, budget_j, h)
        if key not in self.cache:
            threads = DEFAULT_THREADS if h > CONFIRM_GRID_MM else self.threads  # coarse grids: too small to share
            ev, model, result = evaluate(self.req, geom, budget_j, grid_mm=h, threads=threads)
            if h == CONFIRM_GRID_MM:  # for the image, if this one is accepted (one kept: 1 mm fields are big)
                self.fields = {(geom, budget_j): (model, result)}
            self.cache[key] = ev
            self.log.runs += 1
            accepted = ev.complete and ev.coverage >= SEARCH_COVERAGE
            if not accepted and (self.log.best_short is None or ev.coverage > self.log.best_short.coverage):
                self.log.best_short = ev
        return self.cache[key]

    def open_loop(self, geom: Geometry, budget_j: float) -> float | None:
        """open_loop_coverage on the search grid (the screen's optimistic bound), kept."""
        key = (geom, budget_j, -self.grid_mm)  # negative grid: open loop, not confused with the capped runs
        if key not in self.open_cache:
            self.open_cache[key] = open_loop_coverage(self.req, geom, budget_j, grid_mm=self.grid_mm)
            self.log.runs += 1
            c = self.open_cache[key]
            if c is not None and c < SEARCH_COVERAGE and (self.log.best_open is None or c > self.log.best_open[2]):
                self.log.best_open = (geom, budget_j, c)
        return self.open_cache[key]

    def covers(self, ev: Evaluation, threshold: float = SEARCH_COVERAGE) -> bool:
        return ev.complete and ev.coverage >= threshold

    def state(self, ev: Evaluation) -> str:
        """cover | short (delivered, falls short) | over (not delivered within the session, or a trip)."""
        if not ev.complete:
            return "over"
        return "cover" if ev.coverage >= SEARCH_COVERAGE else "short"

    def over_estimate(self, geom: Geometry, ev: Evaluation, below: int) -> int:
        """A rung below `below` that laserd should deliver within the session: the one the mean power
        delivered in `ev` fits into FIT_SHARE of the limit (the mean power falls with the energy:
        the first minute of each position is at full power, so from a smaller run this overshoots,
        from a larger one it undershoots)."""
        if ev.light_s <= 0.0:
            return below - 1
        mean_w = ev.energy_j / (geom.fibres * ev.light_s)
        fitting = mean_w * (FIT_SHARE * self.req.session_limit_s - hand_pullback_s(geom)) / geom.positions
        return min(below - 1, max((k for k, b in enumerate(self.ladder) if b <= fitting), default=0))

    def cannot_reach(self, seen: dict[int, Evaluation], reach: int) -> bool:
        """True if the delivered runs seen say no rung up to `reach` covers: coverage is concave in
        the energy (it saturates), so the line through the two largest delivered runs, at least
        PROJECTION_MIN_RUNGS apart, bounds it from above beyond them."""
        delivered = sorted((k, ev.coverage) for k, ev in seen.items() if ev.complete)
        if len(delivered) < 2:
            return False
        k2, c2 = delivered[-1]
        k1, c1 = next(((k, c) for k, c in reversed(delivered[:-1]) if k2 - k >= PROJECTION_MIN_RUNGS), (None, None))
        if k1 is None or c1 is None:
            return False
        slope = max(0.0, (c2 - c1) / (self.ladder[k2] - self.ladder[k1]))
        return c2 + slope * (self.ladder[reach] - self.ladder[k2]) < SEARCH_COVERAGE

    def least_cover(self, geom: Geometry, guess: int, limit: int) -> tuple[int | None, Evaluation, str]:
        """The least rung up to `limit` at which laserd delivers this geometry and it covers:
        (index, its evaluation, "cover"), else (None, the best evaluation seen, why: "short" when
        even the largest delivered rung falls short, "over" when none is delivered, "limit" when
        covering would need a rung above `limit`, "harms" when a run harms before covering).
        Starts at `guess` and gallops (1, 2, 4 ... rungs) to bracket, then bisects; a rung is
        "short" below the window laserd delivers and covers, "over" above it."""
        req = self.req
        seen: dict[int, Evaluation] = {}

        def at(k: int) -> str:
            seen[k] = self.run(geom, self.ladder[k])
            return self.state(seen[k])

        def best() -> Evaluation:
            """The best delivered run (else the best of those over the session)."""
            return max(seen.values(), key=lambda e: (e.complete, e.coverage, -e.budget_j))

        top = len(self.ladder) - 1
        k = min(max(guess, 0), limit)
        lo, hi, over = -1, None, top + 1  # lo: short (or below 0); hi: covers; over: not delivered
        s = at(k)
        while hi is None:  # bracket
            if s == "cover":
                hi = k
            elif s == "short":
                harm = seen[k].harm(req)
                if harm is not None:  # harms before it covers: covering takes more energy and harms more
                    return None, seen[k], "harms"
                lo = k
                if lo + 1 >= over:
                    return None, best(), "short"
                if lo >= limit:
                    return None, best(), "limit"
                reach = min(over - 1, limit)
                if self.cannot_reach(seen, reach):
                    return None, best(), "short"
                # close to the target: one rung up; else straight to the most laserd should deliver
                # in the session (the mean power of this run fitted to it)
                near = seen[lo].coverage >= SEARCH_COVERAGE - NEAR_COVERAGE
                k = lo + 1 if near else self.over_estimate(geom, seen[lo], over)
                k = min(max(k, lo + 1), reach)
                s = at(k)
            else:  # over: the window is below
                over = k
                if over <= lo + 1:
                    return None, best(), "short" if lo >= 0 else "over"
                k = min(max(lo + 1, self.over_estimate(geom, seen[k], over)), limit)
                if k <= lo:
                    return None, best(), "limit"
                s = at(k)
        step = 1
        while lo + 1 < hi:  # gallop down from the covering rung, then bisect
            k = max(hi - step, lo + 1) if step <= 2 else (lo + hi) // 2
            step *= 2
            s = at(k)
            if s == "cover":
                hi = k
            else:
                if s == "short" and seen[k].harm(req) is not None:
                    return None, seen[k], "harms"
                lo = k  # "over" below a covering rung cannot be: treated as short
        return hi, seen[hi], "cover"

    def search(self, rejected: dict[Geometry, Outcome] | None = None) -> list[Outcome]:
        """Each layout (fibre count, spacing, shift) is first screened with its most positions at
        full power without the cap (open_loop_coverage): if even that falls short, the layout is
        out. Then, most positions first, each geometry's least covering energy is searched on the
        ladder (least_cover), only over rungs that could beat the best candidate so far; if the
        most positions fall short at every energy laserd delivers in the session, so do the fewer
        positions (in the same session they deliver about the same energy from fewer places;
        assumed, not proven). Geometries in `rejected` (turned down on the 1 mm grid) keep that
        outcome."""
        req = self.req
        self.rejected = rejected or {}
        self.log.outcomes = []
        layouts: dict[tuple[int, float, float], list[Geometry]] = {}
        for g in candidate_geometries(req):
            layouts.setdefault((g.fibres, g.spacing_mm, g.shift_mm), []).append(g)
        few_first = req.objective == "fibres"  # else many fibres first: a short incumbent early prunes the rest
        order = sorted(layouts, key=lambda k: (k[0] if few_first else -k[0], k[1], k[2]))
        incumbent: tuple[float, ...] | None = None
        start = time.perf_counter()
        for li, key in enumerate(order):
            geoms = sorted(layouts[key], key=lambda g: -g.positions)  # most positions first
            most = geoms[0]
            if incumbent is not None and req.objective == "fibres" and most.fibres > incumbent[0]:
                self.log.outcomes.extend(Outcome(geometry=g, status="not_better", reason="more fibres than the best found") for g in geoms)
                continue
            self._say(f"layout {li + 1}/{len(order)}: {most.describe()}")
            bound = self.open_loop(most, self.ladder[-1])
            if bound is not None and bound < SEARCH_COVERAGE:
                why = f"{100 * bound:.1f} % even at full power without the tip cap, {self.ladder[-1]:g} J per position"
                for g in geoms:
                    self.log.outcomes.append(Outcome(geometry=g, status="short", reason=why + ("" if g is most else f" with {most.positions} positions")))
                continue
            for geom in geoms:
                self._say(f"layout {li + 1}/{len(order)}: {geom.describe()}")
                incumbent, outcome = self._least_budget(geom, incumbent)
                if geom is most and outcome.status == "short":
                    for g in geoms[1:]:
                        self.log.outcomes.append(Outcome(geometry=g, status="short", reason=f"{outcome.reason} with {most.positions} positions"))
                    break
        self.log.search_s += time.perf_counter() - start
        return self.log.outcomes

    def _guess(self, geom: Geometry) -> int:
        """Where least_cover starts: the energy of the last covering candidate with as many fibres,
        scaled to this many positions (about the same energy in all); else the middle rung."""
        same = [o for o in self.log.outcomes if o.status == "covers" and o.budget_j is not None and o.geometry.fibres == geom.fibres]
        if not same:
            return len(self.ladder) // 2
        o = same[-1]
        assert o.budget_j is not None
        wanted = o.budget_j * o.geometry.positions / geom.positions
        return min(range(len(self.ladder)), key=lambda k: abs(self.ladder[k] - wanted))

    def _least_budget(self, geom: Geometry, incumbent: tuple[float, ...] | None) -> tuple[tuple[float, ...] | None, Outcome]:
        """The least covering energy of one geometry: (the maybe new incumbent key, its outcome)."""
        req = self.req
        if geom in self.rejected:
            self.log.outcomes.append(self.rejected[geom])
            return incumbent, self.rejected[geom]
        limit = len(self.ladder) - 1
        if incumbent is not None:  # only rungs that could beat the best so far (their lower bound)
            limit = max((k for k in range(len(self.ladder)) if least_key(req, geom, self.ladder[k]) < incumbent), default=-1)
        if limit < 0:
            outcome = Outcome(geometry=geom, status="not_better", reason="cannot beat the best found")
        else:
            k, ev, why = self.least_cover(geom, self._guess(geom), limit)
            if k is None:
                if why == "harms":
                    outcome = Outcome(geometry=geom, status="harms", best=ev, reason=f"{ev.harm(req)} at {ev.budget_j:g} J per position, before covering")
                elif why == "limit":
                    outcome = Outcome(geometry=geom, status="not_better", best=ev,
                                      reason=f"{100 * ev.coverage:.1f} % at {ev.budget_j:g} J per position (cannot beat the best found)")  # fmt: skip
                elif why == "over":
                    outcome = Outcome(geometry=geom, status="short", best=ev, reason=f"{ev.shortfall(req)} at {ev.budget_j:g} J per position")
                elif ev.budget_j >= self.ladder[-1]:
                    outcome = Outcome(geometry=geom, status="short", best=ev, reason=f"{100 * ev.coverage:.1f} % at {ev.budget_j:g} J per position, the most per position")
                else:
                    outcome = Outcome(geometry=geom, status="short", best=ev,
                                      reason=f"{100 * ev.coverage:.1f} % at {ev.budget_j:g} J per position: one rung more runs over the {req.session_limit_s:g} s session")  # fmt: skip
            elif ev.harm(req) is not None:  # more energy only heats it more
                outcome = Outcome(geometry=geom, status="harms", budget_j=ev.budget_j, best=ev, reason=ev.harm(req) or "")
            else:
                outcome = Outcome(geometry=geom, status="covers", budget_j=ev.budget_j, best=ev)
                key = evaluation_key(req, ev)
                incumbent = key if incumbent is None or key < incumbent else incumbent
        self.log.outcomes.append(outcome)
        return incumbent, outcome

    def coarse_budget_for(self, geom: Geometry, coverage: float) -> float:
        """The energy at which the coarse runs of this geometry reach `coverage`, interpolated
        between the complete coarse runs made so far (through 0 below the smallest)."""
        points = sorted((ev.budget_j, ev.coverage) for (g, _, h), ev in self.cache.items() if g == geom and h == self.grid_mm and ev.complete)
        b0, c0 = 0.0, 0.0
        for b, c in points:
            if c >= coverage:
                return b0 + (b - b0) * (coverage - c0) / (c - c0) if c > c0 else b
            b0, c0 = b, max(c0, c)
        return b0

    def next_rung(self, geom: Geometry, ev: Evaluation, top: int) -> int | None:
        """After a 1 mm run that falls short: the rung the fine grid should need, scaling the energy
        at which the coarse runs reach the target by (this energy / the energy at which they reach
        what the fine run reached); at least one rung up, at most `top`; None past it."""
        i = self.ladder.index(ev.budget_j)
        equivalent = self.coarse_budget_for(geom, ev.coverage)
        wanted = self.coarse_budget_for(geom, TARGET_COVERAGE) * (ev.budget_j / equivalent if equivalent > 0.0 else 1.0)
        j = next((k for k, b in enumerate(self.ladder) if b >= wanted - 1e-9), len(self.ladder))
        j = max(j, i + 1)
        return j if j <= top else None

    def confirm(self, outcome: Outcome) -> Evaluation | None:
        """The candidate on the 1 mm grid, under the cap; None if it harms, laserd does not deliver
        it within the session (or trips), or it still falls short after CONFIRM_ATTEMPTS. When a
        run falls short, the next energy is next_rung's (coarse runs are cheap, fine ones are not)."""
        assert outcome.budget_j is not None
        geom = outcome.geometry
        ladder = self.ladder
        i = ladder.index(outcome.budget_j)
        top = len(ladder) - 1
        ev: Evaluation | None = None
        for _ in range(CONFIRM_ATTEMPTS):
            self._say(f"confirming on {CONFIRM_GRID_MM:g} mm: {geom.describe()}, {ladder[i]:g} J per position")
            ev = self.run(geom, ladder[i], CONFIRM_GRID_MM)
            harm = ev.harm(self.req)
            if harm is not None:
                outcome.status, outcome.best, outcome.reason = "not_confirmed", ev, f"on {CONFIRM_GRID_MM:g} mm: {harm}"
                return None
            if not ev.complete:
                outcome.status, outcome.best, outcome.reason = "not_confirmed", ev, f"on {CONFIRM_GRID_MM:g} mm at {ev.budget_j:g} J per position: {ev.shortfall(self.req)}"
                return None
            if self.covers(ev, TARGET_COVERAGE):
                outcome.status, outcome.best, outcome.budget_j = "confirmed", ev, ev.budget_j
                return ev
            following = self.next_rung(geom, ev, top)
            if following is None:
                break
            i = following
        assert ev is not None
        outcome.status, outcome.best, outcome.reason = "not_confirmed", ev, f"on {CONFIRM_GRID_MM:g} mm: {100 * ev.coverage:.1f} % at {ev.budget_j:g} J per position"
        return None

    def _say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(f"{text} (run {self.log.runs + 1})")


@dataclass(frozen=True, kw_only=True)
class Proposal:
    request: PlanRequest
    geometry: Geometry
    budget_j: float  # per fibre per position
    prediction: Evaluation  # on the confirmation grid, under the cap
    log: SearchLog
    fields: tuple[Any, Any] | None = field(default=None, compare=False, repr=False)  # (TissueModel, AblationResult) of the prediction

    @property
    def energy_per_fibre_per_position_j(self) -> float:
        return self.budget_j

    @property
    def total_energy_j(self) -> float:
        return self.budget_j * self.geometry.fibres * self.geometry.positions

    @property
    def session_s(self) -> float:
        return self.prediction.session_s

    @property
    def light_s(self) -> float:
        return self.prediction.light_s

    @property
    def mean_power_w(self) -> float:
        """Per fibre, over the light time: what the back-off leaves of the plan's power."""
        return self.total_energy_j / (self.geometry.fibres * self.light_s) if self.light_s > 0 else math.nan


def propose(req: PlanRequest, *, progress: Progress | None = None, threads: int | None = None) -> Proposal:
    """Search, confirm, and return the proposal; PlanRefused (one line) if there is none."""
    req.check()
    m = req.margin_mm
    if req.protected_mm is not None and req.protected_mm < m:
        raise PlanRefused(
            f"refused: the protected structure is {req.protected_mm:g} mm from the tumour, inside the {m:g} mm margin: "
            f"the margin cannot be coagulated without coagulating it"
        )
    if req.protected_mm is not None and req.protected_mm < m + PROTECTED_MIN_CLEARANCE_MM:
        raise PlanRefused(
            f"refused: the protected structure is {req.protected_mm:g} mm from the tumour, within {PROTECTED_MIN_CLEARANCE_MM:g} mm "
            f"of the {m:g} mm margin: the margin beside it cannot be coagulated while sparing it"
        )
    blocked = vessel_share_of_target(req)
    if blocked > 1.0 - TARGET_COVERAGE:
        raise PlanRefused(
            f"refused: the {req.vessel_diameter_mm:g} mm vessel {req.vessel_mm:g} mm from the tumour takes {100 * blocked:.1f} % of the "
            f"tumour + margin, and blood in a large vessel does not coagulate: at most {100 * (1 - blocked):.1f} % can be covered"
        )
    searcher = _Searcher(req, progress=progress, threads=threads)
    rejected: dict[Geometry, Outcome] = {}
    best: tuple[Outcome, Evaluation] | None = None
    ranked: list[Outcome] = []

    def coarse_key(o: Outcome) -> tuple[float, ...]:
        assert o.best is not None
        return evaluation_key(req, o.best)

    def coarse_key_at(o: Outcome, budget_j: float) -> tuple[float, ...]:
        """The coarse grid's key of a candidate at the energy the 1 mm grid confirmed: compared with
        other candidates' coarse keys (the coarse grid's session times run ~10 % short of the fine one's)."""
        return evaluation_key(req, searcher.run(o.geometry, budget_j))

    with memoised_light_bases():
        for _ in range(CONFIRM_ROUNDS):
            outcomes = searcher.search(rejected)
            ranked = sorted((o for o in outcomes if o.status == "covers"), key=lambda o: (*coarse_key(o), -(o.best.coverage if o.best else 0.0)))
            start = time.perf_counter()
            # Confirm in rank order; a candidate that needed more energy on 1 mm may lose to the next
            # one, so the next ones are confirmed too while their coarse key could still beat it.
            for o in ranked[:CONFIRM_CANDIDATES]:
                if best is not None and coarse_key(o) >= coarse_key_at(best[0], best[1].budget_j):
                    break
                ev = searcher.confirm(o)
                if ev is None:
                    rejected[o.geometry] = o
                elif best is None or (*evaluation_key(req, ev), -ev.coverage) < (*evaluation_key(req, best[1]), -best[1].coverage):  # on 1 mm both
                    if best is not None:
                        best[0].status, best[0].reason = "covers", "confirmed, but another candidate is better"
                    best = (o, ev)
                else:
                    o.status, o.reason = "covers", "confirmed, but another candidate is better"
            searcher.log.confirm_s += time.perf_counter() - start
            if best is not None or not ranked:
                break  # else search again without what the 1 mm grid turned down
    if best is not None:
        o, ev = best
        fields = searcher.fields.get((o.geometry, ev.budget_j))
        return Proposal(request=req, geometry=o.geometry, budget_j=ev.budget_j, prediction=ev, log=searcher.log, fields=fields)
    raise PlanRefused(_refusal(req, searcher.log), searcher.log)


def _refusal(req: PlanRequest, log: SearchLog) -> str:
    target = f"a {req.tumour_mm:g} mm tumour + {req.margin_mm:g} mm margin ({2 * req.target_radius_mm:g} mm)"
    fibres = "1 fibre" if req.max_fibres == 1 else f"up to {req.max_fibres} fibres"
    harms = [o for o in log.outcomes if o.status == "harms" or (o.status == "not_confirmed" and o.best is not None and o.best.harm(req))]
    if harms:
        o = min(harms, key=lambda o: o.best.protected_max_temp_c if o.best and o.best.protected_max_temp_c is not None else math.inf)
        return f"refused: no plan covers {target} without harming the protected structure {req.protected_mm:g} mm away (closest: {o.geometry.describe()}: {o.reason})"
    cap = f"with the tip cap {req.tip_cap_c:g} degC laserd backs the fibres off"
    failed = [o for o in log.outcomes if o.status == "not_confirmed"]
    if failed:
        o = max(failed, key=lambda o: o.best.coverage if o.best else 0.0)
        return (
            f"refused: {cap}: no plan with {fibres} at {req.power_w:g} W covers {TARGET_COVERAGE * 100:g} % of {target} within "
            f"{req.session_limit_s:g} s on the {CONFIRM_GRID_MM:g} mm grid (closest: {o.geometry.describe()}: {o.reason})"
        )
    best = log.best_short
    if best is None and log.best_open is not None:  # every layout fell short even without the cap
        g, budget, coverage = log.best_open
        return (
            f"refused: no plan with {fibres} at {req.power_w:g} W covers {TARGET_COVERAGE * 100:g} % of {target} within "
            f"{MAX_ENERGY_PER_POSITION_J:g} J per fibre per position even at full power without the tip cap; best {100 * coverage:.1f} % "
            f"with {g.describe()}, {budget:g} J per position"
        )
    detail = ""
    if best is not None:
        g = best.geometry
        done = "" if best.complete else f", {best.positions_done} of {g.positions} positions done"
        detail = (
            f"; the best layout covers {100 * best.coverage:.1f} % of tumour + margin within {req.session_limit_s:g} s "
            f"({g.describe()}, {best.budget_j:g} J per fibre per position{done}; {best.grid_mm:g} mm grid)"
        )
    return (
        f"refused: {cap}: no plan with {fibres} at {req.power_w:g} W covers {TARGET_COVERAGE * 100:g} % of {target} "
        f"within {req.session_limit_s:g} s and {MAX_ENERGY_PER_POSITION_J:g} J per fibre per position{detail}"
    )


# --- the written files ------------------------------------------------------------------------------


def _num(v: float) -> str:
    """A TOML number: integers without a fraction, others to 3 decimals."""
    r = round(float(v), 3)
    return str(int(r)) if r == int(r) else repr(r)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _num(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string for the text we write
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def toml_text(doc: dict[str, Any], *, header: Sequence[str] = ()) -> str:
    """TOML for a document of scalars, tables of scalars and arrays of such tables."""
    lines = [f"# {h}" for h in header]
    scalars = [k for k, v in doc.items() if not isinstance(v, (dict, list)) or (isinstance(v, list) and not (v and isinstance(v[0], dict)))]
    if lines and scalars:
        lines.append("")
    for k, v in doc.items():
        if not isinstance(v, (dict, list)) or (isinstance(v, list) and not (v and isinstance(v[0], dict))):
            lines.append(f"{k} = {_value(v)}")
    for k, v in doc.items():
        tables = [v] if isinstance(v, dict) else v if isinstance(v, list) and v and isinstance(v[0], dict) else None
        if tables is None:
            continue
        for t in tables:
            lines.append("")
            lines.append(f"[{k}]" if isinstance(v, dict) else f"[[{k}]]")
            lines.extend(f"{kk} = {_value(vv)}" for kk, vv in t.items())
    return "\n".join(lines) + "\n"


def reproduce_command(p: Proposal, scenario_path: str) -> str:
    """The Python call that reruns the prediction (laser-sim ablate runs open loop only: it has no tip cap)."""
    g, req = p.geometry, p.request
    powers = "{" + ", ".join(f"{ch}: {req.power_w:g}" for ch in range(g.fibres)) + "}"
    guards = "{" + ", ".join(f"{ch}: {ch}" for ch in range(g.fibres)) + "}"
    axial = f", illuminations={g.positions}, pullback_mm={g.pullback_mm:g}" if g.positions > 1 else ""
    return (
        f"python -c 'from sim.tissue.run import simulate, TipCap; m, r, d = simulate(\"{scenario_path}\", {powers}, None{axial}, "
        f"cooldown_s={COOLDOWN_S:g}, threads=1, tip_cap=TipCap(cap_c={req.tip_cap_c:g}, energy_budget_j={p.budget_j:g}, "
        f"full_scale_w={req.channel_max_power_w:g}, tip_probes={guards}, session_limit_s={req.session_limit_s:g})); print(r.to_json()); print(d)'"
    )


def ablate_command(p: Proposal, scenario_path: str) -> str:
    """The open-loop run of the same energies (every fibre at full power, no tip cap): for comparison."""
    g = p.geometry
    powers = " ".join(f"--power {ch}={p.request.power_w:g}" for ch in range(g.fibres))
    axial = f" --illuminations {g.positions} --pullback-mm {g.pullback_mm:g}" if g.positions > 1 else ""
    seconds = p.budget_j / p.request.power_w
    return f"laser-sim ablate --scenario {scenario_path} {powers} --seconds {seconds:g}{axial} --cooldown {COOLDOWN_S:g} --png zone.png"


def scenario_toml(p: Proposal, *, scenario_path: str = "scenario.toml") -> str:
    doc = scenario_document(p.request, p.geometry, grid_mm=CONFIRM_GRID_MM, name="plan")
    header = [
        "Simulator scenario written by `laserctl plan` (docs/planning.md): the patient of the proposal.",
        "The fibre tips are at their first position; reproduce the prediction (laserd's delivery under the tip cap) with",
        f"  {reproduce_command(p, scenario_path)}",
        f"or serve it: laser-sim serve --tcp 127.0.0.1:5020 --scenario {scenario_path}",
    ]
    return toml_text(doc, header=header)


PERMISSIVE_LIMITS: Final = HardLimits(
    max_channel_power_w=POWER_RANGE_W[1],
    max_fibre_energy_j=36_000.0,
    max_session_energy_j=144_000.0,
    max_session_duration_s=SESSION_DURATION_RANGE_S[1],
    tip_temp_cap_c=TIP_TEMP_CAP_RANGE_C[1],
    protected_max_temp_c=PROTECTED_TEMP_RANGE_C[1],
    protected_max_cem43_min=PROTECTED_CEM43_CEILING_MIN,
    probe_stale_ms=500,
    max_temp_rate_c_per_s=20.0,
    power_tolerance_fraction=0.2,
    power_tolerance_persist_ms=200,
    energy_crosscheck_tolerance_fraction=0.05,
    energy_crosscheck_tolerance_j=5.0,
)  # the config's own ceilings: a plan written without --config is still checked for form


# Session duration: the emulated session (back-off included) with room for what the emulation does
# not see (finer anatomy than 1 mm, the FT-8's lag: the cross-check against the real closed loop,
# tests/test_planner.py, agrees within a few per cent), plus the operator's time for each pull-back,
# lowered to the session limit.
DURATION_HEADROOM: Final = 1.1
PULLBACK_ALLOWANCE_S: Final = 300.0
# The plan's max_session_energy_j lies this much (per fibre and position) above the planned energy:
# the safety layer stops each fibre a few hundredths of a joule short of its budget and trips on the
# session budget when what is left of it falls as low (measured on tests/control_rig.py: a plan with
# the session budget equal to the fibre budgets ended every treatment in a session_energy_budget
# trip, FAULTED instead of COMPLETE; 0.5 J above it ended COMPLETE).
SESSION_ENERGY_HEADROOM_J: Final = 1.0


def session_duration_s(p: Proposal, limits: HardLimits) -> int:
    """The plan's max_duration_s: the emulated session with headroom and the operator's pull-backs,
    lowered to the session limit as long as the emulated session still fits; PlanRefused if not."""
    g = p.geometry
    needed = p.session_s
    wanted = math.ceil(p.session_s * DURATION_HEADROOM + (g.positions - 1) * PULLBACK_ALLOWANCE_S)
    ceiling = min(limits.max_session_duration_s, p.request.session_limit_s, SESSION_DURATION_RANGE_S[1])
    if needed > ceiling:
        raise PlanRefused(
            f"refused: laserd needs {needed:.0f} s for this plan under the tip cap but the site's limits.max_session_duration_s is "
            f"{limits.max_session_duration_s}"
        )
    return int(min(max(wanted, SESSION_DURATION_RANGE_S[0]), ceiling))


def plan_document(p: Proposal, limits: HardLimits | None = None) -> dict[str, Any]:
    req, g = p.request, p.geometry
    per = p.energy_per_fibre_per_position_j
    duration = session_duration_s(p, limits or PERMISSIVE_LIMITS)
    doc: dict[str, Any] = {
        "session": {
            "max_session_energy_j": round(p.total_energy_j + SESSION_ENERGY_HEADROOM_J * g.fibres * g.positions, 3),
            "max_duration_s": int(duration),
            "tip_temp_cap_c": req.tip_cap_c,
            "illuminations": g.positions,
            "endpoint": "all_fibres_at_budget",
        },
        "fibres": [
            {"channel": ch, "mode": "FIXED_POWER", "power_w": req.power_w, "energy_budget_j": round(per, 3), "label": f"fibre {ch}"}
            for ch in range(g.fibres)
        ],
        "probes": [],
    }
    for probe in probes_for(req, g):
        entry: dict[str, Any] = {"channel": probe.channel, "role": probe.role}
        if probe.role == "tip":
            entry["fibre"] = probe.fibre
        elif probe.role == "protected":
            entry["max_temp_c"] = req.protected_max_temp_c
            entry["max_cem43_min"] = req.protected_max_cem43_min
        entry["label"] = probe.name
        doc["probes"].append(entry)
    return doc


def plan_toml(p: Proposal, limits: HardLimits | None = None) -> str:
    g = p.geometry
    positions = ", ".join(f"{s:.0f}" for s in p.prediction.position_s)
    header = [
        "Treatment plan written by `laserctl plan` (docs/planning.md); load it with `laserctl load`.",
        f"{p.request.tumour_mm:g} mm tumour + {p.request.margin_mm:g} mm margin: {g.describe()}.",
        f"Each fibre {p.request.power_w:g} W, backed off near the {p.request.tip_cap_c:g} degC tip cap, until {p.budget_j:g} J per position"
        + (f"; pull every fibre back {g.pullback_mm:g} mm between positions." if g.positions > 1 else "."),
        f"Predicted (laserd's delivery emulated on the 1 mm model): positions of {positions} s, session {p.session_s:.0f} s, "
        f"{100 * p.prediction.coverage:.1f} % of tumour + margin coagulated. Tip positions and probe placement: scenario.toml.",
    ]
    return toml_text(plan_document(p, limits), header=header)


def summary_dict(p: Proposal, *, files: dict[str, str] | None = None) -> dict[str, Any]:
    g, ev, req = p.geometry, p.prediction, p.request
    scenario = (files or {}).get("scenario", "scenario.toml")
    return _rounded({
        "ok": True,
        "request": asdict(req),
        "objective": req.objective,
        "proposal": {
            "fibres": g.fibres,
            "layout": g.layout,
            "spacing_mm": g.spacing_mm,
            "positions": g.positions,
            "pullback_mm": g.pullback_mm if g.positions > 1 else 0.0,
            "shift_mm": g.shift_mm,
            "power_w": req.power_w,
            "energy_per_fibre_per_position_j": p.energy_per_fibre_per_position_j,
            "total_energy_j": p.total_energy_j,
            "position_s": list(ev.position_s),
            "light_s": p.light_s,
            "pullback_s": ev.pullback_s,
            "session_s": p.session_s,
            "session_limit_s": req.session_limit_s,
            "mean_power_w": p.mean_power_w,
            "tip_cap_c": req.tip_cap_c,
            "cooldown_s": COOLDOWN_S,
            "first_tips_mm": [[x, y, first_tip_z(g)] for x, y in fibre_xy(g, pair_along_x=_pair_along_x(req))],
        },
        "prediction": _evaluation_dict(ev),
        "candidates": candidates_list(req, p.log),
        "timing": {"runs": p.log.runs, "search_s": p.log.search_s, "confirm_s": p.log.confirm_s},
        "files": files or {},
        "reproduce": reproduce_command(p, scenario),
        "open_loop": ablate_command(p, scenario),
    })  # fmt: skip


def refusal_dict(req: PlanRequest, reason: str, log: SearchLog | None) -> dict[str, Any]:
    return _rounded({
        "ok": False,
        "refused": reason,
        "request": asdict(req),
        "objective": req.objective,
        "candidates": [] if log is None else candidates_list(req, log),
        "timing": {} if log is None else {"runs": log.runs, "search_s": log.search_s, "confirm_s": log.confirm_s},
    })  # fmt: skip


def _evaluation_dict(ev: Evaluation) -> dict[str, Any]:
    d = asdict(ev)
    d.pop("geometry")
    d["energy_per_fibre_per_position_j"] = d.pop("budget_j")
    d["target_coagulated_fraction"] = d.pop("coverage")
    d["tumour_coagulated_fraction"] = d.pop("tumour_coverage")
    d["complete"] = ev.complete
    d["light_s"] = ev.light_s
    return d


STATUS_ORDER: Final = {"confirmed": 0, "covers": 1, "not_confirmed": 2, "harms": 3, "short": 4, "not_better": 5}


def candidates_list(req: PlanRequest, log: SearchLog) -> list[dict[str, Any]]:
    """Every geometry considered, ranked: confirmed, then covering ones by the objective, then the rest."""

    def key(o: Outcome) -> tuple[Any, ...]:
        cov = o.best.coverage if o.best is not None else -1.0
        obj = evaluation_key(req, o.best) if o.budget_j is not None and o.best is not None else (math.inf,)
        return (STATUS_ORDER[o.status], obj, -cov)

    out = []
    for rank, o in enumerate(sorted(log.outcomes, key=key), start=1):
        entry: dict[str, Any] = {"rank": rank, "status": o.status, **asdict(o.geometry), "layout": o.geometry.layout}
        entry["energy_per_fibre_per_position_j"] = o.budget_j
        if o.budget_j is not None:
            entry["energy_j"] = o.budget_j * o.geometry.positions * o.geometry.fibres
            if o.best is not None:
                entry["session_s"] = o.best.session_s
        if o.best is not None:
            entry["evaluated"] = _evaluation_dict(o.best)
        if o.reason:
            entry["reason"] = o.reason
        out.append(entry)
    return out


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return None if not math.isfinite(value) else float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def summary_text(p: Proposal, *, files: dict[str, str] | None = None) -> str:
    g, ev, req = p.geometry, p.prediction, p.request
    positions = ", ".join(f"{s:.0f}" for s in ev.position_s)
    lines = [
        f"plan for a {req.tumour_mm:g} mm tumour + {req.margin_mm:g} mm margin ({2 * req.target_radius_mm:g} mm target)"
        + (f", {req.vessel_diameter_mm:g} mm vessel {req.vessel_mm:g} mm away" if req.vessel_mm is not None else "")
        + (f", protected structure {req.protected_mm:g} mm away" if req.protected_mm is not None else ""),
        f"  {g.describe()}",
        f"  each fibre {req.power_w:g} W until {p.budget_j:g} J per position"
        + (f"; pull back {g.pullback_mm:g} mm between positions" if g.positions > 1 else ""),
        f"  {p.total_energy_j / 1000:.1f} kJ in all",
        f"predicted as laserd delivers it (tip cap {req.tip_cap_c:g} degC: the safety layer backs a fibre off as its tip probe nears it),",
        f"on a {ev.grid_mm:g} mm grid, with {COOLDOWN_S:g} s of cooling after:",
        f"  positions take {positions} s (mean {p.mean_power_w:.2f} W per fibre); session {p.session_s / 60:.1f} min of the {req.session_limit_s / 60:g} min limit"
        + (f" ({ev.pullback_s:.0f} s of it the hand's pull-backs)" if g.positions > 1 else ""),
        f"  tumour + margin coagulated {100 * ev.coverage:.1f} % (tumour {100 * ev.tumour_coverage:.1f} %), zone {ev.coagulated_ml:.1f} ml",
    ]
    if ev.protected_max_temp_c is not None:
        lines.append(
            f"  protected structure: max {ev.protected_max_temp_c:.1f} degC (limit {req.protected_max_temp_c:g}), "
            f"CEM43 {ev.protected_max_cem43_min or 0.0:.3g} min (limit {req.protected_max_cem43_min:g})"
        )
    lines.append(f"  tip tissue max {ev.tip_max_c:.0f} degC (chars above 100), tip probes max {ev.tip_probe_max_c:.1f} degC")
    ok = sum(1 for o in p.log.outcomes if o.status in ("covers", "confirmed"))
    lines.append(f"searched {len(p.log.outcomes)} layouts ({ok} cover) in {p.log.runs} runs: {p.log.search_s:.1f} s search, {p.log.confirm_s:.1f} s confirmation")
    for name, path in (files or {}).items():
        lines.append(f"wrote {name:<9} {path}")
    return "\n".join(lines) + "\n"


def checked_plan_text(p: Proposal, limits: HardLimits = PERMISSIVE_LIMITS) -> str:
    """The plan TOML, loaded with controller.plan.load_plan against `limits` (PlanRefused if it
    does not fit them)."""
    from .plan import load_plan
    from .settings import SettingsError

    text = plan_toml(p, limits)
    try:
        load_plan(text, limits=limits)
    except SettingsError as exc:
        raise PlanRefused(f"refused: the proposed plan does not fit the site's limits: {exc}") from None
    return text


def write_outputs(p: Proposal, out_dir: Path, *, limits: HardLimits = PERMISSIVE_LIMITS, threads: int | None = None) -> dict[str, str]:
    """plan.toml, scenario.toml, zone.png and summary.json in out_dir. The plan is checked with
    controller.plan.load_plan and the scenario with the simulator's loader before anything is
    written (PlanRefused if the plan does not fit the limits)."""
    from sim.tissue import parse_scenario
    from sim.tissue.render import write_png

    plan_text = checked_plan_text(p, limits)
    scen_text = scenario_toml(p)
    import tomllib

    parse_scenario(tomllib.loads(scen_text), name="plan")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"plan": str(out_dir / "plan.toml"), "scenario": str(out_dir / "scenario.toml"), "image": str(out_dir / "zone.png"), "summary": str(out_dir / "summary.json")}
    Path(files["plan"]).write_text(plan_text, encoding="utf-8")
    Path(files["scenario"]).write_text(scen_text, encoding="utf-8")
    if p.fields is not None:
        model, result = p.fields
    else:
        model, result, _ = simulate_geometry(p.request, p.geometry, p.budget_j, grid_mm=CONFIRM_GRID_MM, threads=threads or DEFAULT_THREADS)
    write_png(model, files["image"], result=result)
    Path(files["summary"]).write_text(json.dumps(summary_dict(p, files=files), indent=2) + "\n", encoding="utf-8")
    return files


# --- laserctl plan ------------------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    """The `plan` subcommand of laserctl (offline: needs no daemon)."""
    p = sub.add_parser("plan", help="propose fibres, spacing and energy for a tumour by running the tissue model (offline)")
    p.add_argument("--tumour-mm", metavar="D", help="tumour diameter, mm (required)")
    p.add_argument("--margin-mm", metavar="MM", default="5", help="ablative margin around the tumour (default 5)")
    p.add_argument("--vessel-mm", metavar="DIST", help="a large vessel this far from the tumour's edge (wall to edge), mm")
    p.add_argument("--vessel-diameter-mm", metavar="MM", default=str(VESSEL_DIAMETER_DEFAULT_MM), help=f"its diameter (default {VESSEL_DIAMETER_DEFAULT_MM:g})")
    p.add_argument("--protected-mm", metavar="DIST", help="a structure to spare this far from the tumour's edge, mm")
    p.add_argument("--protected-radius-mm", metavar="MM", default=str(PROTECTED_RADIUS_DEFAULT_MM), help=f"its radius, a sphere (default {PROTECTED_RADIUS_DEFAULT_MM:g})")
    p.add_argument("--protected-max-temp-c", metavar="C", default=str(PROTECTED_MAX_TEMP_DEFAULT_C), help=f"its temperature limit (default {PROTECTED_MAX_TEMP_DEFAULT_C:g})")
    p.add_argument("--protected-max-cem43-min", metavar="MIN", default=str(PROTECTED_MAX_CEM43_DEFAULT_MIN), help=f"its thermal-dose limit (default {PROTECTED_MAX_CEM43_DEFAULT_MIN:g})")
    p.add_argument("--max-fibres", metavar="N", default=str(MAX_FIBRES), help=f"at most this many fibres (default {MAX_FIBRES})")
    p.add_argument("--power-w", metavar="W", default=str(POWER_DEFAULT_W), help=f"power per fibre (default {POWER_DEFAULT_W:g})")
    p.add_argument("--tip-cap-c", metavar="C", default=None, help=f"the plan's tip temperature cap (default {TIP_CAP_DEFAULT_C:g}, or the --config site's)")
    p.add_argument("--max-duration-s", metavar="S", default=None,
                   help=f"the session limit the treatment must fit, back-off included (default: the --config site's max_session_duration_s, else {SESSION_LIMIT_DEFAULT_S:g})")  # fmt: skip
    p.add_argument("--objective", default="fibres", metavar="WHAT", help="rank by fibres (fewest, then least time; default), time or energy")
    p.add_argument("--config", metavar="F", help="a laserd config: the written plan must fit its hard limits")
    p.add_argument("--out", metavar="DIR", help="write plan.toml, scenario.toml, zone.png and summary.json here")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--threads", metavar="N", default=None, help=f"kernel threads for the {CONFIRM_GRID_MM:g} mm runs (default {DEFAULT_THREADS}: robust on a busy machine)")
    p.error = _usage_error  # type: ignore[method-assign]


def _usage_error(message: str) -> NoReturn:
    print(f"{PROG}: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def _number(option: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        v = float(text)
    except ValueError:
        raise PlanInputError(f"{option}: {text!r} is not a number") from None
    if not math.isfinite(v):
        raise PlanInputError(f"{option}: expected a finite number, got {text}")
    return v


def _integer(option: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise PlanInputError(f"{option}: {text!r} is not an integer") from None


def request_from_args(args: argparse.Namespace, limits: HardLimits | None = None) -> PlanRequest:
    if args.tumour_mm is None:
        raise PlanInputError("--tumour-mm: missing (the tumour's diameter in mm)")
    tumour = _number("--tumour-mm", args.tumour_mm)
    vessel = _number("--vessel-mm", args.vessel_mm)
    protected = _number("--protected-mm", args.protected_mm)
    tip_cap = _number("--tip-cap-c", args.tip_cap_c)
    if tip_cap is None:
        tip_cap = min(TIP_CAP_DEFAULT_C, limits.tip_temp_cap_c) if limits is not None else TIP_CAP_DEFAULT_C
    session = _number("--max-duration-s", args.max_duration_s)
    if session is None:
        session = float(limits.max_session_duration_s) if limits is not None else SESSION_LIMIT_DEFAULT_S
    elif limits is not None and session > limits.max_session_duration_s:
        raise PlanInputError(f"--max-duration-s: {session:g} s is above the --config site's limits.max_session_duration_s {limits.max_session_duration_s}")
    req = PlanRequest(
        tumour_mm=tumour,  # type: ignore[arg-type]
        margin_mm=_number("--margin-mm", args.margin_mm),  # type: ignore[arg-type]
        vessel_mm=vessel,
        vessel_diameter_mm=_number("--vessel-diameter-mm", args.vessel_diameter_mm),  # type: ignore[arg-type]
        protected_mm=protected,
        protected_radius_mm=_number("--protected-radius-mm", args.protected_radius_mm),  # type: ignore[arg-type]
        protected_max_temp_c=_number("--protected-max-temp-c", args.protected_max_temp_c),  # type: ignore[arg-type]
        protected_max_cem43_min=_number("--protected-max-cem43-min", args.protected_max_cem43_min),  # type: ignore[arg-type]
        max_fibres=_integer("--max-fibres", args.max_fibres),
        power_w=_number("--power-w", args.power_w),  # type: ignore[arg-type]
        tip_cap_c=tip_cap,
        session_limit_s=session,
        channel_max_power_w=limits.max_channel_power_w if limits is not None else CHANNEL_MAX_POWER_DEFAULT_W,
        objective=args.objective,
    )
    return req.check()


class ProgressLine:
    """The search's progress on stderr, once it has taken more than a second."""

    AFTER_S: Final = 1.0
    EVERY_S: Final = 1.0

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.start = time.perf_counter()
        self.last = 0.0
        self.shown = False
        self.tty = stream.isatty()

    def __call__(self, text: str) -> None:
        now = time.perf_counter()
        if now - self.start < self.AFTER_S or now - self.last < self.EVERY_S:
            return
        self.last = now
        self.shown = True
        line = f"{PROG}: {now - self.start:5.1f} s  {text}"
        self.stream.write(("\r\x1b[K" + line) if self.tty else line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.shown and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def main(args: argparse.Namespace) -> int:
    """laserctl plan: 0 with a proposal, 1 refused, 2 bad input."""
    try:
        limits: HardLimits | None = None
        if args.config is not None:
            from .config import load_config
            from .settings import SettingsError

            try:
                limits = load_config(args.config).limits
            except SettingsError as exc:
                raise PlanInputError(f"--config: {exc}") from None
        req = request_from_args(args, limits)
        threads = None if args.threads is None else _integer("--threads", args.threads)
        if threads is not None and not 1 <= threads <= 64:
            raise PlanInputError(f"--threads: expected 1 to 64, got {threads}")
        out = Path(args.out) if args.out is not None else None
        if out is not None and out.exists() and not out.is_dir():
            raise PlanInputError(f"--out {out}: exists and is not a directory")
    except PlanInputError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    progress = ProgressLine(sys.stderr)
    try:
        proposal = propose(req, progress=progress, threads=threads)
        checked_plan_text(proposal, limits or PERMISSIVE_LIMITS)  # refused here, with or without --out
        files: dict[str, str] = {}
        if out is not None:
            progress("writing the plan, the scenario and the image")
            files = write_outputs(proposal, out, limits=limits or PERMISSIVE_LIMITS, threads=threads)
    except PlanRefused as exc:
        progress.done()
        if args.json:
            print(json.dumps(refusal_dict(req, exc.reason, exc.search), indent=2))
        print(f"{PROG}: {exc.reason}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as exc:
        progress.done()
        print(f"{PROG}: cannot write to {out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    progress.done()
    if args.json:
        print(json.dumps(summary_dict(proposal, files=files), indent=2))
    else:
        sys.stdout.write(summary_text(proposal, files=files))
    return EXIT_OK


def standalone(argv: Sequence[str] | None = None) -> int:
    """`python -m controller.planner ...` (the same as `laserctl plan ...`)."""
    parser = argparse.ArgumentParser(prog=PROG)
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    return main(parser.parse_args(["plan", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(standalone())

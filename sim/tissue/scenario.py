"""Scenario files (TOML): the patient's geometry, fibres, probes, vessels and protected structures.

Every field is validated on load; a bad one raises ScenarioError with one line that names it,
e.g. "scenario fibres[1].tip_mm: expected 3 numbers, got 2". The format is described in
docs/physics.md ("Scenario files"); the shipped ones are in sim/scenarios/.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .grid import Grid, Vec3, unit
from .properties import TissueProperties

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"
LS4_CHANNELS = 4
FT8_CHANNELS = 8
PROBE_ROLES = ("tip", "margin", "protected")
EMISSIONS = ("diffuse", "point_heat")
STRUCTURE_SHAPES = ("sphere", "cylinder")
MIN_SPACING_MM = 0.1
MAX_SPACING_MM = 5.0
# Placement: at most this many fibre positions, each pull-back at most this long (clinically 5-15 mm
# steps: Pacella et al. 2001, 2009 used 10 mm).
MAX_ILLUMINATIONS = 8
MAX_PULLBACK_MM = 30.0
MAX_VOXELS = 256**3  # 16.8 M voxels, ~0.8 GB of fields: a guard against a typo in the spacing
DEFAULT_MARGIN_MM = 5.0


class ScenarioError(ValueError):
    """A scenario that cannot be used; the message is one line naming the bad field."""


@dataclass(frozen=True, kw_only=True)
class GridSpec:
    size_mm: Vec3
    spacing_mm: float
    center_mm: Vec3 = (0.0, 0.0, 0.0)

    def grid(self, spacing_mm: float | None = None) -> Grid:
        return Grid.covering(size_mm=self.size_mm, spacing_mm=spacing_mm or self.spacing_mm, center_mm=self.center_mm)


@dataclass(frozen=True, kw_only=True)
class Tumour:
    center_mm: Vec3
    radius_mm: float
    margin_mm: float = DEFAULT_MARGIN_MM

    @property
    def target_radius_mm(self) -> float:
        return self.radius_mm + self.margin_mm


@dataclass(frozen=True, kw_only=True)
class FibreSpec:
    channel: int  # LS-4 channel, 0-3
    tip_mm: Vec3
    direction: Vec3  # unit vector, the way the light leaves the tip
    emission: str = "diffuse"  # "point_heat" deposits the power as heat at the tip (verification)


@dataclass(frozen=True, kw_only=True)
class ProbeSpec:
    channel: int  # FT-8 channel, 0-7
    position_mm: Vec3
    role: str  # tip, margin or protected
    name: str = ""


@dataclass(frozen=True, kw_only=True)
class VesselSpec:
    point_mm: Vec3
    direction: Vec3
    radius_mm: float
    length_mm: float | None = None  # None: runs through the whole grid
    name: str = ""


@dataclass(frozen=True, kw_only=True)
class StructureSpec:
    name: str
    shape: str  # sphere or cylinder
    center_mm: Vec3  # sphere centre, or a point on the cylinder's axis
    radius_mm: float
    direction: Vec3 | None = None  # cylinder axis
    length_mm: float | None = None  # cylinder length centred on center_mm; None: unbounded

    def mask(self, grid: Grid) -> Any:
        if self.shape == "sphere":
            return grid.sphere_mask(self.center_mm, self.radius_mm)
        assert self.direction is not None
        return grid.cylinder_mask(point_mm=self.center_mm, direction=self.direction, radius_mm=self.radius_mm, length_mm=self.length_mm)


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str
    grid: GridSpec
    fibres: tuple[FibreSpec, ...]
    tissue: TissueProperties = field(default_factory=TissueProperties)
    description: str = ""
    tumour: Tumour | None = None
    probes: tuple[ProbeSpec, ...] = ()
    vessels: tuple[VesselSpec, ...] = ()
    protected: tuple[StructureSpec, ...] = ()
    # The placement protocol the scenario was designed for: fibre positions, each pulled back
    # pullback_mm along its axis from the one before (run by bench rigs, the HIL suite, the demo).
    illuminations: int = 1
    pullback_mm: float = 0.0
    source: str = ""

    def fibre_on(self, channel: int) -> FibreSpec | None:
        return next((f for f in self.fibres if f.channel == channel), None)

    def with_tissue(self, **changes: Any) -> Scenario:
        return replace(self, tissue=replace(self.tissue, **changes))


# --- reading ----------------------------------------------------------------------------------------------


def resolve_scenario_path(path: str | Path) -> Path:
    """A file path, or the name of a shipped scenario (with or without .toml)."""
    p = Path(path)
    if p.is_file():
        return p
    for candidate in (SCENARIO_DIR / p.name, SCENARIO_DIR / f"{p.name}.toml"):
        if p.parent == Path(".") and candidate.is_file():
            return candidate
    raise ScenarioError(f"scenario: no such file {path}")


def shipped_scenarios() -> list[Path]:
    return sorted(SCENARIO_DIR.glob("*.toml"))


def load_scenario(path: str | Path) -> Scenario:
    p = resolve_scenario_path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario {p.name}: invalid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"scenario {p.name}: cannot read: {exc}") from None
    return parse_scenario(data, name=p.stem, source=str(p))


def parse_scenario(data: Mapping[str, Any], *, name: str = "scenario", source: str = "") -> Scenario:
    """Validate a parsed TOML document (a dict) into a Scenario."""
    root = _Table(data, "")
    scenario_name = root.string("name", default=name)
    description = root.string("description", default="")
    grid_spec = _grid(root.table("grid"))
    grid = grid_spec.grid()
    tissue = _tissue(root.table("tissue", required=False))
    tumour_t = root.table("tumour", required=False)
    tumour = _tumour(tumour_t, grid) if tumour_t is not None else None
    fibres = tuple(_fibre(t, grid) for t in root.tables("fibres", min_count=1, max_count=LS4_CHANNELS))
    _unique(fibres, "fibres", "channel", "LS-4 channel")
    probes = tuple(_probe(t, grid) for t in root.tables("probes", min_count=0, max_count=FT8_CHANNELS))
    _unique(probes, "probes", "channel", "FT-8 channel")
    vessels = tuple(_vessel(t) for t in root.tables("vessels", min_count=0, max_count=16))
    protected = tuple(_structure(t, i) for i, t in enumerate(root.tables("protected", min_count=0, max_count=16)))
    illuminations, pullback_mm = _placement(root.table("placement", required=False), fibres, grid)
    root.finish()
    return Scenario(
        name=scenario_name,
        description=description,
        grid=grid_spec,
        tissue=tissue,
        tumour=tumour,
        fibres=fibres,
        probes=probes,
        vessels=vessels,
        protected=protected,
        illuminations=illuminations,
        pullback_mm=pullback_mm,
        source=source,
    )


def _placement(t: _Table | None, fibres: tuple[FibreSpec, ...], grid: Grid) -> tuple[int, float]:
    if t is None:
        return 1, 0.0
    illuminations = t.integer("illuminations", lo=1, hi=MAX_ILLUMINATIONS)
    pullback = t.number("pullback_mm", lo=0.0, hi=MAX_PULLBACK_MM, lo_open=True, optional=True)
    t.finish()
    if illuminations > 1 and pullback is None:
        raise t.fail("pullback_mm", f"missing: {illuminations} illuminations need a pull-back distance")
    pullback = pullback or 0.0
    travel = pullback * (illuminations - 1)
    for f in fibres:
        last = tuple(p - travel * d for p, d in zip(f.tip_mm, f.direction))
        if not grid.contains(last):
            raise t.fail("pullback_mm", f"fibre {f.channel} pulled back {travel:g} mm in all leaves the grid")
    return illuminations, pullback


class _Table:
    """One TOML table with its path for messages; every key read is ticked off, leftovers are errors."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, Mapping):
            raise ScenarioError(f"scenario {path or 'file'}: expected a table, got {_kind(data)}")
        self.data = data
        self.path = path
        self.seen: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, message: str) -> ScenarioError:
        return ScenarioError(f"scenario {self.where(key)}: {message}")

    def _get(self, key: str, required: bool) -> Any:
        self.seen.add(key)
        if key not in self.data:
            if required:
                raise ScenarioError(f"scenario {self.where(key)}: missing")
            return None
        return self.data[key]

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise ScenarioError(f"scenario {self.where(unknown[0])}: unknown field")

    def table(self, key: str, *, required: bool = True) -> _Table | None:
        value = self._get(key, required)
        return None if value is None else _Table(value, self.where(key))

    def tables(self, key: str, *, min_count: int, max_count: int) -> list[_Table]:
        value = self._get(key, min_count > 0)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(key, f"expected an array of tables ([[{key}]]), got {_kind(value)}")
        if not min_count <= len(value) <= max_count:
            raise self.fail(key, f"expected {min_count} to {max_count} entries, got {len(value)}")
        return [_Table(v, f"{self.where(key)}[{i}]") for i, v in enumerate(value)]

    def string(self, key: str, *, default: str | None = None, choices: Iterable[str] | None = None) -> str:
        value = self._get(key, default is None)
        if value is None:
            return default  # type: ignore[return-value]
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {_kind(value)}")
        if choices is not None and value not in choices:
            raise self.fail(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def boolean(self, key: str, *, default: bool) -> bool:
        value = self._get(key, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {_kind(value)}")
        return value

    def integer(self, key: str, *, lo: int, hi: int, default: int | None = None) -> int:
        value = self._get(key, default is None)
        if value is None:
            return default  # type: ignore[return-value]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"expected an integer, got {_kind(value)}")
        if not lo <= value <= hi:
            raise self.fail(key, f"expected {lo} to {hi}, got {value}")
        return value

    def number(self, key: str, *, default: float | None = None, lo: float = -math.inf, hi: float = math.inf,
               lo_open: bool = False, optional: bool = False) -> float:
        value = self._get(key, default is None and not optional)
        if value is None:
            return default  # type: ignore[return-value]
        return _check_number(value, self.where(key), lo=lo, hi=hi, lo_open=lo_open)

    def vec3(self, key: str, *, default: Vec3 | None = None, optional: bool = False) -> Vec3:
        value = self._get(key, default is None and not optional)
        if value is None:
            return default  # type: ignore[return-value]
        if not isinstance(value, list):
            raise self.fail(key, f"expected 3 numbers, got {_kind(value)}")
        if len(value) != 3:
            raise self.fail(key, f"expected 3 numbers, got {len(value)}")
        return tuple(_check_number(v, f"{self.where(key)}[{i}]") for i, v in enumerate(value))  # type: ignore[return-value]

    def direction(self, key: str, *, default: Vec3 | None = None) -> Vec3:
        v = self.vec3(key, default=default)
        if math.sqrt(sum(c * c for c in v)) < 1e-9:
            raise self.fail(key, "a direction must not be the zero vector")
        return unit(v)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    return type(value).__name__


def _check_number(value: Any, where: str, *, lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScenarioError(f"scenario {where}: expected a number, got {_kind(value)}")
    v = float(value)
    if not math.isfinite(v):
        raise ScenarioError(f"scenario {where}: expected a finite number, got {value}")
    if v < lo or (lo_open and v == lo) or v > hi:
        low = f"> {lo:g}" if lo_open else f">= {lo:g}"
        bound = low if hi == math.inf else (f"<= {hi:g}" if lo == -math.inf else f"{low} and <= {hi:g}")
        raise ScenarioError(f"scenario {where}: expected a number {bound}, got {value}")
    return v


def _inside(t: _Table, key: str, point: Vec3, grid: Grid) -> Vec3:
    if not grid.contains(point):
        lo, hi = grid.lo_mm, grid.hi_mm
        box = ", ".join(f"{a:g}..{b:g}" for a, b in zip(lo, hi))
        raise t.fail(key, f"({', '.join(f'{c:g}' for c in point)}) is outside the grid ({box} mm)")
    return point


def _grid(t: _Table | None) -> GridSpec:
    assert t is not None
    size = t.vec3("size_mm")
    for i, s in enumerate(size):
        if s <= 0:
            raise ScenarioError(f"scenario {t.where('size_mm')}[{i}]: expected a number > 0, got {s:g}")
    spacing = t.number("spacing_mm", lo=MIN_SPACING_MM, hi=MAX_SPACING_MM)
    center = t.vec3("center_mm", default=(0.0, 0.0, 0.0))
    t.finish()
    for i, s in enumerate(size):
        n = s / spacing
        if abs(n - round(n)) > 1e-6 * max(1.0, n):
            raise ScenarioError(f"scenario {t.where('size_mm')}[{i}]: {s:g} mm is not a whole number of {spacing:g} mm voxels")
        if round(n) < 4:
            raise ScenarioError(f"scenario {t.where('size_mm')}[{i}]: the grid needs at least 4 voxels per axis, got {round(n)}")
    spec = GridSpec(size_mm=size, spacing_mm=spacing, center_mm=center)
    if spec.grid().voxel_count > MAX_VOXELS:
        raise ScenarioError(f"scenario {t.where('spacing_mm')}: {spec.grid().voxel_count} voxels is more than {MAX_VOXELS}")
    return spec


def _tissue(t: _Table | None) -> TissueProperties:
    if t is None:
        return TissueProperties()
    d = TissueProperties()
    positive = dict(lo=0.0, lo_open=True)
    values = dict(
        conductivity_w_m_k=t.number("conductivity_w_m_k", default=d.conductivity_w_m_k, **positive),
        density_kg_m3=t.number("density_kg_m3", default=d.density_kg_m3, **positive),
        heat_capacity_j_kg_k=t.number("heat_capacity_j_kg_k", default=d.heat_capacity_j_kg_k, **positive),
        perfusion_1_s=t.number("perfusion_1_s", default=d.perfusion_1_s, lo=0.0, hi=1.0),
        blood_density_kg_m3=t.number("blood_density_kg_m3", default=d.blood_density_kg_m3, **positive),
        blood_heat_capacity_j_kg_k=t.number("blood_heat_capacity_j_kg_k", default=d.blood_heat_capacity_j_kg_k, **positive),
        body_temp_c=t.number("body_temp_c", default=d.body_temp_c, lo=20.0, hi=45.0),
        mu_a_1_mm=t.number("mu_a_1_mm", default=d.mu_a_1_mm, **positive),
        mu_s_prime_1_mm=t.number("mu_s_prime_1_mm", default=d.mu_s_prime_1_mm, lo=0.0),
        arrhenius_a_1_s=t.number("arrhenius_a_1_s", default=d.arrhenius_a_1_s, **positive),
        arrhenius_ea_j_mol=t.number("arrhenius_ea_j_mol", default=d.arrhenius_ea_j_mol, **positive),
        arrhenius_min_temp_c=t.number("arrhenius_min_temp_c", default=d.arrhenius_min_temp_c, lo=0.0, hi=100.0),
        cem_min_temp_c=t.number("cem_min_temp_c", default=d.cem_min_temp_c, lo=0.0, hi=100.0),
        perfusion_stops_when_coagulated=t.boolean("perfusion_stops_when_coagulated", default=d.perfusion_stops_when_coagulated),
        char_onset_c=t.number("char_onset_c", default=d.char_onset_c, lo=50.0),
        char_time_constant_s=t.number("char_time_constant_s", default=d.char_time_constant_s, **positive),
        char_absorbed_fraction_max=t.number("char_absorbed_fraction_max", default=d.char_absorbed_fraction_max, lo=0.0, hi=1.0),
        char_radius_mm=t.number("char_radius_mm", default=d.char_radius_mm, lo=0.05, hi=10.0),
        char_loss_fraction=t.number("char_loss_fraction", default=d.char_loss_fraction, lo=0.0, hi=1.0),
    )
    t.finish()
    return TissueProperties(**values)  # type: ignore[arg-type]


def _tumour(t: _Table, grid: Grid) -> Tumour:
    center = _inside(t, "center_mm", t.vec3("center_mm"), grid)
    radius = t.number("radius_mm", lo=0.0, lo_open=True, hi=1000.0)
    margin = t.number("margin_mm", default=DEFAULT_MARGIN_MM, lo=0.0, hi=100.0)
    t.finish()
    return Tumour(center_mm=center, radius_mm=radius, margin_mm=margin)


def _fibre(t: _Table, grid: Grid) -> FibreSpec:
    channel = t.integer("channel", lo=0, hi=LS4_CHANNELS - 1)
    tip = _inside(t, "tip_mm", t.vec3("tip_mm"), grid)
    direction = t.direction("direction")
    emission = t.string("emission", default="diffuse", choices=EMISSIONS)
    t.finish()
    return FibreSpec(channel=channel, tip_mm=tip, direction=direction, emission=emission)


def _probe(t: _Table, grid: Grid) -> ProbeSpec:
    channel = t.integer("channel", lo=0, hi=FT8_CHANNELS - 1)
    position = _inside(t, "position_mm", t.vec3("position_mm"), grid)
    role = t.string("role", choices=PROBE_ROLES)
    name = t.string("name", default="")
    t.finish()
    return ProbeSpec(channel=channel, position_mm=position, role=role, name=name)


def _vessel(t: _Table) -> VesselSpec:
    point = t.vec3("point_mm")
    direction = t.direction("direction")
    radius = t.number("radius_mm", lo=0.0, lo_open=True, hi=100.0)
    length = t.number("length_mm", optional=True, lo=0.0, lo_open=True)
    name = t.string("name", default="")
    t.finish()
    return VesselSpec(point_mm=point, direction=direction, radius_mm=radius, length_mm=length, name=name)


def _structure(t: _Table, index: int) -> StructureSpec:
    name = t.string("name", default=f"structure {index}")
    shape = t.string("shape", choices=STRUCTURE_SHAPES)
    center = t.vec3("center_mm")
    radius = t.number("radius_mm", lo=0.0, lo_open=True, hi=1000.0)
    if shape == "cylinder":
        direction: Vec3 | None = t.direction("direction")
        length = t.number("length_mm", optional=True, lo=0.0, lo_open=True)
    else:
        direction, length = None, None
    t.finish()
    return StructureSpec(name=name, shape=shape, center_mm=center, radius_mm=radius, direction=direction, length_mm=length)


def _unique(items: tuple[Any, ...], key: str, attr: str, what: str) -> None:
    seen: dict[int, int] = {}
    for i, item in enumerate(items):
        value = getattr(item, attr)
        if value in seen:
            raise ScenarioError(f"scenario {key}[{i}].{attr}: {what} {value} is already used by {key}[{seen[value]}]")
        seen[value] = i

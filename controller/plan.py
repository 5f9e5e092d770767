"""Treatment plans: which fibres, how each is driven, which probes, what ends the session.

A plan is a TOML file, validated against the site's hard limits (`HardLimits` from the config):
a plan can only lower a limit, never raise it. The loaded `Plan` keeps the exact text it came
from and its sha256, so the journal stores what was loaded, byte for byte.

Every key, type, default and range is listed in docs/config.md (a test holds the two together).
Indexes in messages (`fibres[2]`) count the [[fibres]] / [[probes]] tables from 0, in file order.
"""

from __future__ import annotations

import enum
import hashlib
import os
from dataclasses import dataclass
from typing import Final

from protocol import ft8, ls4

from .config import HardLimits, PROTECTED_TEMP_RANGE_C, TIP_TEMP_CAP_RANGE_C
from .settings import REQUIRED, PlanError, Section, SettingsError, number, parse_toml, read_toml_file, show

TEXT_FIELD_MAX_CHARS: Final = 64  # patient_id, operator
LABEL_MAX_CHARS: Final = 40
ILLUMINATIONS_MAX: Final = 10
DURATION_MIN_S: Final = 1
# A TEMPERATURE fibre's target sits at least this far below the tip cap: a hold right at the cap
# would trip on every overshoot (about 6x the FT-8's 0.3 degC accuracy).
TARGET_BELOW_TIP_CAP_MIN_C: Final = 2.0
TARGET_TEMP_MIN_C: Final = 40.0  # below this nothing is ablated
LETHAL_CEM43_DEFAULT_MIN: Final = 240.0  # the usual threshold for thermal necrosis
LETHAL_CEM43_RANGE_MIN: Final = (60.0, 1000.0)  # a quarter to four times the usual threshold


class FibreMode(enum.StrEnum):
    FIXED_POWER = "FIXED_POWER"  # power_w until the energy budget
    TEMPERATURE = "TEMPERATURE"  # hold control_probe at target_temp_c
    SHAPED = "SHAPED"  # model-predictive, all fibres together


class ProbeRole(enum.StrEnum):
    TIP = "tip"  # at a fibre's tip: the tip temperature cap applies
    MARGIN = "margin"  # at the tumour margin: the endpoint's lethal dose
    PROTECTED = "protected"  # at a structure to spare: its own temperature and dose limits


class Endpoint(enum.StrEnum):
    ALL_FIBRES_AT_BUDGET = "all_fibres_at_budget"
    MARGIN_LETHAL = "margin_lethal"
    EITHER = "either"


@dataclass(frozen=True, slots=True)
class Fibre:
    channel: int  # LS-4 channel 0-3
    mode: FibreMode
    energy_budget_j: float  # per illumination
    max_power_w: float  # effective cap: the plan's max_power_w, else limits.max_channel_power_w
    power_w: float | None  # FIXED_POWER only
    target_temp_c: float | None  # TEMPERATURE only
    control_probe: int | None  # TEMPERATURE only: FT-8 channel
    label: str | None


@dataclass(frozen=True, slots=True)
class Probe:
    channel: int  # FT-8 channel 0-7
    role: ProbeRole
    fibre: int | None  # tip only: the LS-4 channel of its fibre
    max_temp_c: float | None  # protected only
    max_cem43_min: float | None  # protected only
    lethal_cem43_min: float | None  # margin only
    label: str | None


@dataclass(frozen=True, slots=True)
class Plan:
    fibres: tuple[Fibre, ...]
    probes: tuple[Probe, ...]
    max_session_energy_j: float
    max_duration_s: int
    tip_temp_cap_c: float
    illuminations: int
    endpoint: Endpoint
    patient_id: str | None
    operator: str | None
    text: str  # exactly what was loaded
    sha256: str  # of text, UTF-8

    @property
    def planned_energy_j(self) -> float:
        """Every fibre at its budget in every illumination."""
        return sum(f.energy_budget_j for f in self.fibres) * self.illuminations

    def fibre(self, channel: int) -> Fibre:
        for f in self.fibres:
            if f.channel == channel:
                return f
        raise KeyError(channel)

    def probe(self, channel: int) -> Probe:
        for p in self.probes:
            if p.channel == channel:
                return p
        raise KeyError(channel)

    def probes_with_role(self, role: ProbeRole) -> tuple[Probe, ...]:
        return tuple(p for p in self.probes if p.role == role)


def load_plan(source: str | os.PathLike[str], *, limits: HardLimits, key_log: set[str] | None = None) -> Plan:
    """Validate a plan against `limits`. A path-like `source` is read as a file; a `str` is the TOML text.

    Raises a one-line PlanError naming the field on anything wrong.
    """
    if isinstance(source, os.PathLike):
        text, table = read_toml_file(source, error=PlanError)
    elif isinstance(source, str):
        if "\n" not in source and "=" not in source and source.strip().endswith(".toml"):
            # A file name given as text (no plan is one line): say so rather than report a TOML error.
            raise PlanError(f"<text>: {show(source)} looks like a file name, not plan TOML text (give a Path to read a file)")
        text, table = source, parse_toml(source, error=PlanError, source="<text>")
    else:
        raise TypeError(f"load_plan needs a path or TOML text, not {type(source).__name__}")
    return _build(table, text=text, limits=limits, key_log=key_log)


def _label(sec: Section) -> str | None:
    return sec.get_str("label", default=None, max_length=LABEL_MAX_CHARS)


def _build(table: dict, *, text: str, limits: HardLimits, key_log: set[str] | None) -> Plan:
    root = Section(table, error=PlanError, key_log=key_log)
    session = root.table("session")
    patient_id = session.get_str("patient_id", default=None, max_length=TEXT_FIELD_MAX_CHARS)
    operator = session.get_str("operator", default=None, max_length=TEXT_FIELD_MAX_CHARS)
    max_session_energy_j = _at_most(session, "max_session_energy_j", limits.max_session_energy_j, "limits.max_session_energy_j", above=0.0)
    max_duration_s = session.get_int("max_duration_s", minimum=DURATION_MIN_S)
    if max_duration_s > limits.max_session_duration_s:
        raise _exceeds(session, "max_duration_s", max_duration_s, limits.max_session_duration_s, "limits.max_session_duration_s")
    tip_temp_cap_c = _at_most(session, "tip_temp_cap_c", limits.tip_temp_cap_c, "limits.tip_temp_cap_c", minimum=TIP_TEMP_CAP_RANGE_C[0])
    illuminations = session.get_int("illuminations", default=1, minimum=1, maximum=ILLUMINATIONS_MAX)
    endpoint = Endpoint(session.get_str("endpoint", choices=tuple(Endpoint)))
    session.finish()

    fibre_secs = root.array_of_tables("fibres", min_count=1, max_count=ls4.CHANNEL_COUNT)
    probe_secs = root.array_of_tables("probes", min_count=1, max_count=ft8.CHANNEL_COUNT)
    root.finish()
    fibres = tuple(_fibre(sec, limits, tip_temp_cap_c) for sec in fibre_secs)
    _unique(fibre_secs, [f.channel for f in fibres], "fibres")
    probes = tuple(_probe(sec, limits) for sec in probe_secs)
    _unique(probe_secs, [p.channel for p in probes], "probes")

    _cross_checks(fibre_secs, fibres, probe_secs, probes, session, max_session_energy_j, illuminations, endpoint)
    return Plan(
        fibres=fibres,
        probes=probes,
        max_session_energy_j=max_session_energy_j,
        max_duration_s=max_duration_s,
        tip_temp_cap_c=tip_temp_cap_c,
        illuminations=illuminations,
        endpoint=endpoint,
        patient_id=patient_id,
        operator=operator,
        text=text,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )


def _exceeds(sec: Section, key: str, value: float, limit: float, limit_name: str) -> SettingsError:
    return sec.fail(key, f" = {number(value)} exceeds the device limit {number(limit)} ({limit_name})")


def _at_most(sec: Section, key: str, limit: float, limit_name: str, *, default: float | None | object = REQUIRED, above: float | None = None, minimum: float | None = None) -> float:
    """A number that may only lower a hard limit: range errors first, then 'exceeds the device limit'."""
    value = sec.get_float(key, default=default, above=above, minimum=minimum)  # type: ignore[arg-type]
    if value is not None and value > limit:
        raise _exceeds(sec, key, sec.peek(key), limit, limit_name)
    return value  # type: ignore[no-any-return]


def _unique(secs: list[Section], channels: list[int], what: str) -> None:
    seen: dict[int, int] = {}
    for index, channel in enumerate(channels):
        if channel in seen:
            raise secs[index].fail("channel", f" = {channel} is already {what}[{seen[channel]}].channel")
        seen[channel] = index


def _fibre(sec: Section, limits: HardLimits, tip_temp_cap_c: float) -> Fibre:
    channel = sec.get_int("channel", minimum=0, maximum=ls4.CHANNEL_COUNT - 1)
    mode = FibreMode(sec.get_str("mode", choices=tuple(FibreMode)))
    energy_budget_j = _at_most(sec, "energy_budget_j", limits.max_fibre_energy_j, "limits.max_fibre_energy_j", above=0.0)
    max_power_w = _at_most(sec, "max_power_w", limits.max_channel_power_w, "limits.max_channel_power_w", default=None, above=0.0)
    power_w = _at_most(sec, "power_w", limits.max_channel_power_w, "limits.max_channel_power_w", default=None, above=0.0)
    target_temp_c = sec.get_float("target_temp_c", default=None, minimum=TARGET_TEMP_MIN_C, maximum=TIP_TEMP_CAP_RANGE_C[1])
    control_probe = sec.get_int("control_probe", default=None, minimum=0, maximum=ft8.CHANNEL_COUNT - 1)
    label = _label(sec)
    sec.finish()

    not_used = f": not used with mode = \"{mode}\""
    if mode == FibreMode.FIXED_POWER:
        if power_w is None:
            raise sec.fail("power_w", ': missing (required with mode = "FIXED_POWER"; watts, > 0)')
        if max_power_w is not None and power_w > max_power_w:
            raise sec.fail("power_w", f" = {number(power_w)} exceeds this fibre's max_power_w = {number(max_power_w)}")
    elif "power_w" in sec:
        raise sec.fail("power_w", not_used)
    if mode == FibreMode.TEMPERATURE:
        if target_temp_c is None:
            raise sec.fail("target_temp_c", ': missing (required with mode = "TEMPERATURE"; degC)')
        if control_probe is None:
            raise sec.fail("control_probe", ': missing (required with mode = "TEMPERATURE"; an FT-8 channel listed in [[probes]])')
        highest = tip_temp_cap_c - TARGET_BELOW_TIP_CAP_MIN_C
        if target_temp_c > highest:
            raise sec.fail(
                "target_temp_c",
                f" = {number(target_temp_c)} is not below session.tip_temp_cap_c = {number(tip_temp_cap_c)} "
                f"by {number(TARGET_BELOW_TIP_CAP_MIN_C)} degC (at most {number(highest)})",
            )
    else:
        for key in ("target_temp_c", "control_probe"):
            if key in sec:
                raise sec.fail(key, not_used)
    return Fibre(
        channel=channel,
        mode=mode,
        energy_budget_j=energy_budget_j,
        max_power_w=max_power_w if max_power_w is not None else limits.max_channel_power_w,
        power_w=power_w,
        target_temp_c=target_temp_c,
        control_probe=control_probe,
        label=label,
    )


def _probe(sec: Section, limits: HardLimits) -> Probe:
    channel = sec.get_int("channel", minimum=0, maximum=ft8.CHANNEL_COUNT - 1)
    role = ProbeRole(sec.get_str("role", choices=tuple(ProbeRole)))
    fibre = sec.get_int("fibre", default=None, minimum=0, maximum=ls4.CHANNEL_COUNT - 1)
    max_temp_c = _at_most(sec, "max_temp_c", limits.protected_max_temp_c, "limits.protected_max_temp_c", default=None, minimum=PROTECTED_TEMP_RANGE_C[0])
    max_cem43_min = _at_most(sec, "max_cem43_min", limits.protected_max_cem43_min, "limits.protected_max_cem43_min", default=None, above=0.0)
    lethal_cem43_min = sec.get_float("lethal_cem43_min", default=None, minimum=LETHAL_CEM43_RANGE_MIN[0], maximum=LETHAL_CEM43_RANGE_MIN[1])
    label = _label(sec)
    sec.finish()

    role_keys = {ProbeRole.TIP: ("fibre",), ProbeRole.PROTECTED: ("max_temp_c", "max_cem43_min"), ProbeRole.MARGIN: ("lethal_cem43_min",)}
    for other, keys in role_keys.items():
        if other != role:
            for key in keys:
                if key in sec:
                    raise sec.fail(key, f': not used with role = "{role}" (only with role = "{other}")')
    if role == ProbeRole.TIP and fibre is None:
        raise sec.fail("fibre", ': missing (required with role = "tip"; the LS-4 channel of its fibre)')
    if role == ProbeRole.PROTECTED:
        # Stated in the plan, never inherited: each protected structure gets limits someone chose for it.
        if max_temp_c is None:
            raise sec.fail("max_temp_c", f': missing (required with role = "protected"; degC, <= {number(limits.protected_max_temp_c)})')
        if max_cem43_min is None:
            raise sec.fail("max_cem43_min", f': missing (required with role = "protected"; CEM43 min, <= {number(limits.protected_max_cem43_min)})')
    if role == ProbeRole.MARGIN and lethal_cem43_min is None:
        lethal_cem43_min = LETHAL_CEM43_DEFAULT_MIN
    return Probe(
        channel=channel,
        role=role,
        fibre=fibre,
        max_temp_c=max_temp_c,
        max_cem43_min=max_cem43_min,
        lethal_cem43_min=lethal_cem43_min,
        label=label,
    )


def _cross_checks(
    fibre_secs: list[Section],
    fibres: tuple[Fibre, ...],
    probe_secs: list[Section],
    probes: tuple[Probe, ...],
    session: Section,
    max_session_energy_j: float,
    illuminations: int,
    endpoint: Endpoint,
) -> None:
    by_channel = {p.channel: (i, p) for i, p in enumerate(probes)}
    fibre_channels = {f.channel for f in fibres}

    for sec, probe in zip(probe_secs, probes, strict=True):
        if probe.role == ProbeRole.TIP and probe.fibre not in fibre_channels:
            raise sec.fail("fibre", f" = {probe.fibre} names no fibre in this plan (fibres on channels {_list(fibre_channels)})")
    tipped = {p.fibre for p in probes if p.role == ProbeRole.TIP}
    for sec, fibre in zip(fibre_secs, fibres, strict=True):
        if fibre.channel not in tipped:
            raise sec.fail(None, f': has no tip probe (add a [[probes]] with role = "tip", fibre = {fibre.channel}; the tip temperature cap is enforced on it)')

    controlled_by: dict[int, int] = {}
    for index, (sec, fibre) in enumerate(zip(fibre_secs, fibres, strict=True)):
        if fibre.mode != FibreMode.TEMPERATURE:
            continue
        cp = fibre.control_probe
        assert cp is not None
        if cp not in by_channel:
            raise sec.fail("control_probe", f" = {cp} is not a probe in this plan (probes on FT-8 channels {_list(by_channel)})")
        _, probe = by_channel[cp]
        if probe.role == ProbeRole.PROTECTED:
            raise sec.fail("control_probe", f' = {cp} is a protected probe; control on a "tip" or "margin" probe')
        if probe.role == ProbeRole.TIP and probe.fibre != fibre.channel:
            raise sec.fail("control_probe", f" = {cp} is the tip probe of the fibre on channel {probe.fibre}, not of this one")
        if cp in controlled_by:
            raise sec.fail("control_probe", f" = {cp} is already the control probe of fibres[{controlled_by[cp]}]")
        controlled_by[cp] = index

    shaped = [f.mode == FibreMode.SHAPED for f in fibres]
    if any(shaped) and not all(shaped):
        index = shaped.index(False) if shaped[0] else shaped.index(True)
        raise fibre_secs[index].fail("mode", f' = "{fibres[index].mode}": SHAPED drives all fibres together, so either every fibre is SHAPED or none is')
    margins = [p for p in probes if p.role == ProbeRole.MARGIN]
    if all(shaped) and not margins:
        raise fibre_secs[0].fail("mode", ' = "SHAPED" needs at least one probe with role = "margin" (its target)')
    if endpoint in (Endpoint.MARGIN_LETHAL, Endpoint.EITHER) and not margins:
        raise session.fail("endpoint", f' = "{endpoint}" needs at least one probe with role = "margin"')

    # Choice: the session budget must cover every fibre at its budget in every illumination, so the
    # plan is consistent and the session limit is a backstop, never the planned way to stop.
    planned = sum(f.energy_budget_j for f in fibres) * illuminations
    if planned > max_session_energy_j:
        raise session.fail(
            "max_session_energy_j",
            f" = {number(max_session_energy_j)} is below the planned energy {number(planned)} "
            f"(sum of fibres[].energy_budget_j {number(sum(f.energy_budget_j for f in fibres))} x session.illuminations {illuminations})",
        )


def _list(values: object) -> str:
    return ", ".join(str(v) for v in sorted(values)) or "none"  # type: ignore[call-overload]

"""A session's record made ready for the report: treatment times, the plan's fibres and probes,
state intervals, event categories and the summary. No I/O and no plotting here.

Time. Every journal row carries the host's wall clock (t_wall). The report's time axis is
"treatment time": seconds since the plan was loaded, times laserd's time scale. On the devices
the time scale is 1 and treatment time is wall time; under the simulator (`--time-scale K`)
device time runs K times faster than wall time, and treatment time is device time, so power x
time matches energy in the plots.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Final

from .config import HardLimits
from .plan import Plan, ProbeRole, load_plan
from .report_data import CONTEXT_KIND
from .settings import PlanError, SettingsError

CHANNELS: Final = 4
PROBES: Final = 8
TERMINAL: Final = ("COMPLETE", "ABORTED", "FAULTED", "INTERRUPTED")
_TIME_SCALE_IN_MESSAGE: Final = re.compile(r"time scale ([0-9.eE+-]+)")
# Anything a stored plan can say: the plan was checked against the site's limits when it was
# loaded; here it is only read back, so no limit may refuse it.
_NO_LIMITS: Final = HardLimits(**{name: math.inf for name in HardLimits.__dataclass_fields__})  # type: ignore[arg-type]


@dataclass(frozen=True)
class FibreInfo:
    channel: int
    mode: str
    label: str | None
    power_w: float | None
    budget_j: float | None  # per illumination
    target_temp_c: float | None


@dataclass(frozen=True)
class ProbeInfo:
    channel: int
    role: str  # tip, margin, protected, or "unknown" when the plan could not be read
    label: str | None
    fibre: int | None
    max_temp_c: float | None  # the temperature limit that applies: tip cap for tips, max_temp_c for protected
    max_cem43_min: float | None  # protected
    lethal_cem43_min: float | None  # margin

    @property
    def name(self) -> str:
        role = {"tip": f"tip of fibre {self.fibre}", "margin": "margin", "protected": "protected"}.get(self.role, "role unknown")
        label = f", {self.label}" if self.label and self.label != self.role else ""
        return f"probe {self.channel} ({role}{label})"


@dataclass
class Model:
    record: dict[str, Any]
    session: dict[str, Any]
    plan: Plan | None
    plan_error: str | None
    plan_sha256_ok: bool
    fibres: list[FibreInfo]
    probes: list[ProbeInfo]
    tip_temp_cap_c: float | None
    illuminations: int | None
    context: dict[str, Any]
    context_source: str
    time_scale: float
    t0_wall: float
    samples: list[dict[str, Any]]
    events: list[dict[str, Any]]
    sample_t: list[float] = field(default_factory=list)
    event_t: list[float] = field(default_factory=list)
    states: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end, state)

    def t_of(self, t_wall: float) -> float:
        return (t_wall - self.t0_wall) * self.time_scale

    @property
    def end_t(self) -> float:
        """The end of the time axis: the last sample or state change."""
        candidates = [0.0] + self.sample_t[-1:] + [self.t_of(e["t_wall"]) for e in self.events if e["to"] is not None][-1:]
        return max(candidates)

    @property
    def open(self) -> bool:
        return self.session["state"] not in TERMINAL


def _plan(plan_text: str) -> tuple[Plan | None, str | None]:
    try:
        return load_plan(plan_text, limits=_NO_LIMITS), None
    except (PlanError, SettingsError, ValueError) as err:
        return None, " ".join(str(err).split())


def _context(record: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """What the session ran under: laserd's session_context event, else the daemon's events before it."""
    for e in record.get("events", []):
        if e["kind"] == CONTEXT_KIND and isinstance(e.get("details"), dict):
            return dict(e["details"]), "recorded by laserd when the plan was loaded (event session_context)"
    devices: dict[str, Any] = {}
    time_scale = None
    for e in record.get("daemon_events", []):  # oldest first: later ones win
        d = e.get("details") or {}
        if e["kind"] == "device_identified":
            parts = e["message"].split()
            found = {"product": parts[0] if parts else None, "vendor": d.get("vendor"), "revision": d.get("revision"), "identified": e["message"]}
            m = re.search(r"firmware (\S+) map (\S+) on unit (\d+)", e["message"])
            if m:
                found |= {"firmware": m.group(1), "map_version": int(m.group(2)) if m.group(2).isdigit() else m.group(2), "unit": int(m.group(3))}
            devices[d.get("device") or found["product"] or f"device{len(devices)}"] = found
        elif e["kind"] == "daemon_started":
            m = _TIME_SCALE_IN_MESSAGE.search(e["message"])
            time_scale = float(m.group(1)) if m else time_scale
    if not devices and time_scale is None:
        return {}, "not recorded (the journal has no session_context event and no daemon start before this session)"
    context: dict[str, Any] = {"devices": devices, "software": None}
    if time_scale is not None:
        context["time_scale"] = time_scale
    return context, "from the daemon's start-up events before this session (this laserd did not record session_context)"


def _fibres_and_probes(model_plan: Plan | None, samples: list[dict[str, Any]]) -> tuple[list[FibreInfo], list[ProbeInfo]]:
    if model_plan is not None:
        fibres = [
            FibreInfo(channel=f.channel, mode=str(f.mode), label=f.label, power_w=f.power_w, budget_j=f.energy_budget_j, target_temp_c=f.target_temp_c)
            for f in sorted(model_plan.fibres, key=lambda f: f.channel)
        ]
        probes = []
        for p in sorted(model_plan.probes, key=lambda p: p.channel):
            limit = model_plan.tip_temp_cap_c if p.role == ProbeRole.TIP else p.max_temp_c
            probes.append(ProbeInfo(channel=p.channel, role=str(p.role), label=p.label, fibre=p.fibre, max_temp_c=limit, max_cem43_min=p.max_cem43_min, lethal_cem43_min=p.lethal_cem43_min))
        return fibres, probes
    # The plan could not be read back: show what the samples say was used.
    used_ch = sorted({c for s in samples for c in range(CHANNELS) if s["setpoint_mw"][c] or s["energy_j"][c]})
    used_pr = sorted({p for s in samples for p in range(PROBES) if s["temperature_c"][p] is not None})
    fibres = [FibreInfo(channel=c, mode="unknown", label=None, power_w=None, budget_j=None, target_temp_c=None) for c in used_ch]
    probes = [ProbeInfo(channel=p, role="unknown", label=None, fibre=None, max_temp_c=None, max_cem43_min=None, lethal_cem43_min=None) for p in used_pr]
    return fibres, probes


def build(record: dict[str, Any]) -> Model:
    session = record["session"]
    plan_text = record["plan_text"]
    plan, plan_error = _plan(plan_text)
    context, source = _context(record)
    time_scale = context.get("time_scale") or 1.0
    samples = record.get("samples", [])
    fibres, probes = _fibres_and_probes(plan, samples)
    model = Model(
        record=record,
        session=session,
        plan=plan,
        plan_error=plan_error,
        plan_sha256_ok=hashlib.sha256(plan_text.encode("utf-8")).hexdigest() == session["plan_sha256"],
        fibres=fibres,
        probes=probes,
        tip_temp_cap_c=plan.tip_temp_cap_c if plan is not None else None,
        illuminations=plan.illuminations if plan is not None else None,
        context=context,
        context_source=source,
        time_scale=float(time_scale),
        t0_wall=session["created_wall"],
        samples=samples,
        events=record.get("events", []),
    )
    model.sample_t = [model.t_of(s["t_wall"]) for s in samples]
    model.event_t = [model.t_of(e["t_wall"]) for e in model.events]
    model.states = _state_intervals(model)
    return model


def _state_intervals(model: Model) -> list[tuple[float, float, str]]:
    changes = [(t, e["to"]) for t, e in zip(model.event_t, model.events, strict=True) if e["to"] is not None]
    if not changes:
        return []
    end = max(model.end_t, changes[-1][0])
    out = []
    for (t, state), nxt in zip(changes, [*changes[1:], None], strict=True):
        out.append((t, nxt[0] if nxt is not None else end, state))
    return out


def state_at(model: Model, t: float) -> str | None:
    current = None
    for start, _, state in model.states:
        if start <= t + 1e-9:
            current = state
        else:
            break
    return current


# --- events by category ------------------------------------------------------------------------


def category(e: dict[str, Any]) -> str:
    """Where an event goes on the timeline."""
    kind, src, dst = e["kind"], e["from"], e["to"]
    if kind == "safety_trip" or dst == "FAULTED":
        return "safety trip"
    if kind == "safety_soft":
        return "soft limit"
    if src == "EMITTING" and dst == "PAUSED":
        return "pause"
    if src == "PULLBACK" and dst == "ARMED":
        return "pull-back"
    if dst is not None or kind in ("session_created", "recovery"):
        return "state change"
    return "other"


CATEGORIES: Final = ("state change", "pause", "pull-back", "safety trip", "soft limit", "other")


# --- the summary ---------------------------------------------------------------------------------


def _max(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return max(vals) if vals else None


def summary(model: Model) -> dict[str, Any]:
    s = model.session
    samples = model.samples
    events = model.events
    emitting = sum(end - start for start, end, state in model.states if state == "EMITTING")
    started = model.t_of(s["started_wall"]) if s["started_wall"] is not None else None
    ended = model.t_of(s["ended_wall"]) if s["ended_wall"] is not None else None
    last_energy = samples[-1]["energy_j"] if samples else [0.0] * CHANNELS
    delivered = list(s["delivered_energy_j"])
    planned = {f.channel: f.budget_j * model.illuminations for f in model.fibres if f.budget_j is not None and model.illuminations is not None}
    fibres = []
    for f in model.fibres:
        c = f.channel
        fibres.append(
            {
                "channel": c,
                "label": f.label,
                "mode": f.mode,
                "power_w": f.power_w,
                "target_temp_c": f.target_temp_c,
                "budget_per_illumination_j": f.budget_j,
                "planned_j": planned.get(c),
                "delivered_j": delivered[c] if c < len(delivered) else None,
                "last_sample_energy_j": last_energy[c],
                "max_setpoint_w": (_max([x["setpoint_mw"][c] for x in samples]) or 0) / 1000.0,
                "max_output_w": (_max([x["output_mw"][c] for x in samples]) or 0) / 1000.0,
            }
        )
    probes = []
    for p in model.probes:
        temps = [x["temperature_c"][p.channel] for x in samples]
        doses = [x["cem43_min"][p.channel] for x in samples]
        max_t = _max(temps)
        max_dose = _max(doses)
        probes.append(
            {
                "channel": p.channel,
                "role": p.role,
                "label": p.label,
                "fibre": p.fibre,
                "temp_limit_c": p.max_temp_c,
                "max_temp_c": max_t,
                "temp_limit_exceeded": None if max_t is None or p.max_temp_c is None else max_t > p.max_temp_c,
                "cem43_limit_min": p.max_cem43_min,
                "lethal_cem43_min": p.lethal_cem43_min,
                "final_cem43_min": next((d for d in reversed(doses) if d is not None), None),
                "max_cem43_min": max_dose,
                "cem43_limit_exceeded": None if max_dose is None or p.max_cem43_min is None else max_dose > p.max_cem43_min,
                "invalid_readings": sum(1 for t in temps if t is None),
            }
        )
    trips = [
        {"event_id": e["id"], "t_s": round(t, 3), "message": e["message"], "rule": (e.get("details") or {}).get("rule"), "channel": (e.get("details") or {}).get("channel")}
        for t, e in zip(model.event_t, events, strict=True)
        if e["kind"] == "safety_trip"
    ]
    soft = [{"event_id": e["id"], "t_s": round(t, 3), "message": e["message"]} for t, e in zip(model.event_t, events, strict=True) if e["kind"] == "safety_soft"]
    return {
        "state": s["state"],
        "end_reason": s["end_reason"],
        "interrupted": s["interrupted"],
        "open": model.open,
        "time_scale": model.time_scale,
        "first_emission_t_s": None if started is None else round(started, 3),
        "end_t_s": None if ended is None else round(ended, 3),
        "treatment_s": None if started is None else round((ended if ended is not None else model.end_t) - started, 3),
        "emission_s": round(emitting, 3),
        "pauses": sum(1 for e in events if category(e) == "pause"),
        "pullbacks": sum(1 for e in events if category(e) == "pull-back"),
        "illuminations_planned": model.illuminations,
        "illuminations_reached": (max(x["illumination"] for x in samples) + 1) if samples else 0,
        "safety_trips": trips,
        "soft_limits": soft,
        "delivered_energy_j": delivered,
        "delivered_energy_total_j": sum(delivered),
        "last_sample_energy_j": list(last_energy),
        "planned_energy_total_j": sum(planned.values()) if planned else None,
        "fibres": fibres,
        "probes": probes,
        "samples": len(samples),
        "events": len(events),
    }

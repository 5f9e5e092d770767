"""laserctl report SESSION --out DIR: a self-contained treatment report of one session.

    DIR/report.html     the report: summary, figures, events, versions, plan, NICE audit fields
    DIR/*.png           its figures (matplotlib, Agg), referenced relatively from report.html
    DIR/zone.png        the simulator's ablation-zone picture, when one was asked for
    DIR/cycles.csv      the 1 Hz samples: time, power commanded/measured, energy, temperatures, CEM43
    DIR/session.json    session, plan, context (software, devices), events, summary, file hashes

The record comes from laserd over the operator socket (`laserctl --socket S report ...`, the
operator command `report`), or, for an offline audit, straight from a journal file opened
read-only (`--journal PATH`). Both read through controller/report_data.py. See docs/report.md.

Errors are one line on stderr: 2 for an unknown session, an empty journal, a DIR that cannot be
written, a zone picture that cannot be had; 3 when laserd does not answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import hashlib
import html
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final, TextIO

from . import report_data
from .journal import Journal, JournalError
from .report_model import CHANNELS, PROBES, Model, build, category, state_at, summary
from .version import describe, software_version

EXIT_OK: Final = 0
EXIT_USAGE: Final = 2
EXIT_NO_DAEMON: Final = 3
REPORT_FORMAT: Final = "laserhost-session-report/1"
PROGRESS_AFTER_S: Final = 1.0
FILE_MODE: Final = 0o640  # the report names the patient, as the journal does
DIR_MODE: Final = 0o750
PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
OUTPUTS: Final = ("report.html", "session.json", "cycles.csv", "power_energy.png", "temperatures.png", "cem43.png", "timeline.png", "zone.png")
NICE_SOURCE: Final = (
    "Source: NICE interventional procedures guidance IPG788, “Image-guided percutaneous laser ablation for primary and "
    "secondary liver tumours” (2024). Its recommendation 1.2 asks clinicians to audit and review the clinical outcomes of "
    "everyone having the procedure; the fields below are the key efficacy and safety outcomes NICE's committee named for it."
)
NICE_EFFICACY: Final = (
    ("complete_tumour_ablation", "Complete tumour ablation"),
    ("local_tumour_progression", "Local tumour progression"),
    ("local_or_distant_recurrence", "Local or distant recurrence"),
    ("overall_survival", "Overall survival"),
    ("disease_free_survival", "Disease-free survival"),
)
NICE_SAFETY: Final = (
    ("mortality", "Mortality"),
    ("bleeding", "Bleeding"),
    ("infection", "Infection"),
    ("damage_to_surrounding_tissue", "Damage to surrounding tissue"),
)


class ReportError(Exception):
    """One line for the operator, and the exit status."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(" ".join(message.split()))
        self.code = code


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "report",
        help="write a treatment report of one session to DIR: report.html with figures, cycles.csv, session.json",
        description="Write a self-contained treatment report of one session. The record comes from laserd (--socket), "
        "or from a journal file opened read-only (--journal, for an offline audit).",
    )
    p.add_argument("id", type=int, metavar="SESSION", help="the session id (laserctl sessions)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="where to write the report (created if missing)")
    p.add_argument("--journal", type=Path, metavar="PATH", help="read this journal file, read-only, instead of asking laserd")
    zone = p.add_mutually_exclusive_group()
    zone.add_argument("--zone-png", type=Path, metavar="PATH", help="a simulator zone picture to include (laser-sim bench SOCK render PATH)")
    zone.add_argument("--sim-bench", metavar="SOCK", help="ask the running simulator at this bench socket to render its zone picture now")
    return p


# --- progress ------------------------------------------------------------------------------------


class Progress:
    """Lines on stderr once the work has taken more than PROGRESS_AFTER_S."""

    def __init__(self, stream: TextIO, *, after_s: float = PROGRESS_AFTER_S) -> None:
        self.stream = stream
        self.after_s = after_s
        self.start = time.monotonic()

    def step(self, text: str) -> None:
        elapsed = time.monotonic() - self.start
        if elapsed >= self.after_s:
            print(f"laserctl: report: {text} ({elapsed:.1f} s)", file=self.stream, flush=True)


# --- reading the record --------------------------------------------------------------------------


Fetch = Callable[[int, str, int], dict[str, Any]]


def _journal_fetch(journal: Journal) -> Fetch:
    def fetch(session_id: int, part: str, offset: int) -> dict[str, Any]:
        try:
            return report_data.read(journal, session_id, part, offset)
        except LookupError as err:
            raise ReportError(str(err)) from None

    return fetch


def _daemon_fetch(socket: Path) -> Fetch:
    from .operator import request

    def fetch(session_id: int, part: str, offset: int) -> dict[str, Any]:
        try:
            reply = asyncio.run(request(socket, "report", id=session_id, part=part, offset=offset))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ReportError(f"laserd is not running (nothing listening at {socket}); for an offline report use --journal PATH", EXIT_NO_DAEMON) from None
        except PermissionError:
            raise ReportError(f"no permission to use {socket} (are you in laserd's group?)", EXIT_NO_DAEMON) from None
        except (ConnectionError, OSError, json.JSONDecodeError) as err:
            raise ReportError(f"laserd did not answer properly: {err}", EXIT_NO_DAEMON) from None
        if not reply.get("ok"):
            error = str(reply.get("error", "refused"))
            if error.startswith("unknown command 'report'"):
                error = f"laserd at {socket} does not know the report command (an older laserd); read its journal with --journal PATH"
            raise ReportError(error)
        return reply["result"]

    return fetch


def read_record(args: argparse.Namespace) -> dict[str, Any]:
    if args.journal is not None:
        try:
            journal = Journal(args.journal, read_only=True)
        except JournalError as err:
            raise ReportError(str(err)) from None
        try:
            return report_data.read_all(_journal_fetch(journal), args.id)
        finally:
            journal.close()
    if args.socket is None:
        raise ReportError("no socket given: use --socket PATH or set $LASERD_SOCKET, or read a journal file with --journal PATH")
    return report_data.read_all(_daemon_fetch(args.socket), args.id)


# --- files ----------------------------------------------------------------------------------------


def _prepare_dir(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise ReportError(f"cannot write the report to {out}: it is a file, not a directory")
    try:
        out.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        probe = out / f".laserctl-report-{os.getpid()}.probe"
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_EXCL, FILE_MODE)
        os.close(fd)
        probe.unlink()
    except OSError as err:
        raise ReportError(f"cannot write the report to {out}: {err.strerror or err}") from None
    return out


def _write(path: Path, data: bytes) -> None:
    """Whole or not at all: a partial file, renamed into place."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        fd = os.open(partial, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(partial, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise ReportError(f"cannot write {path}: {err.strerror or err}") from None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become strings, as the journal stores them."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


# --- the zone picture -------------------------------------------------------------------------------


def zone_picture(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """zone.png in DIR, from --zone-png or the simulator's bench; what is known of it."""
    target = out / "zone.png"
    if args.zone_png is not None:
        try:
            data = args.zone_png.read_bytes()
        except OSError as err:
            raise ReportError(f"--zone-png {args.zone_png}: cannot read it: {err.strerror or err}") from None
        if not data.startswith(PNG_SIGNATURE):
            raise ReportError(f"--zone-png {args.zone_png}: not a PNG file")
        _write(target, data)
        return {"source": "file", "path": str(args.zone_png.resolve()), "file": "zone.png"}
    if args.sim_bench is not None:
        from sim.bench import BenchRequestError, bench_request_sync

        try:
            truth = bench_request_sync(args.sim_bench, ["render", str(target.resolve())])
        except BenchRequestError as err:
            raise ReportError(f"no zone picture from the simulator at {args.sim_bench}: {err}") from None
        if not target.is_file() or not target.read_bytes().startswith(PNG_SIGNATURE):
            raise ReportError(f"the simulator at {args.sim_bench} said it rendered {target}, but no PNG is there")
        return {"source": "simulator bench", "bench": str(args.sim_bench), "file": "zone.png", "sim_time_s": truth.get("time_s"), "tissue": truth.get("tissue")}
    return {"source": None, "file": None}


# --- CSV and JSON ----------------------------------------------------------------------------------


def _utc(t_wall: float | None) -> str | None:
    return None if t_wall is None else datetime.fromtimestamp(t_wall, timezone.utc).isoformat(timespec="milliseconds")


def _local(t_wall: float | None) -> str:
    return "—" if t_wall is None else datetime.fromtimestamp(t_wall).astimezone().isoformat(sep=" ", timespec="seconds")


def _clock(t_wall: float) -> str:
    """The event table's time of day, to the millisecond, with the full date and zone as a tooltip."""
    when = datetime.fromtimestamp(t_wall).astimezone()
    return f'<span title="{when.isoformat(timespec="milliseconds")}">{when.strftime("%H:%M:%S")}.{when.microsecond // 1000:03d}</span>'


CSV_COLUMNS: Final = (
    ["t_s", "t_wall_unix", "t_wall_utc", "device_time_ms", "state", "illumination"]
    + [f"ch{c}_{what}" for c in range(CHANNELS) for what in ("setpoint_w", "output_w", "energy_j")]
    + [f"probe{p}_{what}" for p in range(PROBES) for what in ("temp_c", "cem43_min")]
)


def cycles_csv(model: Model) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)

    def num(v: Any) -> str:
        return "" if v is None else repr(v) if isinstance(v, float) else str(v)

    for t, s in zip(model.sample_t, model.samples, strict=True):
        row = [f"{t:.3f}", repr(s["t_wall"]), _utc(s["t_wall"]), num(s["device_time_ms"]), state_at(model, t) or "", str(s["illumination"])]
        for c in range(CHANNELS):
            row += [f"{s['setpoint_mw'][c] / 1000:.3f}", f"{s['output_mw'][c] / 1000:.3f}", num(s["energy_j"][c])]
        for p in range(PROBES):
            row += [num(s["temperature_c"][p]), num(s["cem43_min"][p])]
        w.writerow(row)
    return buf.getvalue().encode("utf-8")


def _plan_dict(model: Model) -> dict[str, Any]:
    plan: dict[str, Any] = {"sha256": model.session["plan_sha256"], "sha256_matches_text": model.plan_sha256_ok, "text": model.record["plan_text"]}
    if model.plan is None:
        plan["parse_error"] = model.plan_error
        return plan
    p = model.plan
    plan["parsed"] = {
        "illuminations": p.illuminations,
        "endpoint": str(p.endpoint),
        "tip_temp_cap_c": p.tip_temp_cap_c,
        "max_session_energy_j": p.max_session_energy_j,
        "max_duration_s": p.max_duration_s,
        "fibres": [{"channel": f.channel, "mode": f.mode, "label": f.label, "power_w": f.power_w, "energy_budget_j": f.budget_j, "target_temp_c": f.target_temp_c} for f in model.fibres],
        "probes": [
            {"channel": q.channel, "role": q.role, "label": q.label, "fibre": q.fibre, "temp_limit_c": q.max_temp_c, "max_cem43_min": q.max_cem43_min, "lethal_cem43_min": q.lethal_cem43_min}
            for q in model.probes
        ],
    }
    return plan


def session_json(model: Model, summ: dict[str, Any], zone: dict[str, Any], files: dict[str, str], generated: dict[str, Any]) -> bytes:
    s = model.session
    doc = {
        "format": REPORT_FORMAT,
        "generated": generated,
        "session": s | {"created_utc": _utc(s["created_wall"]), "started_utc": _utc(s["started_wall"]), "ended_utc": _utc(s["ended_wall"])},
        "plan": _plan_dict(model),
        "versions": {
            "report_software": generated["software"],
            "session_software": model.context.get("software"),
            "devices": model.context.get("devices"),
            "source": model.context_source,
        },
        "context": model.context,
        "time": {"axis": "treatment time: seconds since the plan was loaded x time_scale", "time_scale": model.time_scale, "t0_wall": model.t0_wall, "t0_utc": _utc(model.t0_wall)},
        "summary": summ,
        "events": [e | {"t_s": round(t, 3), "t_utc": _utc(e["t_wall"])} for t, e in zip(model.event_t, model.events, strict=True)],
        "samples": {"count": len(model.samples), "file": "cycles.csv", "columns": CSV_COLUMNS},
        "zone_picture": zone,
        "files_sha256": files,
    }
    return (json.dumps(_clean(doc), indent=2, allow_nan=False, ensure_ascii=False) + "\n").encode("utf-8")


# --- HTML ----------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape("—" if value is None or value == "" else str(value))


def _n(value: float | None, fmt: str = ".1f", unit: str = "") -> str:
    return "—" if value is None else f"{value:{fmt}}{(' ' + unit) if unit else ''}"


def _table(headers: list[str] | None, rows: list[list[str]], cls: str = "") -> str:
    """A table; `headers` None: a key-value table whose first column is the header of its row."""
    if headers is None:
        body = "".join(f"<tr><th>{r[0]}</th>" + "".join(f"<td>{c}</td>" for c in r[1:]) + "</tr>" for r in rows)
        return f'<table class="kv {cls}"><tbody>{body}</tbody></table>'
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


_CSS: Final = """
body { font-family: "DejaVu Sans", Arial, sans-serif; margin: 24px auto; max-width: 1060px; color: #1d1d1d; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 0.92em; } th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } table.kv th { width: 17em; font-weight: normal; } td.num { text-align: right; }
.state { display: inline-block; padding: 2px 10px; border-radius: 10px; color: #fff; font-weight: bold; }
.COMPLETE { background: #3c8d3c; } .ABORTED { background: #777; } .FAULTED, .INTERRUPTED { background: #c9302c; } .open { background: #d08a00; }
.warn { background: #fff4e0; border-left: 5px solid #e69500; padding: 8px 12px; margin: 8px 0; }
.bad { background: #fdecea; border-left: 5px solid #c9302c; padding: 8px 12px; margin: 8px 0; }
figure { margin: 14px 0; } figure img { max-width: 100%; border: 1px solid #ddd; } figcaption { font-size: 0.9em; color: #444; }
pre { background: #f7f7f7; border: 1px solid #ddd; padding: 8px; overflow-x: auto; font-size: 0.85em; }
fieldset { border: 1px solid #bbb; margin: 10px 0; padding: 8px 14px; } legend { font-weight: bold; }
.audit label { display: inline-block; width: 17em; } .audit .row { margin: 6px 0; } .audit input[type=text] { width: 26em; } .audit input.wide { width: 36.5em; }
.muted { color: #666; font-size: 0.9em; } details summary { cursor: pointer; color: #245; }
#figure-status.missing { color: #c9302c; font-weight: bold; }
@media print { .noprint { display: none; } body { margin: 0; } }
"""

_SCRIPT: Final = """
// Check that every figure loaded (they are separate files next to this page): say so on the page,
// and mark each image, so that a missing or moved file cannot go unnoticed.
window.addEventListener("load", function () {
  var imgs = document.querySelectorAll("img"), missing = [];
  for (var i = 0; i < imgs.length; i++) {
    var ok = imgs[i].complete && imgs[i].naturalWidth > 0;
    imgs[i].setAttribute("data-loaded", ok ? "yes" : "no");
    if (!ok) missing.push(imgs[i].getAttribute("src"));
  }
  var status = document.getElementById("figure-status");
  if (missing.length) {
    status.className = "missing";
    status.textContent = "Missing figure(s): " + missing.join(", ") + ". Keep report.html in its folder with the PNG files.";
  } else {
    status.textContent = "All " + imgs.length + " pictures loaded.";
  }
  document.body.setAttribute("data-figures", missing.length ? "missing" : "ok");
});
// The audit fields are filled in by the clinician; this saves them as a JSON file (nothing is sent anywhere).
function saveAudit() {
  var form = document.getElementById("nice-audit"), data = {session: form.getAttribute("data-session"), saved: new Date().toISOString(), fields: {}};
  for (var i = 0; i < form.elements.length; i++) { var el = form.elements[i]; if (el.name) data.fields[el.name] = el.value; }
  var a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([JSON.stringify(data, null, 2)], {type: "application/json"}));
  a.download = "session-" + data.session + "-nice-audit.json";
  document.body.appendChild(a); a.click(); a.remove();
}
"""


def _audit_form(model: Model) -> str:
    outcome = '<option value="">—</option><option>no</option><option>yes</option><option>not assessed</option>'

    def row(group: str, key: str, label: str) -> str:
        name = f"{group}.{key}"
        hint = "date, imaging, details" if group == "efficacy" else "date, severity or grade, details"
        return (
            f'<div class="row"><label for="{name}">{label}</label>'
            f'<select id="{name}" name="{name}">{outcome}</select> '
            f'<input type="text" name="{name}.details" aria-label="{label}: details" placeholder="{hint}" value=""></div>'
        )

    survival = {"overall_survival", "disease_free_survival"}
    eff = "".join(
        (
            f'<div class="row"><label for="efficacy.{k}">{label}</label>'
            f'<input type="text" class="wide" id="efficacy.{k}" name="efficacy.{k}" placeholder="status, months since the procedure, date of last follow-up" value=""></div>'
        )
        if k in survival
        else row("efficacy", k, label)
        for k, label in NICE_EFFICACY
    )
    safe = "".join(row("safety", k, label) for k, label in NICE_SAFETY)
    return f"""
<form id="nice-audit" class="audit" data-session="{model.session['id']}" onsubmit="return false">
<p class="muted">{html.escape(NICE_SOURCE)} These fields are left blank for the clinician; nothing here is filled in by the device.</p>
<fieldset><legend>Efficacy</legend>{eff}</fieldset>
<fieldset><legend>Safety</legend>{safe}</fieldset>
<fieldset><legend>Completed by</legend>
<div class="row"><label for="audit.clinician">Clinician</label><input type="text" id="audit.clinician" name="audit.clinician" value=""></div>
<div class="row"><label for="audit.date">Date</label><input type="date" id="audit.date" name="audit.date" value=""></div>
<div class="row"><label for="audit.notes">Notes</label><input type="text" id="audit.notes" name="audit.notes" value=""></div>
</fieldset>
<p class="noprint"><button type="button" onclick="saveAudit()">Save the audit entries as a file (JSON)</button>
<span class="muted">or print this page with the fields filled in.</span></p>
</form>"""


def _versions(model: Model, generated: dict[str, Any]) -> str:
    ctx = model.context
    rows = [
        ["report written by", _e(describe(generated["software"]))],
        ["session run by (laserd)", _e(describe(ctx.get("software")) if ctx.get("software") else "not recorded for this session")],
    ]
    for name, d in (ctx.get("devices") or {}).items():
        text = f"{d.get('vendor') or ''} {d.get('product') or name} firmware {d.get('firmware', '?')}, register map {d.get('map_version', '?')}, revision {d.get('revision') or '?'}, Modbus unit {d.get('unit', '?')}"
        rows.append([f"device {_e(name)}", _e(text.strip())])
    if not ctx.get("devices"):
        rows.append(["devices", "not recorded"])
    rows.append(["time scale", _e(f"{model.time_scale:g}" + (" (simulator: device time runs faster than wall time)" if model.time_scale != 1 else ""))])
    if ctx.get("control_period_ms"):
        rows.append(["control period", _e(f"{ctx['control_period_ms']} ms")])
    rows.append(["where this comes from", _e(model.context_source)])
    out = _table(None, rows)
    limits = ctx.get("limits")
    if isinstance(limits, dict):
        out += "<details><summary>The site's hard limits when the plan was loaded</summary>" + _table(["limit", "value"], [[_e(k), _e(v)] for k, v in limits.items()]) + "</details>"
    return out


def _warnings(model: Model, summ: dict[str, Any]) -> str:
    notes = []
    if model.open:
        notes.append(("warn", f"The session is still open ({model.session['state']}): this report is a snapshot of its record so far."))
    if model.session["interrupted"]:
        rj, rc = model.session["recovery_journal_energy_j"], model.session["recovery_counter_energy_j"]
        notes.append(("bad", f"The session was open when laserd stopped and was marked INTERRUPTED at the next start. Delivered energy is the larger of the journal's figure {rj} J and the LS-4 counters' share {rc} J, per channel."))
    if summ["safety_trips"]:
        notes.append(("bad", f"{len(summ['safety_trips'])} safety trip(s): " + "; ".join(t["message"] for t in summ["safety_trips"])))
    if not model.plan_sha256_ok:
        notes.append(("bad", "The plan text does not match its recorded sha256: the record may have been altered."))
    if model.plan is None:
        notes.append(("warn", f"The plan could not be read back ({model.plan_error}); fibres and probes are those the samples show."))
    if model.time_scale != 1:
        notes.append(("warn", f"Simulated run: laserd ran at time scale {model.time_scale:g}. Times in this report are device time (wall time × {model.time_scale:g})."))
    if not model.samples:
        notes.append(("warn", "No samples were recorded for this session (it never reached the devices' 1 Hz record)."))
    return "".join(f'<div class="{cls}">{html.escape(text)}</div>' for cls, text in notes)


def report_html(model: Model, summ: dict[str, Any], zone: dict[str, Any], figures: list[tuple[str, str]], files: dict[str, str], generated: dict[str, Any]) -> bytes:
    s = model.session
    state = s["state"]
    badge_cls = state if not model.open else "open"
    kv = [
        ["session", _e(s["id"])],
        ["patient id", _e(s["patient_id"])],
        ["operator", _e(s["operator"])],
        ["state", f'<span class="state {badge_cls}">{_e(state)}</span>' + (f" — {_e(s['end_reason'])}" if s["end_reason"] else "")],
        ["plan loaded", _e(_local(s["created_wall"]))],
        ["first emission", _e(_local(s["started_wall"]))],
        ["ended", _e(_local(s["ended_wall"]))],
        ["treatment time (first emission to end)", _n(summ["treatment_s"], ".0f", "s")],
        ["emission time", _n(summ["emission_s"], ".0f", "s")],
        ["illuminations", f"{summ['illuminations_reached']} of {_e(summ['illuminations_planned'])} planned"],
        ["pauses (footswitch released)", str(summ["pauses"])],
        ["pull-backs confirmed", str(summ["pullbacks"])],
        ["safety trips / soft limits", f"{len(summ['safety_trips'])} / {len(summ['soft_limits'])}"],
        ["energy delivered, all fibres", _n(summ["delivered_energy_total_j"], ".1f", "J") + (f" of {summ['planned_energy_total_j']:g} J planned" if summ["planned_energy_total_j"] else "")],
        ["record", f"{summ['samples']} samples (1 Hz), {summ['events']} events"],
    ]
    fibre_rows = [
        [
            f"{f['channel']}" + (f" ({_e(f['label'])})" if f["label"] else ""),
            _e(f["mode"]),
            _n(f["power_w"], "g", "W") if f["power_w"] is not None else (_n(f["target_temp_c"], "g", "°C target") if f["target_temp_c"] is not None else "—"),
            _n(f["budget_per_illumination_j"], "g", "J"),
            _n(f["planned_j"], "g", "J"),
            f'<span class="num">{_n(f["delivered_j"], ".2f", "J")}</span>',
            _n(f["max_setpoint_w"], ".2f", "W") + " / " + _n(f["max_output_w"], ".2f", "W"),
        ]
        for f in summ["fibres"]
    ]
    probe_rows = []
    for p in summ["probes"]:
        over_t = " ⚠ over the limit" if p["temp_limit_exceeded"] else ""
        over_d = " ⚠ over the limit" if p["cem43_limit_exceeded"] else ""
        dose_limit = p["cem43_limit_min"] if p["cem43_limit_min"] is not None else p["lethal_cem43_min"]
        dose_kind = "limit" if p["cem43_limit_min"] is not None else ("lethal" if p["lethal_cem43_min"] is not None else "")
        probe_rows.append(
            [
                f"{p['channel']}" + (f" ({_e(p['label'])})" if p["label"] else ""),
                _e(p["role"]) + (f" of fibre {p['fibre']}" if p["fibre"] is not None else ""),
                _n(p["max_temp_c"], ".1f", "°C") + over_t,
                _n(p["temp_limit_c"], "g", "°C"),
                _n(p["max_cem43_min"], ".3g", "min") + over_d,
                (f"{dose_kind} {dose_limit:g} min" if dose_limit is not None else "—"),
                str(p["invalid_readings"]),
            ]
        )
    figs = "".join(f'<figure><img src="{name}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>' for name, caption in figures)
    if not any(name == "cem43.png" for name, _ in figures):
        figs += '<p class="muted">No CEM43 figure: the plan has no protected or margin probes.</p>'
    if zone.get("file"):
        where = f"the simulator at {zone['bench']}, at its device time {zone.get('sim_time_s')} s" if zone["source"] == "simulator bench" else f"the file {zone['path']}"
        zone_html = (
            f'<figure><img src="zone.png" alt="simulator ablation zone"><figcaption>The simulator\'s tissue model: peak temperature and thermal damage '
            f"(log10 Ω; Ω = 1 is coagulation) in the fibre plane and across the tips, rendered by {_e(where)}. It shows everything the simulated tissue received "
            "since the simulator started, which is this session's treatment only if the simulator ran nothing else.</figcaption></figure>"
        )
    else:
        zone_html = '<p id="no-zone">No simulator zone picture (real hardware, or none was asked for with <code>--sim-bench SOCK</code> or <code>--zone-png PATH</code>).</p>'
    event_rows = []
    for t, e in zip(model.event_t, model.events, strict=True):
        details = ""
        if e.get("details"):
            details = f"<details><summary>details</summary><pre>{html.escape(json.dumps(_clean(e['details']), indent=1, ensure_ascii=False))}</pre></details>"
        transition = f"{_e(e['from'])} → {_e(e['to'])}" if e["to"] else ""
        event_rows.append([str(e["id"]), f"{t:.1f}", _clock(e["t_wall"]), _e(e["kind"]), _e(category(e)), transition, _e(e["message"]) + details])
    file_rows = [[f'<a href="{_e(name)}">{_e(name)}</a>', f"<code>{digest}</code>"] for name, digest in files.items()]
    title = f"Treatment report — session {s['id']}" + (f" — patient {s['patient_id']}" if s["patient_id"] else "")
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="{_e(describe(generated['software']))}">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body data-figures="pending">
<h1>{_e(title)}</h1>
<p class="muted">Percutaneous laser ablation of liver tumours: laserhost treatment record, written {_e(_local(generated['at_wall']))} from {_e(generated['source'])}.
<span id="figure-status">Checking the pictures…</span></p>
{_warnings(model, summ)}
<h2>Summary</h2>
{_table(None, kv)}
<h3>Fibres (LS-4 channels)</h3>
{_table(["fibre", "mode", "power / target", "budget per illumination", "planned", "delivered", "max commanded / measured"], fibre_rows)}
<h3>Probes (FT-8 channels)</h3>
{_table(["probe", "role", "max temperature", "temperature limit", "max CEM43", "dose limit", "invalid readings"], probe_rows)}
<h2>Figures</h2>
<p class="muted">Time axis: treatment time since the plan was loaded; the shaded bands are the intervals in which the laser was emitting. The numbers are in <a href="cycles.csv">cycles.csv</a>.</p>
{figs}
<h2>Ablation zone (simulator)</h2>
{zone_html}
<h2>Events</h2>
<p class="muted">Every event of the session's record, in order: # is the journal's event id, t the treatment time, time the host's clock{_e(" (" + datetime.fromtimestamp(model.t0_wall).astimezone().strftime("%Z, UTC%z") + ")")}.</p>
{_table(["#", "t (s)", "time", "kind", "category", "state", "message"], event_rows)}
<h2>Software and devices</h2>
{_versions(model, generated)}
<h2>Plan</h2>
<p>sha256 <code>{_e(s['plan_sha256'])}</code> — {"matches the plan text below" if model.plan_sha256_ok else "<strong>does not match the plan text below</strong>"}.</p>
<pre>{html.escape(model.record['plan_text'])}</pre>
<h2>Clinical audit (NICE)</h2>
{_audit_form(model)}
<h2>Files</h2>
<p class="muted">This report is the folder: report.html with the files below (sha256 of each as written).</p>
{_table(["file", "sha256"], file_rows)}
<script>{_SCRIPT}</script>
</body></html>
"""
    return doc.encode("utf-8")


# --- the command ----------------------------------------------------------------------------------


def write_report(args: argparse.Namespace, *, err: TextIO | None = None) -> Path:
    created = not args.out.exists()
    out = _prepare_dir(args.out)
    try:
        return _write_report(args, out, Progress(err or sys.stderr))
    except ReportError:
        if created:  # a DIR made for a report that could not be written is not left behind empty
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _write_report(args: argparse.Namespace, out: Path, progress: Progress) -> Path:
    if args.zone_png is not None and not args.zone_png.is_file():
        raise ReportError(f"--zone-png {args.zone_png}: no such file")
    source = f"journal file {args.journal.resolve()}" if args.journal is not None else f"laserd at {args.socket}"
    progress.step(f"reading session {args.id} from {source}")
    record = read_record(args)
    model = build(record)
    summ = summary(model)
    zone = zone_picture(args, out)
    generated = {"at_wall": time.time(), "at_utc": None, "software": software_version(), "source": source, "command": "laserctl report"}
    generated["at_utc"] = _utc(generated["at_wall"])

    from . import report_plots  # matplotlib only here: every other laserctl command starts fast

    axis = report_plots.Axis(model)
    figures: list[tuple[str, str]] = []
    written: set[str] = set()
    for name, caption, draw in report_plots.FIGURES:
        progress.step(f"drawing {caption}")
        try:
            made = draw(model, axis, out / f".{name}.partial")
        except OSError as exc:
            raise ReportError(f"cannot write {out / name}: {exc.strerror or exc}") from None
        if made is False:
            continue
        os.chmod(out / f".{name}.partial", FILE_MODE)
        os.replace(out / f".{name}.partial", out / name)
        figures.append((name, f"Figure {len(figures) + 1}: {caption}."))
        written.add(name)
    progress.step("writing cycles.csv and session.json")
    _write(out / "cycles.csv", cycles_csv(model))
    written.add("cycles.csv")
    if zone.get("file"):
        written.add("zone.png")
    for stale in OUTPUTS:  # an earlier report's files that this one does not have
        if stale not in written and stale not in ("report.html", "session.json"):
            with contextlib.suppress(FileNotFoundError):
                (out / stale).unlink()
    files = {name: _sha256(out / name) for name in OUTPUTS if name in written}
    _write(out / "session.json", session_json(model, summ, zone, files, generated))
    files["session.json"] = _sha256(out / "session.json")
    _write(out / "report.html", report_html(model, summ, zone, figures, files, generated))  # last: its presence means the rest is there
    return out / "report.html"


def main(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        path = write_report(args, err=err)
    except ReportError as error:
        print(f"laserctl: {error}", file=err)
        return error.code
    print(f"report of session {args.id}: {path} (with cycles.csv, session.json and its figures in {path.parent})", file=out)
    return EXIT_OK

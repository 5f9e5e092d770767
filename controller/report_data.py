"""One session's record as plain JSON data, for `laserctl report` (controller/report.py).

Both ways of reading it go through here, so they cannot differ: laserd answers the operator
command `report` with `read(journal, ...)` on its own journal, and `laserctl report --journal
PATH` calls the same function on a read-only copy. Samples and events come in pages, so that no
reply on the operator socket grows past its line limit and no read holds the control cycle up
for long (the daemon runs the journal on its event loop).

    read(journal, id, "session")       the session row, its plan text, the counts, the daemon's
                                       identification events before the session
    read(journal, id, "events", n)     events n.. (EVENTS_PAGE at most), in order
    read(journal, id, "samples", n)    1 Hz samples n.. (SAMPLES_PAGE at most), in order
"""

from __future__ import annotations

from typing import Any, Final

from .journal import EventRecord, Journal, RecordedSample, SessionRecord

EXPORT_FORMAT: Final = "laserhost-session-export/1"
EVENTS_PAGE: Final = 500
SAMPLES_PAGE: Final = 200  # about 60 kB of JSON and 5-10 ms of laserd's event loop; 4 h of samples (14400) is 72 pages
CONTEXT_KIND: Final = "session_context"  # laserd's event at load: software, devices, time scale, site limits
DAEMON_KINDS: Final = ("device_identified", "daemon_started")  # before the session, for journals without session_context
PARTS: Final = ("session", "events", "samples")


class ReportDataError(ValueError):
    """A request that cannot be answered (one line)."""


def session_dict(s: SessionRecord) -> dict[str, Any]:
    return {
        "id": s.id,
        "state": str(s.state),
        "created_wall": s.created_wall,
        "started_wall": s.started_wall,
        "ended_wall": s.ended_wall,
        "end_reason": s.end_reason,
        "patient_id": s.patient_id,
        "operator": s.operator,
        "plan_sha256": s.plan_sha256,
        "energy_baseline_j": None if s.energy_baseline_j is None else list(s.energy_baseline_j),
        "delivered_energy_j": list(s.delivered_energy_j),
        "interrupted": s.interrupted,
        "recovery_journal_energy_j": None if s.recovery_journal_energy_j is None else list(s.recovery_journal_energy_j),
        "recovery_counter_energy_j": None if s.recovery_counter_energy_j is None else list(s.recovery_counter_energy_j),
    }


def event_dict(e: EventRecord) -> dict[str, Any]:
    return {
        "id": e.id,
        "t_wall": e.t_wall,
        "device_time_ms": e.device_time_ms,
        "kind": e.kind,
        "from": None if e.state_from is None else str(e.state_from),
        "to": None if e.state_to is None else str(e.state_to),
        "message": e.message,
        "details": e.details,
    }


def sample_dict(r: RecordedSample) -> dict[str, Any]:
    s = r.sample
    return {
        "t_wall": r.t_wall,
        "device_time_ms": s.device_time_ms,
        "illumination": s.illumination,
        "setpoint_mw": list(s.setpoint_mw),
        "output_mw": list(s.output_mw),
        "energy_j": list(s.energy_j),
        "temperature_c": list(s.temperature_c),
        "cem43_min": list(s.cem43_min),
    }


def missing_session(journal: Journal, session_id: Any) -> str:
    """The one line for a session id the journal does not have."""
    ids = [s.id for s in journal.sessions()]
    if not ids:
        return f"the journal {journal.path} has no sessions yet"
    return f"no session {session_id} in the journal (it has sessions {ids[0]} to {ids[-1]})" if len(ids) > 1 else f"no session {session_id} in the journal (it has session {ids[0]} only)"


def read(journal: Journal, session_id: int, part: str = "session", offset: int = 0) -> dict[str, Any]:
    """One part of a session's record; LookupError (with the one line) for an unknown session."""
    if part not in PARTS:
        raise ReportDataError(f"report: part must be one of {', '.join(PARTS)}, got {part!r}")
    if isinstance(session_id, bool) or not isinstance(session_id, int):
        raise ReportDataError(f"report: session id must be an integer, got {session_id!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ReportDataError(f"report: offset must be an integer >= 0, got {offset!r}")
    if part == "samples":  # the cheap way: no events read for each page
        try:
            journal.delivered_energy_j(session_id)
        except LookupError:
            raise LookupError(missing_session(journal, session_id)) from None
        rows = [sample_dict(r) for r in journal.samples(session_id, offset=offset, limit=SAMPLES_PAGE)]
        return {"rows": rows, "offset": offset, "more": len(rows) == SAMPLES_PAGE}
    try:
        detail = journal.session(session_id)
    except LookupError:
        raise LookupError(missing_session(journal, session_id)) from None
    if part == "events":
        rows = [event_dict(e) for e in detail.events[offset : offset + EVENTS_PAGE]]
        return {"rows": rows, "offset": offset, "more": offset + len(rows) < len(detail.events)}
    first = detail.events[0].id if detail.events else None
    before = [] if first is None else journal.daemon_events_before(first, DAEMON_KINDS, limit=2 * len(DAEMON_KINDS) + 2)
    return {
        "format": EXPORT_FORMAT,
        "session": session_dict(detail.session),
        "plan_text": detail.session.plan_text,
        "events_total": len(detail.events),
        "samples_total": detail.sample_count,
        "daemon_events": [event_dict(e) for e in reversed(before)],  # oldest first
    }


def read_all(fetch: Any, session_id: int) -> dict[str, Any]:
    """The whole record through `fetch(session_id, part, offset) -> dict` (a journal or laserd):
    the session part with "events" and "samples" lists filled in, page by page. A session still
    running grows while it is read: the counts are those of the rows read."""
    record = fetch(session_id, "session", 0)
    for part in ("events", "samples"):
        rows: list[dict[str, Any]] = []
        while True:
            page = fetch(session_id, part, len(rows))
            rows.extend(page["rows"])
            if not page["rows"] or not page["more"]:
                break
        record[part] = rows
        record[f"{part}_total"] = len(rows)
    return record

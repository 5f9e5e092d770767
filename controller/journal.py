"""The journal: every session, its plan, every state change and event, and 1 Hz samples, in SQLite.

Durability: WAL with `synchronous=FULL`, so a commit is on disk (the WAL fsynced) before it
returns. Events, state changes, session creation and recovery commit before their call returns:
auditors rely on that. Samples are batched: `record_sample` commits when the last commit is at
least `SAMPLE_COMMIT_PERIOD_S` old, and every other write commits pending samples first; the
daemon calls `flush()` from its 1 Hz tick so no sample waits longer than that. A crash can lose
at most the samples of about one second: that is why recovery also asks the LS-4.

Energy bookkeeping. The LS-4 counts energy per channel in non-volatile counters since its last
ENERGY_RESET, not per session. So a session stores the counters as they were when it started
(`energy_baseline_j`, set at creation or later with `set_energy_baseline`, e.g. right after an
ENERGY_RESET), and the session's share of a counter is `counter - baseline`. Samples carry the
session's delivered energy per channel, and so does the state change that ends a session (the safety
layer's books then: the last 1 Hz sample may be up to a second old); the session row keeps the
largest figure seen.

One open session at a time: `create_session` refuses while another is open, so a counter's
growth since the baseline belongs to exactly one session.

Calls are short (one small transaction each): the daemon runs the journal in its event-loop
thread. A `JournalError` from a write means the record is not durable; the daemon must treat
that as a fault.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from protocol import ft8, ls4

from .plan import Plan
from .session_states import OPEN_STATES, TERMINAL_STATES, State, TransitionError, can_reach

SCHEMA_VERSION: Final = 1
SAMPLE_COMMIT_PERIOD_S: Final = 1.0  # samples are committed at least this often (issue: "every second")
BUSY_TIMEOUT_S: Final = 1.0  # a reader holding a lock briefly must not fail a write
JOURNAL_FILE_MODE: Final = 0o640  # it holds patient ids: not world-readable
JOURNAL_DIR_MODE: Final = 0o750
KIND_MAX_CHARS: Final = 64
CHANNELS: Final = ls4.CHANNEL_COUNT
PROBES: Final = ft8.CHANNEL_COUNT

_SCHEMA: Final = f"""
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version (version) VALUES ({SCHEMA_VERSION});

CREATE TABLE sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_wall REAL NOT NULL,             -- unix seconds
    plan_text TEXT NOT NULL,                -- exactly as loaded
    plan_sha256 TEXT NOT NULL,
    patient_id TEXT,
    operator TEXT,
    state TEXT NOT NULL,
    started_wall REAL,                      -- first EMITTING
    ended_wall REAL,                        -- entered a terminal state
    end_reason TEXT,
    energy_baseline_j TEXT,                 -- JSON [4]: LS-4 counters at session start, or NULL
    delivered_energy_j TEXT NOT NULL,       -- JSON [4]: journal's figure; after recovery the max with the counters
    interrupted INTEGER NOT NULL DEFAULT 0 CHECK (interrupted IN (0, 1)),
    recovery_journal_energy_j TEXT,         -- JSON [4]: journal's figure when recovered
    recovery_counter_energy_j TEXT          -- JSON [4]: the counters' share when recovered
);

CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id INTEGER REFERENCES sessions(id),
    t_wall REAL NOT NULL,
    t_mono REAL NOT NULL,                   -- host monotonic seconds (this boot)
    device_time_ms INTEGER,                 -- LS-4 uptime, when known
    kind TEXT NOT NULL,
    state_from TEXT,
    state_to TEXT,
    message TEXT NOT NULL,
    details TEXT                            -- JSON object
);
CREATE INDEX events_by_session ON events (session_id, id);

CREATE TABLE samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    t_wall REAL NOT NULL,
    t_mono REAL NOT NULL,
    device_time_ms INTEGER,
    illumination INTEGER NOT NULL,          -- fibre position, from 0
    setpoint_mw TEXT NOT NULL,              -- JSON [4]
    output_mw TEXT NOT NULL,                -- JSON [4]
    energy_j TEXT NOT NULL,                 -- JSON [4]: session's delivered energy so far
    temperature_c TEXT NOT NULL,            -- JSON [8], null = no valid reading
    cem43_min TEXT NOT NULL                 -- JSON [8]
);
CREATE INDEX samples_by_session ON samples (session_id, id);

-- The record is append-only: events and samples are never changed or removed.
CREATE TRIGGER events_no_update BEFORE UPDATE ON events BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER samples_no_update BEFORE UPDATE ON samples BEGIN SELECT RAISE(ABORT, 'samples are append-only'); END;
CREATE TRIGGER samples_no_delete BEFORE DELETE ON samples BEGIN SELECT RAISE(ABORT, 'samples are append-only'); END;
CREATE TRIGGER sessions_no_delete BEFORE DELETE ON sessions BEGIN SELECT RAISE(ABORT, 'sessions are never deleted'); END;
"""
_SELECT_EVENTS: Final = "SELECT id, session_id, t_wall, t_mono, device_time_ms, kind, state_from, state_to, message, details FROM events"


class JournalError(RuntimeError):
    """The journal cannot be opened or written. `str(e)` is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(f"journal: {message}".split()))


@dataclass(frozen=True, slots=True)
class Sample:
    """One 1 Hz sample of a session, as the daemon hands it over."""

    illumination: int  # fibre position, from 0
    setpoint_mw: Sequence[int]  # per LS-4 channel
    output_mw: Sequence[int]
    energy_j: Sequence[float]  # the session's delivered energy per channel so far
    temperature_c: Sequence[float | None]  # per FT-8 channel, None = no valid reading
    cem43_min: Sequence[float | None]
    device_time_ms: int | None = None


@dataclass(frozen=True, slots=True)
class RecordedSample:
    session_id: int
    t_wall: float
    t_mono: float
    sample: Sample


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: int
    created_wall: float
    plan_text: str
    plan_sha256: str
    patient_id: str | None
    operator: str | None
    state: State
    started_wall: float | None
    ended_wall: float | None
    end_reason: str | None
    energy_baseline_j: tuple[float, ...] | None
    delivered_energy_j: tuple[float, ...]
    interrupted: bool
    recovery_journal_energy_j: tuple[float, ...] | None
    recovery_counter_energy_j: tuple[float, ...] | None


@dataclass(frozen=True, slots=True)
class EventRecord:
    id: int
    session_id: int | None
    t_wall: float
    t_mono: float
    device_time_ms: int | None
    kind: str
    state_from: State | None
    state_to: State | None
    message: str
    details: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class SessionDetail:
    session: SessionRecord
    events: tuple[EventRecord, ...]
    sample_count: int


@dataclass(frozen=True, slots=True)
class RecoveredSession:
    session_id: int
    state_before: State
    journal_energy_j: tuple[float, ...]  # what the journal had
    counter_energy_j: tuple[float, ...]  # the LS-4 counters' share (counter - baseline, see recover())
    delivered_energy_j: tuple[float, ...]  # the larger of the two, per channel: now the session's figure
    baseline_known: bool
    counter_reset_suspected: tuple[bool, ...]


def _json(value: Any) -> str:
    """JSON that never fails an audit record: non-finite floats become strings, unknown objects str()."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return repr(v)
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), default=str, allow_nan=False, separators=(",", ":"))


def _floats(text: str | None) -> tuple[float, ...] | None:
    return None if text is None else tuple(float(x) for x in json.loads(text))


def _vector(values: Sequence[Any], length: int, what: str, *, optional: bool = False) -> list[Any]:
    if len(values) != length:
        raise ValueError(f"journal: {what} needs {length} values, got {len(values)}")
    out: list[Any] = []
    for v in values:
        if v is None and optional:
            out.append(None)
        elif isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"journal: {what} has a non-number {v!r}")
        else:
            out.append(v)
    return out


class Journal:
    """The journal at `path` (created with its schema if new). Use as a context manager or call close()."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        read_only: bool = False,
    ) -> None:
        """`read_only`: open an existing journal for reading only (audits, `laserctl report --journal`):
        nothing is created, the file is opened with SQLite's mode=ro, and every write fails."""
        self.path = Path(path)
        self._wall = wall
        self._mono = monotonic
        self._last_commit_mono = monotonic()
        self.read_only = read_only
        if read_only:
            self._open_read_only()
            return
        try:
            self.path.parent.mkdir(mode=JOURNAL_DIR_MODE, parents=True, exist_ok=True)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, JOURNAL_FILE_MODE))
            # isolation_level=None: no implicit transactions; every transaction here is explicit.
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"{self.path}: cannot open: {exc}") from None
        try:
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalError(f"{self.path}: WAL mode refused (got {mode}); is it on a network file system?")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._check_schema()
        except sqlite3.Error as exc:
            self._db.close()
            raise JournalError(f"{self.path}: cannot open: {exc}") from None
        except JournalError:
            self._db.close()
            raise

    def _open_read_only(self) -> None:
        """mode=ro; if SQLite cannot set up WAL reading (a copy on read-only media, without its -shm
        file), immutable=1: the file is then taken as it is, which is what an audit copy is."""
        if not self.path.is_file():
            raise JournalError(f"{self.path}: no journal there")
        uri = self.path.resolve().as_uri()
        last: Exception | None = None
        for flags in ("mode=ro", "mode=ro&immutable=1"):
            try:
                self._db = sqlite3.connect(f"{uri}?{flags}", uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_S)
            except sqlite3.Error as exc:
                last = exc
                continue
            try:
                tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if not tables:
                    raise JournalError(f"{self.path}: empty file, not a laserhost journal")
                self._check_schema()
                return
            except sqlite3.Error as exc:
                self._db.close()
                last = exc
            except JournalError:
                self._db.close()
                raise
        raise JournalError(f"{self.path}: cannot open for reading: {last}")

    def _check_schema(self) -> None:
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            self._db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
            return
        if "schema_version" not in tables:
            raise JournalError(f"{self.path}: not a laserhost journal (no schema_version table)")
        row = self._db.execute("SELECT version FROM schema_version").fetchone()
        if row is None or row[0] != SCHEMA_VERSION:
            raise JournalError(f"{self.path}: schema version {row[0] if row else 'missing'}, this laserd knows {SCHEMA_VERSION}")

    # ----- transactions -----

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One committed transaction: durable when the block ends. Pending samples are committed
        first, on their own, so that a refused write can never take them down with it."""
        self.flush()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            yield self._db
            self._db.execute("COMMIT")
            self._last_commit_mono = self._mono()
        except sqlite3.Error as exc:
            self._rollback()
            raise JournalError(f"{self.path}: {what} failed: {exc}") from None
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def flush(self) -> None:
        """Commit pending samples now."""
        if self._db.in_transaction:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise JournalError(f"{self.path}: committing samples failed: {exc}") from None
        self._last_commit_mono = self._mono()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- writes -----

    def _insert_event(
        self,
        db: sqlite3.Connection,
        kind: str,
        message: str,
        *,
        session_id: int | None,
        details: dict[str, Any] | None,
        state_from: State | None = None,
        state_to: State | None = None,
        device_time_ms: int | None = None,
    ) -> int:
        if not kind or len(kind) > KIND_MAX_CHARS:
            raise ValueError(f"journal: event kind must be 1-{KIND_MAX_CHARS} characters, got {kind!r}")
        cur = db.execute(
            "INSERT INTO events (session_id, t_wall, t_mono, device_time_ms, kind, state_from, state_to, message, details)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                session_id,
                self._wall(),
                self._mono(),
                device_time_ms,
                kind,
                None if state_from is None else str(state_from),
                None if state_to is None else str(state_to),
                message,
                None if details is None else _json(details),
            ),
        )
        return int(cur.lastrowid or 0)

    def create_session(self, plan: Plan, *, energy_baseline_j: Sequence[float] | None = None) -> int:
        """A new session in LOADED with the plan's exact text; refused while another session is open."""
        baseline = None if energy_baseline_j is None else _vector(energy_baseline_j, CHANNELS, "energy_baseline_j")
        with self._write("creating a session") as db:
            open_ids = [r[0] for r in db.execute(self._open_query("id"))]
            if open_ids:
                raise ValueError(f"journal: session {open_ids[0]} is still open; end it before creating another")
            cur = db.execute(
                "INSERT INTO sessions (created_wall, plan_text, plan_sha256, patient_id, operator, state, energy_baseline_j, delivered_energy_j)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self._wall(),
                    plan.text,
                    plan.sha256,
                    plan.patient_id,
                    plan.operator,
                    str(State.LOADED),
                    None if baseline is None else _json(baseline),
                    _json([0.0] * CHANNELS),
                ),
            )
            session_id = int(cur.lastrowid or 0)
            self._insert_event(
                db,
                "session_created",
                f"plan loaded (sha256 {plan.sha256[:12]})",
                session_id=session_id,
                details={"plan_sha256": plan.sha256, "energy_baseline_j": baseline},
                state_from=State.IDLE,
                state_to=State.LOADED,
            )
        return session_id

    def set_energy_baseline(self, session_id: int, energy_baseline_j: Sequence[float], *, reason: str) -> None:
        """Record the LS-4 counters this session's share is counted from (e.g. after an ENERGY_RESET)."""
        baseline = _vector(energy_baseline_j, CHANNELS, "energy_baseline_j")
        with self._write("setting the energy baseline") as db:
            self._state_of(db, session_id)
            db.execute("UPDATE sessions SET energy_baseline_j = ? WHERE id = ?", (_json(baseline), session_id))
            self._insert_event(db, "energy_baseline", reason, session_id=session_id, details={"energy_baseline_j": baseline})

    def set_state(
        self,
        session_id: int,
        new_state: State | str,
        reason: str,
        *,
        details: dict[str, Any] | None = None,
        delivered_energy_j: Sequence[float] | None = None,
    ) -> None:
        """Move the session to `new_state` (one event away from its state, per session_states) and record why.
        `delivered_energy_j`: the session's delivered energy per channel now (the safety layer's books,
        given with the terminal state change): booked in the same transaction, if larger."""
        new = State(new_state)
        energy = None if delivered_energy_j is None else _vector(delivered_energy_j, CHANNELS, "delivered_energy_j")
        with self._write("recording a state change") as db:
            current = self._state_of(db, session_id)
            if not can_reach(current, new):
                raise TransitionError(f"journal: session {session_id} cannot go from {current} to {new}")
            now = self._wall()
            db.execute("UPDATE sessions SET state = ? WHERE id = ?", (str(new), session_id))
            if energy is not None:
                row = db.execute("SELECT delivered_energy_j FROM sessions WHERE id = ?", (session_id,)).fetchone()
                booked = [max(float(a), float(b)) for a, b in zip(json.loads(row[0]), energy, strict=True)]
                db.execute("UPDATE sessions SET delivered_energy_j = ? WHERE id = ?", (_json(booked), session_id))
            if new == State.EMITTING:
                db.execute("UPDATE sessions SET started_wall = ? WHERE id = ? AND started_wall IS NULL", (now, session_id))
            if new in TERMINAL_STATES:
                db.execute("UPDATE sessions SET ended_wall = ?, end_reason = ? WHERE id = ?", (now, reason, session_id))
            self._insert_event(db, "state", reason, session_id=session_id, details=details, state_from=current, state_to=new)

    def record_event(
        self,
        kind: str,
        message: str,
        *,
        session_id: int | None = None,
        details: dict[str, Any] | None = None,
        device_time_ms: int | None = None,
    ) -> int:
        """Append an event; it is on disk when this returns. Returns its id."""
        with self._write("recording an event") as db:
            if session_id is not None:
                self._state_of(db, session_id)
            return self._insert_event(db, kind, message, session_id=session_id, details=details, device_time_ms=device_time_ms)

    def record_sample(self, session_id: int, sample: Sample) -> None:
        """Append a sample; committed with the next event, or here once the last commit is a second old."""
        setpoint = _vector(sample.setpoint_mw, CHANNELS, "setpoint_mw")
        output = _vector(sample.output_mw, CHANNELS, "output_mw")
        energy = _vector(sample.energy_j, CHANNELS, "energy_j")
        temperature = _vector(sample.temperature_c, PROBES, "temperature_c", optional=True)
        cem43 = _vector(sample.cem43_min, PROBES, "cem43_min", optional=True)
        if isinstance(sample.illumination, bool) or not isinstance(sample.illumination, int) or sample.illumination < 0:
            raise ValueError(f"journal: illumination must be an integer >= 0, got {sample.illumination!r}")
        row = self._db.execute("SELECT delivered_energy_j FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise LookupError(f"journal: no session {session_id}")
        # Delivered energy only grows: the session keeps the largest figure seen per channel.
        delivered = [max(float(a), float(b)) for a, b in zip(json.loads(row[0]), energy, strict=True)]
        try:
            if not self._db.in_transaction:
                self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO samples (session_id, t_wall, t_mono, device_time_ms, illumination, setpoint_mw, output_mw, energy_j, temperature_c, cem43_min)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session_id,
                    self._wall(),
                    self._mono(),
                    sample.device_time_ms,
                    sample.illumination,
                    _json(setpoint),
                    _json(output),
                    _json(energy),
                    _json(temperature),
                    _json(cem43),
                ),
            )
            self._db.execute("UPDATE sessions SET delivered_energy_j = ? WHERE id = ?", (_json(delivered), session_id))
        except sqlite3.Error as exc:
            self._rollback()
            raise JournalError(f"{self.path}: recording a sample failed: {exc}") from None
        if self._mono() - self._last_commit_mono >= SAMPLE_COMMIT_PERIOD_S:
            self.flush()

    def recover(self, ls4_energy_j: Sequence[float]) -> list[RecoveredSession]:
        """At start: mark every open session INTERRUPTED; nothing resumes by itself.

        `ls4_energy_j` is the LS-4's non-volatile energy counters per channel, in J, read at start.
        The counters run since the LS-4's last ENERGY_RESET, so a session's share of channel c is
        `counter[c] - baseline[c]`, the baseline being the counters stored when the session
        started (`create_session` / `set_energy_baseline`). The session's delivered energy becomes,
        per channel, max(journal's figure, counter share). Where the share cannot be computed the
        figure errs high, never low (an energy budget must not be overrun by a bookkeeping gap):
          * no baseline stored: the whole counter is the share;
          * counter below its baseline (the counters were reset, or the LS-4 swapped, during the
            session): the counter is taken as a lower bound of the share, and it is flagged.
        Each session is committed with a "recovery" event before the next. A second call finds no
        open session and does nothing.
        """
        counters = _vector(ls4_energy_j, CHANNELS, "ls4_energy_j")
        if any(c < 0 for c in counters):
            raise ValueError(f"journal: ls4_energy_j must not be negative, got {counters}")
        recovered = []
        for record in self.open_sessions():
            journal_e = record.delivered_energy_j
            baseline = record.energy_baseline_j
            reset_suspected = tuple(baseline is not None and c < b for c, b in zip(counters, baseline or counters, strict=True))
            if baseline is None:
                share = tuple(float(c) for c in counters)
            else:
                share = tuple(float(c) if r else float(c) - b for c, b, r in zip(counters, baseline, reset_suspected, strict=True))
            delivered = tuple(max(j, s) for j, s in zip(journal_e, share, strict=True))
            message = "open when laserd stopped; marked INTERRUPTED, nothing resumes by itself"
            with self._write("recovering a session") as db:
                db.execute(
                    "UPDATE sessions SET state = ?, interrupted = 1, ended_wall = ?, end_reason = ?, delivered_energy_j = ?,"
                    " recovery_journal_energy_j = ?, recovery_counter_energy_j = ? WHERE id = ?",
                    (str(State.INTERRUPTED), self._wall(), message, _json(delivered), _json(journal_e), _json(share), record.id),
                )
                self._insert_event(
                    db,
                    "recovery",
                    message,
                    session_id=record.id,
                    state_from=record.state,
                    state_to=State.INTERRUPTED,
                    details={
                        "journal_energy_j": journal_e,
                        "ls4_counter_j": counters,
                        "energy_baseline_j": baseline,
                        "counter_share_j": share,
                        "delivered_energy_j": delivered,
                        "counter_reset_suspected": reset_suspected,
                    },
                )
            recovered.append(
                RecoveredSession(
                    session_id=record.id,
                    state_before=record.state,
                    journal_energy_j=journal_e,
                    counter_energy_j=share,
                    delivered_energy_j=delivered,
                    baseline_known=baseline is not None,
                    counter_reset_suspected=reset_suspected,
                )
            )
        return recovered

    # ----- reads -----

    _SESSION_COLUMNS: Final = (
        "id, created_wall, plan_text, plan_sha256, patient_id, operator, state, started_wall, ended_wall, end_reason,"
        " energy_baseline_j, delivered_energy_j, interrupted, recovery_journal_energy_j, recovery_counter_energy_j"
    )

    @staticmethod
    def _open_query(columns: str) -> str:
        states = ", ".join(f"'{s}'" for s in sorted(OPEN_STATES))
        return f"SELECT {columns} FROM sessions WHERE state IN ({states}) ORDER BY id"

    @staticmethod
    def _session_from_row(row: Sequence[Any]) -> SessionRecord:
        return SessionRecord(
            id=row[0],
            created_wall=row[1],
            plan_text=row[2],
            plan_sha256=row[3],
            patient_id=row[4],
            operator=row[5],
            state=State(row[6]),
            started_wall=row[7],
            ended_wall=row[8],
            end_reason=row[9],
            energy_baseline_j=_floats(row[10]),
            delivered_energy_j=_floats(row[11]) or (),
            interrupted=bool(row[12]),
            recovery_journal_energy_j=_floats(row[13]),
            recovery_counter_energy_j=_floats(row[14]),
        )

    def _state_of(self, db: sqlite3.Connection, session_id: int) -> State:
        row = db.execute("SELECT state FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise LookupError(f"journal: no session {session_id}")
        return State(row[0])

    def sessions(self) -> list[SessionRecord]:
        return [self._session_from_row(r) for r in self._db.execute(f"SELECT {self._SESSION_COLUMNS} FROM sessions ORDER BY id")]

    def open_sessions(self) -> list[SessionRecord]:
        """Sessions not yet in a terminal state (at most one while the daemon runs)."""
        return [self._session_from_row(r) for r in self._db.execute(self._open_query(self._SESSION_COLUMNS))]

    def session(self, session_id: int) -> SessionDetail:
        row = self._db.execute(f"SELECT {self._SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise LookupError(f"journal: no session {session_id}")
        count = self._db.execute("SELECT COUNT(*) FROM samples WHERE session_id = ?", (session_id,)).fetchone()[0]
        return SessionDetail(session=self._session_from_row(row), events=tuple(self.events(session_id=session_id)), sample_count=count)

    def delivered_energy_j(self, session_id: int) -> tuple[float, ...]:
        """The session's delivered energy per LS-4 channel, J (after recovery: the larger of journal and counters)."""
        row = self._db.execute("SELECT delivered_energy_j FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise LookupError(f"journal: no session {session_id}")
        return _floats(row[0]) or ()

    def events(self, *, session_id: int | None = None) -> list[EventRecord]:
        """Events of one session, or all events (session_id None), in order."""
        query = _SELECT_EVENTS
        rows = self._db.execute(query + (" WHERE session_id = ? ORDER BY id" if session_id is not None else " ORDER BY id"), (() if session_id is None else (session_id,)))
        return [self._event_from_row(r) for r in rows]

    def daemon_events_before(self, event_id: int, kinds: Sequence[str], *, limit: int = 10) -> list[EventRecord]:
        """The latest events of `kinds` that belong to no session and come before event `event_id`,
        newest first (e.g. the device identification of the daemon start a session ran under)."""
        marks = ", ".join("?" for _ in kinds)
        rows = self._db.execute(
            _SELECT_EVENTS
            + f" WHERE id < ? AND session_id IS NULL AND kind IN ({marks}) ORDER BY id DESC LIMIT ?",
            (event_id, *kinds, limit),
        )
        return [self._event_from_row(r) for r in rows]

    @staticmethod
    def _event_from_row(r: Sequence[Any]) -> EventRecord:
        return EventRecord(
            id=r[0],
            session_id=r[1],
            t_wall=r[2],
            t_mono=r[3],
            device_time_ms=r[4],
            kind=r[5],
            state_from=None if r[6] is None else State(r[6]),
            state_to=None if r[7] is None else State(r[7]),
            message=r[8],
            details=None if r[9] is None else json.loads(r[9]),
        )

    def samples(self, session_id: int, *, offset: int = 0, limit: int | None = None) -> list[RecordedSample]:
        """The session's samples in order; `offset`/`limit` read a page (samples are append-only, so
        pages are stable while the session grows)."""
        rows = self._db.execute(
            "SELECT t_wall, t_mono, device_time_ms, illumination, setpoint_mw, output_mw, energy_j, temperature_c, cem43_min"
            " FROM samples WHERE session_id = ? ORDER BY id LIMIT ? OFFSET ?",
            (session_id, -1 if limit is None else max(0, int(limit)), max(0, int(offset))),
        )
        return [
            RecordedSample(
                session_id=session_id,
                t_wall=r[0],
                t_mono=r[1],
                sample=Sample(
                    illumination=r[3],
                    setpoint_mw=tuple(json.loads(r[4])),
                    output_mw=tuple(json.loads(r[5])),
                    energy_j=tuple(json.loads(r[6])),
                    temperature_c=tuple(json.loads(r[7])),
                    cem43_min=tuple(json.loads(r[8])),
                    device_time_ms=r[2],
                ),
            )
            for r in rows
        ]

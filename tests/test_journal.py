"""The journal on real SQLite files: WAL, durable events, sample batching, recovery, kill safety."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from controller.config import load_config
from controller.journal import Journal, JournalError, Sample
from controller.plan import Plan, load_plan
from controller.session_states import State, TransitionError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def plan() -> Plan:
    limits = load_config(REPO / "examples" / "laserd.toml").limits
    return load_plan(REPO / "examples" / "plan.toml", limits=limits)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def sample(energy: list[float], *, illumination: int = 0) -> Sample:
    return Sample(
        illumination=illumination,
        setpoint_mw=[8000, 5000, 0, 0],
        output_mw=[7990, 5010, 0, 0],
        energy_j=energy,
        temperature_c=[61.5, 55.0, 41.2, 38.0, None, None, None, None],
        cem43_min=[900.0, 300.0, 12.5, 0.4, None, None, None, None],
        device_time_ms=123456,
    )


def other_connection(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path)


def test_new_journal_is_wal_full_sync_and_private(tmp_path: Path) -> None:
    path = tmp_path / "run" / "journal.sqlite"  # the directory is created
    with Journal(path) as j:
        assert j._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert j._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert other_connection(path).execute("SELECT version FROM schema_version").fetchone()[0] == 1
    assert path.stat().st_mode & 0o777 == 0o640


def test_events_are_durable_before_the_call_returns(tmp_path: Path, plan: Plan) -> None:
    path = tmp_path / "j.sqlite"
    j = Journal(path)
    sid = j.create_session(plan)
    j.record_event("interlock", "remote interlock opened", session_id=sid, details={"interlocks": 5, "t": math.nan}, device_time_ms=42)
    j.record_event("daemon", "a message outside any session")
    rows = other_connection(path).execute("SELECT session_id, kind, message, details, device_time_ms FROM events ORDER BY id").fetchall()
    assert rows[0][1] == "session_created"
    assert rows[1][:3] == (sid, "interlock", "remote interlock opened") and rows[1][4] == 42
    assert '"t":"nan"' in rows[1][3]  # non-finite numbers are kept, as text, never fail a record
    assert rows[2][:2] == (None, "daemon")
    j.close()


def test_session_keeps_the_plan_text_exactly(tmp_path: Path, plan: Plan) -> None:
    with Journal(tmp_path / "j.sqlite") as j:
        sid = j.create_session(plan)
        record = j.session(sid).session
        assert record.plan_text == plan.text and record.plan_sha256 == plan.sha256
        assert (record.patient_id, record.operator, record.state) == ("SIM-0001", "demo", State.LOADED)


def test_state_changes_follow_the_table_and_stamp_start_and_end(tmp_path: Path, plan: Plan) -> None:
    clock = Clock()
    with Journal(tmp_path / "j.sqlite", wall=clock) as j:
        sid = j.create_session(plan)
        for state in (State.ARMED, State.EMITTING, State.PAUSED, State.EMITTING):
            clock.t += 1
            j.set_state(sid, state, f"to {state}")
        with pytest.raises(TransitionError, match=f"session {sid} cannot go from EMITTING to LOADED"):
            j.set_state(sid, State.LOADED, "not allowed")
        clock.t += 1
        j.set_state(sid, State.COMPLETE, "endpoint reached", details={"margin_cem43_min": [251.0]})
        detail = j.session(sid)
        assert (detail.session.started_wall, detail.session.ended_wall) == (1002.0, 1005.0)
        assert detail.session.end_reason == "endpoint reached"
        changes = [(e.state_from, e.state_to) for e in detail.events]
        assert changes[0] == (State.IDLE, State.LOADED) and changes[-1] == (State.EMITTING, State.COMPLETE)
        assert len(detail.events) == 6  # the refused change left no trace
        with pytest.raises(TransitionError):
            j.set_state(sid, State.ARMED, "a terminal session stays ended")
        with pytest.raises(LookupError):
            j.set_state(sid + 1, State.ARMED, "no such session")


def test_one_open_session_at_a_time(tmp_path: Path, plan: Plan) -> None:
    with Journal(tmp_path / "j.sqlite") as j:
        sid = j.create_session(plan)
        with pytest.raises(ValueError, match=f"session {sid} is still open"):
            j.create_session(plan)
        j.set_state(sid, State.ABORTED, "operator unloaded the plan")
        assert j.create_session(plan) == sid + 1
        assert [s.state for s in j.sessions()] == [State.ABORTED, State.LOADED]
        assert [s.id for s in j.open_sessions()] == [sid + 1]


def test_samples_are_batched_but_committed_within_a_second(tmp_path: Path, plan: Plan) -> None:
    path = tmp_path / "j.sqlite"
    mono = Clock()
    j = Journal(path, monotonic=mono)
    sid = j.create_session(plan)
    reader = other_connection(path)

    def committed() -> int:
        return reader.execute("SELECT COUNT(*) FROM samples").fetchone()[0]

    mono.t += 0.3
    j.record_sample(sid, sample([1.0, 0.5, 0, 0]))
    assert committed() == 0  # pending: the last commit is 0.3 s old
    mono.t += 0.7
    j.record_sample(sid, sample([2.0, 1.0, 0, 0]))
    assert committed() == 2
    mono.t += 0.2
    j.record_sample(sid, sample([3.0, 1.5, 0, 0]))
    j.flush()  # the daemon's 1 Hz tick
    assert committed() == 3
    mono.t += 0.1
    j.record_sample(sid, sample([4.0, 2.0, 0, 0]))
    with pytest.raises(TransitionError):
        j.set_state(sid, State.COMPLETE, "refused: LOADED cannot complete")
    assert committed() == 4  # a refused write never takes pending samples down with it
    j.close()
    back = Journal(path).samples(sid)
    assert [s.sample.energy_j for s in back] == [(1.0, 0.5, 0, 0), (2.0, 1.0, 0, 0), (3.0, 1.5, 0, 0), (4.0, 2.0, 0, 0)]
    assert back[0].sample.temperature_c[4] is None and back[0].sample.device_time_ms == 123456


def test_delivered_energy_is_the_largest_sample_figure(tmp_path: Path, plan: Plan) -> None:
    with Journal(tmp_path / "j.sqlite") as j:
        sid = j.create_session(plan)
        j.record_sample(sid, sample([10.0, 4.0, 0, 0]))
        j.record_sample(sid, sample([12.0, 3.0, 0, 0]))  # a figure going down does not lower it
        assert j.delivered_energy_j(sid) == (12.0, 4.0, 0.0, 0.0)
        assert j.session(sid).sample_count == 2


def test_bad_samples_are_refused(tmp_path: Path, plan: Plan) -> None:
    with Journal(tmp_path / "j.sqlite") as j:
        sid = j.create_session(plan)
        with pytest.raises(ValueError, match="energy_j needs 4 values"):
            j.record_sample(sid, sample([1.0, 2.0]))
        with pytest.raises(ValueError, match="non-number"):
            j.record_sample(sid, sample([1.0, math.inf, 0, 0]))
        with pytest.raises(ValueError, match="illumination"):
            j.record_sample(sid, sample([1.0, 0, 0, 0], illumination=-1))
        with pytest.raises(LookupError):
            j.record_sample(sid + 7, sample([1.0, 0, 0, 0]))


def test_the_state_change_that_ends_a_session_books_its_final_energy(tmp_path: Path, plan: Plan) -> None:
    with Journal(tmp_path / "j.sqlite") as j:
        sid = j.create_session(plan)
        j.set_state(sid, State.ARMED, "armed")
        j.set_state(sid, State.EMITTING, "footswitch")
        j.record_sample(sid, sample([40.0, 20.0, 0.0, 0.0]))  # the last 1 Hz sample
        with pytest.raises(ValueError, match="delivered_energy_j needs 4 values"):
            j.set_state(sid, State.FAULTED, "safety trip", delivered_energy_j=[41.0])
        assert j.session(sid).session.state == State.EMITTING
        j.set_state(sid, State.FAULTED, "safety trip", delivered_energy_j=[42.5, 19.0, 0.0, 0.0])
        assert j.delivered_energy_j(sid) == (42.5, 20.0, 0.0, 0.0)  # per channel, never less than booked
        assert j.session(sid).session.state == State.FAULTED


def test_a_session_that_ends_books_the_safety_layers_figure(tmp_path: Path, plan: Plan) -> None:
    """TreatmentSession.apply gives the supervisor's books with the terminal state change: the
    energy of the last fraction of a second, after the last 1 Hz sample, is booked too."""
    from controller.session import TreatmentSession
    from controller.session_states import Event

    class Books:  # the part of SafetySupervisor the session reads here
        delivered_j = (41.25, 0.0, 3.5, 0.0)
        fibres_stopped: frozenset[int] = frozenset()

    with Journal(tmp_path / "j.sqlite") as j:
        sid = j.create_session(plan)
        session = TreatmentSession(session_id=sid, plan=plan, journal=j, safety=Books())  # type: ignore[arg-type]
        session.apply(Event.ARM, "armed")
        session.apply(Event.FOOTSWITCH_PRESSED, "footswitch")
        j.record_sample(sid, sample([40.0, 0.0, 3.0, 0.0]))
        session.apply(Event.FOOTSWITCH_RELEASED, "footswitch released")
        assert j.delivered_energy_j(sid) == (40.0, 0.0, 3.0, 0.0)  # not an end: the samples' figure
        session.apply(Event.ABORT, "operator stop")
        assert j.delivered_energy_j(sid) == (41.25, 0.0, 3.5, 0.0)


def test_recovery_takes_the_larger_of_journal_and_counter_share(tmp_path: Path, plan: Plan) -> None:
    path = tmp_path / "j.sqlite"
    with Journal(path) as j:
        sid = j.create_session(plan, energy_baseline_j=[500.0, 100.0, 7.0, 0.0])
        j.set_state(sid, State.ARMED, "armed")
        j.set_state(sid, State.EMITTING, "footswitch")
        j.record_sample(sid, sample([40.0, 20.0, 0.0, 0.0]))
    # the daemon died; the LS-4 kept counting for a moment after the last committed sample
    with Journal(path) as j:
        (rec,) = j.recover([545.0, 110.0, 3.0, 0.0])
        assert rec.session_id == sid and rec.state_before == State.EMITTING
        assert rec.journal_energy_j == (40.0, 20.0, 0.0, 0.0)
        assert rec.counter_energy_j == (45.0, 10.0, 3.0, 0.0)  # channel 2: 3 < baseline 7, counter taken as is
        assert rec.counter_reset_suspected == (False, False, True, False)
        assert rec.delivered_energy_j == (45.0, 20.0, 3.0, 0.0)
        record = j.session(sid).session
        assert record.state == State.INTERRUPTED and record.interrupted and record.ended_wall is not None
        assert j.delivered_energy_j(sid) == (45.0, 20.0, 3.0, 0.0)
        assert (record.recovery_journal_energy_j, record.recovery_counter_energy_j) == (rec.journal_energy_j, rec.counter_energy_j)
        events = j.session(sid).events
        assert events[-1].kind == "recovery" and events[-1].state_to == State.INTERRUPTED
        assert events[-1].details is not None and events[-1].details["counter_reset_suspected"] == [False, False, True, False]
        count = len(j.events())
        assert j.recover([9999.0, 9999.0, 9999.0, 9999.0]) == []  # a second recover does nothing
        assert len(j.events()) == count and j.delivered_energy_j(sid) == (45.0, 20.0, 3.0, 0.0)
        with pytest.raises(TransitionError):
            j.set_state(sid, State.EMITTING, "nothing resumes")


def test_recovery_without_a_baseline_counts_the_whole_counter(tmp_path: Path, plan: Plan) -> None:
    with Journal(tmp_path / "j.sqlite") as j:
        sid = j.create_session(plan)
        (rec,) = j.recover([30.0, 0.0, 0.0, 0.0])
        assert not rec.baseline_known and rec.delivered_energy_j == (30.0, 0.0, 0.0, 0.0)
        assert j.create_session(plan) == sid + 1  # the interrupted one no longer blocks a new session
        with pytest.raises(ValueError, match="ls4_energy_j needs 4"):
            j.recover([1.0])


def test_baseline_can_be_set_after_an_energy_reset(tmp_path: Path, plan: Plan) -> None:
    with Journal(tmp_path / "j.sqlite") as j:
        sid = j.create_session(plan, energy_baseline_j=[900.0, 900.0, 900.0, 900.0])
        j.set_energy_baseline(sid, [0.0, 0.0, 0.0, 0.0], reason="ENERGY_RESET before arming")
        (rec,) = j.recover([5.0, 0.0, 0.0, 0.0])
        assert rec.counter_energy_j == (5.0, 0.0, 0.0, 0.0) and not any(rec.counter_reset_suspected)


def test_records_are_append_only(tmp_path: Path, plan: Plan) -> None:
    path = tmp_path / "j.sqlite"
    with Journal(path) as j:
        sid = j.create_session(plan)
        j.record_sample(sid, sample([1.0, 0, 0, 0]))
    db = other_connection(path)
    for statement in ("UPDATE events SET message = 'x'", "DELETE FROM events", "DELETE FROM samples", "DELETE FROM sessions"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only|never deleted"):
            db.execute(statement)


def test_refuses_what_is_not_its_journal(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(JournalError, match=f"^journal: {garbage}: cannot open"):
        Journal(garbage)
    foreign = tmp_path / "foreign.sqlite"
    sqlite3.connect(foreign).execute("CREATE TABLE t (x)")
    with pytest.raises(JournalError, match="not a laserhost journal"):
        Journal(foreign)
    future = tmp_path / "future.sqlite"
    Journal(future).close()
    db = sqlite3.connect(future)
    db.execute("UPDATE schema_version SET version = 99")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="schema version 99, this laserd knows 1"):
        Journal(future)


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from controller.config import load_config
    from controller.journal import Journal, Sample
    from controller.plan import load_plan
    from controller.session_states import State

    repo, path = Path(sys.argv[1]), sys.argv[2]
    plan = load_plan(repo / "examples" / "plan.toml", limits=load_config(repo / "examples" / "laserd.toml").limits)
    j = Journal(path)
    sid = j.create_session(plan, energy_baseline_j=[0.0, 0.0, 0.0, 0.0])
    j.set_state(sid, State.ARMED, "armed")
    j.set_state(sid, State.EMITTING, "footswitch")
    print("session", sid, flush=True)
    i = 0
    while True:
        j.record_sample(sid, Sample(0, [8000, 0, 0, 0], [8000, 0, 0, 0], [float(i), 0, 0, 0], [50.0] * 8, [1.0] * 8))
        j.record_event("tick", f"tick {i}", session_id=sid)
        print("tick", i, flush=True)
        i += 1
    """
)


def test_a_killed_writer_loses_nothing_it_reported_written(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(REPO), str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    sid = int(proc.stdout.readline().split()[1])
    last = -1
    while last < 25:
        last = int(proc.stdout.readline().split()[1])
    os.kill(proc.pid, signal.SIGKILL)  # mid-write, most likely
    proc.wait(timeout=10)
    proc.stdout.close()
    with Journal(path) as j:
        ticks = [e for e in j.events(session_id=sid) if e.kind == "tick"]
        assert len(ticks) >= last + 1  # every event whose call returned is there
        assert [e.message for e in ticks[: last + 1]] == [f"tick {i}" for i in range(last + 1)]
        assert j.session(sid).sample_count >= last + 1  # each event committed the sample before it
        (rec,) = j.recover([float(last + 5), 0.0, 0.0, 0.0])
        assert rec.state_before == State.EMITTING
        assert rec.delivered_energy_j[0] == max(float(last + 5), rec.journal_energy_j[0])
        assert j.session(sid).session.state == State.INTERRUPTED

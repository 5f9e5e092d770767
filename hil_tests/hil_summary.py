"""The HIL run's summary: one row per scenario test, printed at the end of the run and written as
JSON (hil_tests/results/summary.json, not versioned) for the report.

A test records its row through the `hil_row` fixture (hil_tests/conftest.py) and fills in what it
measured; the outcome is pytest's. Columns:

* scenario: what was treated or injected (`single_fibre FIXED_POWER`, `fault estop`, ...);
* transport and env: which target (docs/hil.md);
* outcome: passed, failed, skipped, xfailed (a known bug, the reason says which) or error;
* end: the session's end state as the journal has it;
* time to safe: device seconds from the trigger (the fault injected, the endpoint decided, the
  operator's stop, the daemon killed) to emission off, as the simulator saw the light go out;
* energy error: the largest difference, over the channels, between the energy the journal booked
  and what really reached the tissue (the simulator's ground truth), J.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
SUMMARY_JSON: Final = RESULTS_DIR / "summary.json"
SUMMARY_VAR: Final = "LASERHOST_HIL_SUMMARY"  # another path for the JSON (a nested run in a test)
COLUMNS: Final = ("test", "scenario", "transport", "outcome", "end", "time to safe s", "energy err J")


@dataclass
class Row:
    nodeid: str
    scenario: str = "-"
    transport: str = "-"
    env: str = "-"
    outcome: str = "not run"
    reason: str | None = None  # skip / xfail reason, or the first line of a failure
    end_state: str | None = None
    time_to_safe_s: float | None = None
    energy_error_j: float | None = None
    wall_s: float | None = None
    note: str | None = None  # one line printed under the table (the soak's numbers)
    metrics: dict[str, Any] = field(default_factory=dict)  # anything else the test measured (soak numbers...)

    @property
    def test(self) -> str:
        """The test's name without the module path: short enough for a table."""
        return self.nodeid.split("::", 1)[-1]

    def set(self, **values: Any) -> Row:
        for key, value in values.items():
            if not hasattr(self, key):
                raise AttributeError(f"hil row has no column {key!r}")
            setattr(self, key, value)
        return self

    def on(self, target: Any) -> Row:
        """Transport and env from a hil_env.Target."""
        self.transport, self.env = target.transport, target.env.name
        return self

    def energy_error(self, journal_j: list[float], truth_j: list[float], channels: list[int] | None = None) -> float:
        chans = range(min(len(journal_j), len(truth_j))) if channels is None else channels
        error = max((abs(journal_j[c] - truth_j[c]) for c in chans), default=0.0)
        self.energy_error_j = error
        return error


def _num(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def table(rows: list[Row]) -> list[str]:
    cells = [
        (r.test, r.scenario, r.transport, r.outcome, r.end_state or "-", _num(r.time_to_safe_s, 3), _num(r.energy_error_j, 3))
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(COLUMNS)]
    numeric = {5, 6}

    def line(values: tuple[str, ...]) -> str:
        return "  ".join(v.rjust(w) if i in numeric else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    out = [line(COLUMNS), line(tuple("-" * w for w in widths))]
    out += [line(c) for c in cells]
    for r in rows:
        if r.outcome in ("failed", "error", "xfailed") and r.reason:
            out.append(f"{r.outcome}: {r.test}: {r.reason}")
        if r.note:
            out.append(f"{r.test}: {r.note}")
    return out


def write_json(rows: list[Row], *, envs: list[Any], path: Path | None = None) -> Path:
    path = path or Path(os.environ.get(SUMMARY_VAR) or SUMMARY_JSON)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "written_unix": time.time(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "envs": [{"name": e.name, "path": str(e.path), "transport": e.bus.transport, "simulator": e.simulator is not None, "time_scale": e.time_scale} for e in envs],
        "rows": [asdict(r) | {"test": r.test} for r in rows],
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path

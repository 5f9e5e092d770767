"""The longest control cycle around a tune's end (issue #8): wall time of every
`FibreController.step()` and `TreatmentSession.propose()` (step + the tune's journal record) in the
in-process closed loop (tests/control_rig.py) on vessel_protected_4fibres, four SHAPED fibres and
eight probes: the whole auto-tune, the fit, then RUN_AFTER_S of planning with online refits.

The rig waits for the controller's fits before each cycle (a frozen clock: they take no device
time there); this bench does not, so the fits overlap the cycles as in laserd.

    .venv/bin/python bench/bench_tune_end.py [seconds after the install, default 45]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from control_rig import Rig  # noqa: E402
from controller.control import FibreController  # noqa: E402
from controller.session import TreatmentSession  # noqa: E402
from test_control_session import shaped_plan  # noqa: E402


def main(argv: list[str]) -> int:
    run_after_s = float(argv[0]) if argv else 45.0
    steps: list[tuple[float, float, str]] = []  # (device time, wall s, phase after the step)
    proposes: list[float] = []
    step, propose = FibreController.step, TreatmentSession.propose

    def timed_step(self: FibreController, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = step(self, **kw)
        steps.append((kw["now_s"], time.perf_counter() - t0, self.phase))
        return out

    def timed_propose(self: TreatmentSession, *args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = propose(self, *args, **kw)
        proposes.append(time.perf_counter() - t0)
        return out

    FibreController.step = timed_step  # type: ignore[method-assign]
    TreatmentSession.propose = timed_propose  # type: ignore[method-assign]
    FibreController.wait_fits = lambda self, timeout=None: None  # type: ignore[method-assign]
    rig = Rig("vessel_protected_4fibres", shaped_plan())
    try:
        session = rig.load()
        rig.arm_and_press()
        while not (session.controller is not None and session.controller.phase == "closed_loop"):
            rig.cycle()
            assert session.open, session.end_reason
        installed = len(steps) - 1
        rig.run(run_after_s)
        ended = next(i for i, s in enumerate(steps) if s[2] not in ("waiting", "tuning"))
        step_ms = sorted((s[1] * 1e3 for s in steps), reverse=True)
        propose_ms = sorted((p * 1e3 for p in proposes), reverse=True)
        print(f"{len(steps)} cycles; the tune ended at {steps[ended][0]:.1f} s (cycle {ended}), model installed {installed - ended} cycles later")
        print(f"step(): max {step_ms[0]:.1f} ms (then {', '.join(f'{v:.1f}' for v in step_ms[1:5])}), median {step_ms[len(step_ms) // 2]:.2f} ms")
        print(f"  the cycle that ended the tune {steps[ended][1] * 1e3:.1f} ms, the one that installed the model {steps[installed][1] * 1e3:.1f} ms")
        print(f"propose(): max {propose_ms[0]:.1f} ms (then {', '.join(f'{v:.1f}' for v in propose_ms[1:5])})")
        assert session.controller is not None and session.controller.model is not None
        print(f"model: {session.controller.model.source}; trips: {[f.rule for f in rig.trips]}")
    finally:
        rig.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

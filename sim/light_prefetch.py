"""`laser-sim serve`: place the fibres' light after a pull-back off the event loop (a stopgap).

After a pull-back the tissue model re-places each fibre's light field (its diffusion basis on
the whole grid) when the fibre next shines: ~40-100 ms of CPU per fibre on the 64 mm grid, on
the simulator's event loop. Nothing answers the host meanwhile while device time runs on: with
four fibres at any time scale >= 1, laserd's Modbus requests time out for longer than its 250 ms
link-loss window and the session trips `link_lost` at the first footswitch press after a
pull-back (hil_tests/test_scenarios.py runs its placement protocol at x2 with two fibres for
this reason; `make demo` hit it with four).

This computes the same placement in a worker thread once the fibres have stopped moving (numpy
releases the GIL: the event loop keeps answering, gaps of a few ms), on a shallow copy of each
fibre, and installs the result on the event loop only if that fibre is still stale, has not
moved and has not been placed since. If the fibre shines before the worker is done, the model
places it itself, as before. It uses only what `sim.tissue.model` shows: `fibres`,
`pullback_remaining_mm`, a fibre's `light_stale`, `spec` and `place_light(model)`.

The proper home of this is the tissue model itself (start the placement when `pull_back` is
asked, install it when the motion ends); this module can go once it does.
"""

from __future__ import annotations

import copy
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger("laser-sim")

_Placed = list[tuple[Any, dict[str, Any], Any]]  # (fibre, its attributes before, the placed copy)


class LightPrefetch:
    def __init__(self, model: Any) -> None:
        self.model = model
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="light-prefetch")
        self._job: Future[_Placed] | None = None
        self.installed = 0  # fibres placed off the event loop (tests)

    @staticmethod
    def applies(model: Any) -> bool:
        fibres = getattr(model, "fibres", None)
        return (
            fibres is not None
            and hasattr(model, "pullback_remaining_mm")
            and all(hasattr(f, "light_stale") and hasattr(f, "place_light") and hasattr(f, "spec") for f in fibres)
        )

    def poll(self) -> None:
        """On the event loop, after every sync: install a finished placement, or start one."""
        if self._job is not None:
            if not self._job.done():
                return
            job, self._job = self._job, None
            try:
                self._install(job.result())
            except Exception:  # noqa: BLE001 - the model places the light itself at the next shine
                log.exception("light prefetch failed")
            return
        if self.model.pullback_remaining_mm > 0.0:
            return  # still moving: the place is not final
        stale = [f for f in self.model.fibres if f.light_stale]
        if stale:
            work = [(f, dict(vars(f)), copy.copy(f)) for f in stale]
            self._job = self._pool.submit(self._place, work)

    def _place(self, work: _Placed) -> _Placed:
        for _, _, twin in work:
            twin.place_light(self.model)  # writes the twin's attributes only; reads grid and props
        return work

    def _install(self, work: _Placed) -> None:
        for fibre, before, twin in work:
            now = vars(fibre)
            placed = {k: v for k, v in vars(twin).items() if before.get(k) is not v}
            if not fibre.light_stale or self.model.pullback_remaining_mm > 0.0:
                continue  # placed by the model meanwhile, or moving again
            if any(now.get(k) is not before.get(k) for k in (*placed, "spec")):
                continue  # changed since the copy: leave it to the model
            now.update(placed)
            self.installed += 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

"""laser-sim ablate: run a tissue scenario open-loop at fixed powers and print the ablation metrics.

    laser-sim ablate --scenario F --power CH=W [--power CH=W ...] --seconds S [--json]
                     [--illuminations N --pullback-mm MM] [--cooldown S]
                     [--png PATH] [--grid-mm MM] [--threads N]

S is the time of each illumination; between illuminations every fibre is pulled back MM along
its axis (as clinicians do to lengthen the zone); --cooldown runs the tissue on with the light off.

F is a scenario file or the name of a shipped one (sim/scenarios/). CH is the LS-4 channel (0-3)
and W the optical power at its fibre's tip. Bad input: one line on stderr, exit 2. Runs that
take more than a second report progress on stderr; stdout carries only the result.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from .metrics import AblationResult
from .scenario import MAX_SPACING_MM, MAX_VOXELS, MIN_SPACING_MM, ScenarioError, load_scenario
from .run import check_powers, simulate

PROG = "laser-sim ablate"
PROGRESS_AFTER_S = 1.0
PROGRESS_EVERY_S = 1.0


class _BadInput(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _BadInput(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Run a tissue scenario open-loop at fixed powers; print the ablation metrics.")
    p.add_argument("--scenario", required=True, metavar="F", help="scenario TOML file, or the name of a shipped scenario")
    p.add_argument("--power", action="append", default=[], metavar="CH=W", help="optical power W (watts) at the tip of LS-4 channel CH (0-3); repeat per channel")
    p.add_argument("--seconds", required=True, type=float, metavar="S", help="how long to run")
    p.add_argument("--illuminations", type=int, default=1, metavar="N", help="fibre positions, each run for --seconds (default 1)")
    p.add_argument("--pullback-mm", type=float, default=0.0, metavar="MM", help="withdraw every fibre MM along its axis between illuminations")
    p.add_argument("--cooldown", type=float, default=0.0, metavar="S", help="then S seconds with the light off (the dose keeps growing)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--png", metavar="PATH", help="write an image of damage and temperature in the fibre plane")
    p.add_argument("--grid-mm", type=float, metavar="MM", help="override the scenario's voxel size")
    p.add_argument("--threads", type=int, metavar="N", help="kernel threads (default: all cores)")
    return p


def _parse_power(text: str) -> tuple[int, float]:
    ch_text, sep, w_text = text.partition("=")
    if not sep:
        raise _BadInput(f"--power {text}: expected CH=WATTS, e.g. 0=2.5")
    try:
        ch = int(ch_text)
    except ValueError:
        raise _BadInput(f"--power {text}: channel {ch_text!r} is not an integer") from None
    try:
        w = float(w_text)
    except ValueError:
        raise _BadInput(f"--power {text}: power {w_text!r} is not a number") from None
    if not math.isfinite(w):
        raise _BadInput(f"--power {text}: power must be finite")
    return ch, w


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except _BadInput as exc:
        return _fail(str(exc))
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    try:
        scenario = load_scenario(args.scenario)
        powers: dict[int, float] = {}
        for text in args.power:
            ch, w = _parse_power(text)
            if ch in powers:
                raise _BadInput(f"--power {text}: channel {ch} given twice")
            powers[ch] = w
        if not powers:
            raise _BadInput("--power: give at least one CH=WATTS")
        powers = check_powers(scenario, powers)
        if not math.isfinite(args.seconds) or args.seconds <= 0:
            raise _BadInput(f"--seconds: expected a positive number, got {args.seconds:g}")
        if args.grid_mm is not None:
            if not MIN_SPACING_MM <= args.grid_mm <= MAX_SPACING_MM:
                raise _BadInput(f"--grid-mm: expected {MIN_SPACING_MM:g} to {MAX_SPACING_MM:g}, got {args.grid_mm:g}")
            n = scenario.grid.grid(args.grid_mm).voxel_count
            if n > MAX_VOXELS:
                raise _BadInput(f"--grid-mm {args.grid_mm:g}: {n} voxels is more than {MAX_VOXELS}")
        if args.threads is not None and not 1 <= args.threads <= 64:
            raise _BadInput(f"--threads: expected 1 to 64, got {args.threads}")
        if args.png is not None:
            folder = os.path.dirname(os.path.abspath(args.png))
            if not os.path.isdir(folder):
                raise _BadInput(f"--png {args.png}: no such directory {folder}")
        for flag, value in (("--pullback-mm", args.pullback_mm), ("--cooldown", args.cooldown)):
            if not math.isfinite(value) or value < 0:
                raise _BadInput(f"{flag}: expected 0 or a positive number, got {value:g}")
        progress = _Progress(args.seconds * args.illuminations + args.cooldown, sys.stderr)
        model, result = simulate(
            scenario, powers, args.seconds, grid_mm=args.grid_mm, threads=args.threads, progress=progress,
            illuminations=args.illuminations, pullback_mm=args.pullback_mm, cooldown_s=args.cooldown,
        )  # fmt: skip
        progress.done()
    except (_BadInput, ScenarioError, ValueError) as exc:
        return _fail(str(exc))
    if args.png is not None:
        from .render import write_png

        try:
            write_png(model, args.png, result=result)
        except OSError as exc:
            return _fail(f"--png {args.png}: {exc.strerror or exc}")
    sys.stdout.write(result.to_json() + "\n" if args.json else _summary(result))
    return 0


def _fail(message: str) -> int:
    print(f"{PROG}: {message}".replace("\n", " "), file=sys.stderr)
    return 2


class _Progress:
    """Tissue time simulated so far, on stderr, once a run has taken more than a second."""

    def __init__(self, seconds: float, stream: TextIO) -> None:
        self.seconds = seconds
        self.stream = stream
        self.start = time.perf_counter()
        self.last = self.start
        self.shown = False
        self.tty = stream.isatty()

    def __call__(self, time_s: float) -> None:
        now = time.perf_counter()
        if now - self.start < PROGRESS_AFTER_S or now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        self.shown = True
        line = f"{PROG}: {time_s:.0f}/{self.seconds:g} s of tissue time ({100 * time_s / self.seconds:.0f} %), {now - self.start:.1f} s"
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.shown and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _summary(r: AblationResult) -> str:
    powers = ", ".join(f"ch{ch} {w:g} W" for ch, w in sorted(r.powers_w.items()))
    lines = [
        f"scenario {r.scenario}: {powers} for {r.seconds:g} s on a {r.grid_mm:g} mm grid {'x'.join(map(str, r.grid_shape))}",
        f"energy delivered      {r.energy_j:.0f} J",
        f"coagulated volume     {r.coagulated_volume_ml:.2f} ml",
        f"max tip temperature   {r.max_tip_temp_c:.1f} degC",
    ]
    for f in r.fibres:
        lines.append(
            f"fibre ch{f.channel}: along {f.along_mm:.1f} mm, across {f.across_mm:.1f} mm ({f.across_min_mm:.1f}-{f.across_max_mm:.1f}), "
            f"tip max {f.tip_max_temp_c:.1f} degC, char {f.char_fraction:.2f}"
        )
    if r.tumour is not None:
        lines.append(
            f"tumour r {r.tumour.radius_mm:g} mm + margin {r.tumour.margin_mm:g} mm: {100 * r.tumour.target_coagulated_fraction:.1f} % of "
            f"tumour+margin coagulated ({100 * r.tumour.tumour_coagulated_fraction:.1f} % of the tumour)"
        )
    for p in r.protected:
        t = "n/a" if p.max_temp_c is None else f"{p.max_temp_c:.1f} degC"
        c = "n/a" if p.max_cem43_min is None else f"{p.max_cem43_min:.3g} min"
        lines.append(f"protected {p.name}: max {t}, CEM43 {c}")
    for p in r.probes:
        lines.append(f"probe ch{p.channel} ({p.role}{', ' + p.name if p.name else ''}): final {p.final_temp_c:.1f} degC, max {p.max_temp_c:.1f} degC")
    eb = r.energy_balance
    lines.append(
        f"energy: in {eb.in_j:.0f} J = stored {eb.stored_j:.0f} + perfusion {eb.perfusion_j:.0f} + vessels {eb.vessels_j:.0f} "
        f"+ boundary {eb.boundary_j:.0f} + char loss {eb.char_loss_j:.0f} (residual {100 * eb.residual_fraction:.2g} %)"
    )
    if r.performance:
        lines.append(f"ran {r.wall_s:.2f} s: {r.performance['real_time_factor']:.0f}x real time, {r.performance['mvoxel_updates_per_s']:.0f} M voxel-updates/s")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

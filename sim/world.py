"""The simulated bench: an LS-4 and an FT-8 on one bus, the patient between them, and one device clock.

`sync()` brings every model to the clock's present in lockstep steps of 10 ms of device time.
`bench(words)` is the physical world's hand: the things the host can never do over Modbus.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from protocol import ft8 as FT8
from protocol import ls4 as LS4

from .clock import SimClock
from .ft8 import FT8Device, Health
from .link import LinkFaults
from .ls4 import DEFAULT_REBOOT_SILENT_S, UPDATE_PERIOD_S, Fibre, LS4Device
from .thermal import FirstOrderThermal, ThermalModel

MAX_CLOCK_STEP_MS = 24 * 3600 * 1000.0


class BenchError(ValueError):
    """A bench action that does not exist or has bad arguments (the message is one line)."""


class SimWorld:
    def __init__(self, *, clock: SimClock | None = None, thermal: ThermalModel | None = None, seed: int = 0) -> None:
        self.clock = clock or SimClock()
        self.thermal: ThermalModel = thermal or FirstOrderThermal()
        self.ls4 = LS4Device(seed=seed)
        self.ft8 = FT8Device(seed=seed + 1)
        self.link = LinkFaults()
        self.devices = {self.ls4.unit_id: self.ls4, self.ft8.unit_id: self.ft8}
        self.time_s = self.clock.now_s()
        self._thermal_dt_s = 0.0
        self._thermal_energy_j = [0.0] * LS4.CHANNEL_COUNT
        self.ft8.set_tissue_temperatures(self.thermal.probe_temperature_c())
        # ground truth for tests: when emission last ended, peak temperatures seen at probes
        self.emission_started_s: float | None = None
        self.emission_stopped_s: float | None = None
        self.heartbeat_age_at_stop_s: float | None = None
        self.max_probe_tissue_c: list[float | None] = list(self.thermal.probe_temperature_c())

    # --- time --------------------------------------------------------------------------

    def sync(self) -> None:
        """Advance every model to the clock's present."""
        target = self.clock.now_s()
        while target - self.time_s > 1e-9:
            dt = min(UPDATE_PERIOD_S, target - self.time_s)
            self._step(dt)
            self.time_s += dt

    def _step(self, dt_s: float) -> None:
        self.ls4.advance(dt_s)
        tip_w = self.ls4.tip_power_w()
        emitting = any(p > 0 for p in self.ls4.true_output_mw)
        if emitting and self.emission_started_s is None:
            self.emission_started_s, self.emission_stopped_s = self.time_s, None
        elif not emitting and self.emission_started_s is not None:
            self.emission_started_s, self.emission_stopped_s = None, self.time_s + dt_s
            # how long the host had been silent when the light went out (the watchdog bound)
            self.heartbeat_age_at_stop_s = self.ls4.heartbeat_age_s()
        for c, p in enumerate(tip_w):
            self._thermal_energy_j[c] += p * dt_s
        self._thermal_dt_s += dt_s
        if self._thermal_dt_s >= self.thermal.preferred_dt_s - 1e-9:
            mean_w = [e / self._thermal_dt_s for e in self._thermal_energy_j]
            self.thermal.step(self._thermal_dt_s, mean_w)
            self._thermal_dt_s = 0.0
            self._thermal_energy_j = [0.0] * LS4.CHANNEL_COUNT
            tissue = self.thermal.probe_temperature_c()
            self.ft8.set_tissue_temperatures(tissue)
            for i, t in enumerate(tissue):
                if t is not None:
                    best = self.max_probe_tissue_c[i]
                    self.max_probe_tissue_c[i] = t if best is None else max(best, t)
        self.ft8.advance(dt_s)

    # --- ground truth --------------------------------------------------------------------

    def truth(self) -> dict[str, Any]:
        """What really happened, which the host can only estimate: for tests and the fault campaign."""
        ls4, ft8 = self.ls4, self.ft8
        return {
            "time_s": round(self.time_s, 4),
            "clock_frozen": self.clock.frozen,
            "time_scale": self.clock.time_scale,
            "ls4": {
                "state": ls4.state.name,
                "fault": ls4.fault_code.name,
                "fault_channel": ls4.fault_channel,
                "true_output_mw": [round(p, 1) for p in ls4.true_output_mw],
                "true_tip_energy_j": [round(e, 4) for e in ls4.true_tip_energy_j],
                "counter_energy_j": [round(e / 1000.0, 4) for e in ls4.energy_mj],
                "diode_temp_c": [round(t, 2) for t in ls4.diode_temp_c],
                "inputs": {
                    "key_on": ls4.inputs.key_on,
                    "estop_pressed": ls4.inputs.estop_pressed,
                    "interlock_open": ls4.inputs.interlock_open,
                    "footswitch_pressed": ls4.inputs.footswitch_pressed,
                    "fibre": [f.value for f in ls4.inputs.fibre],
                    "cooling_ok": list(ls4.inputs.cooling_ok),
                    "emitter_drift": list(ls4.inputs.emitter_drift),
                    "monitor_error": list(ls4.inputs.monitor_error),
                    "selftest_failed": ls4.inputs.selftest_failed,
                },
            },
            "ft8": {
                "health": ft8.health.value,
                "sample_counter": ft8.sample_counter,
                "tissue_c": [None if t is None else round(t, 3) for t in (ft8.tissue_c(c) for c in range(FT8.CHANNEL_COUNT))],
                "max_tissue_c": [None if t is None else round(t, 3) for t in self.max_probe_tissue_c],
            },
            "tissue": self.thermal.truth() if hasattr(self.thermal, "truth") else None,
            "emission_started_s": self.emission_started_s,
            "emission_stopped_s": self.emission_stopped_s,
            "heartbeat_age_at_stop_s": None if self.heartbeat_age_at_stop_s is None else round(self.heartbeat_age_at_stop_s, 4),
            "link": {
                "delay_ms": self.link.delay_ms,
                "drop_next": self.link.drop_next,
                "corrupt_next": self.link.corrupt_next,
                "silent_until_s": self.link.silent_until_s,
                "dropped": self.link.dropped,
                "corrupted": self.link.corrupted,
            },
        }

    # --- the bench -------------------------------------------------------------------------

    def bench(self, words: Sequence[str]) -> dict[str, Any]:
        """Carry out one bench action (see BENCH_ACTIONS) and return the ground truth after it."""
        words = [str(w) for w in words]
        if not words:
            raise BenchError(f"no bench action given; actions: {', '.join(sorted(BENCH_ACTIONS))}")
        handler = BENCH_ACTIONS.get(words[0])
        if handler is None:
            raise BenchError(f"unknown bench action {words[0]!r}; actions: {', '.join(sorted(BENCH_ACTIONS))}")
        self.sync()
        handler[0](self, words[1:])
        return self.truth()

    def _reboot(self, which: str, silent_s: float) -> None:
        if which in ("ls4", "all"):
            self.ls4.reboot()
        if which in ("ft8", "all"):
            self.ft8.reboot()
        self.link.silent_until_s = max(self.link.silent_until_s, self.time_s + silent_s)


# --- bench action parsing ------------------------------------------------------------------


def _want(args: Sequence[str], count: int, usage: str) -> None:
    if len(args) != count:
        raise BenchError(f"usage: {usage}")


def _choice(word: str, choices: dict[str, Any], usage: str) -> Any:
    if word not in choices:
        raise BenchError(f"usage: {usage}")
    return choices[word]


def _channel(word: str, count: int, what: str) -> int:
    try:
        channel = int(word)
    except ValueError:
        raise BenchError(f"{what} must be a number 0-{count - 1}, got {word!r}") from None
    if not 0 <= channel < count:
        raise BenchError(f"{what} must be 0-{count - 1}, got {channel}")
    return channel


def _number(word: str, what: str, lo: float, hi: float) -> float:
    try:
        value = float(word)
    except ValueError:
        raise BenchError(f"{what} must be a number, got {word!r}") from None
    if not lo <= value <= hi:
        raise BenchError(f"{what} must be within {lo:g}..{hi:g}, got {value:g}")
    return value


def _key(world: SimWorld, args: Sequence[str]) -> None:
    usage = "key on|off"
    _want(args, 1, usage)
    world.ls4.set_input(key_on=_choice(args[0], {"on": True, "off": False}, usage))


def _estop(world: SimWorld, args: Sequence[str]) -> None:
    usage = "estop press|release"
    _want(args, 1, usage)
    world.ls4.set_input(estop_pressed=_choice(args[0], {"press": True, "release": False}, usage))


def _interlock(world: SimWorld, args: Sequence[str]) -> None:
    usage = "interlock open|close"
    _want(args, 1, usage)
    world.ls4.set_input(interlock_open=_choice(args[0], {"open": True, "close": False}, usage))


def _footswitch(world: SimWorld, args: Sequence[str]) -> None:
    usage = "footswitch press|release"
    _want(args, 1, usage)
    world.ls4.set_footswitch(_choice(args[0], {"press": True, "release": False}, usage))


def _fibre(world: SimWorld, args: Sequence[str]) -> None:
    usage = "fibre CH connect|disconnect|break"
    _want(args, 2, usage)
    channel = _channel(args[0], LS4.CHANNEL_COUNT, "fibre channel")
    fibre = _choice(args[1], {"connect": Fibre.CONNECTED, "disconnect": Fibre.DISCONNECTED, "break": Fibre.BROKEN}, usage)
    world.ls4.set_fibre(channel, fibre)


def _diode(world: SimWorld, args: Sequence[str]) -> None:
    usage = "diode CH cooling fail|ok"
    _want(args, 3, usage)
    channel = _channel(args[0], LS4.CHANNEL_COUNT, "diode channel")
    _choice(args[1], {"cooling": None}, usage)
    world.ls4.inputs.cooling_ok[channel] = _choice(args[2], {"fail": False, "ok": True}, usage)


def _power(world: SimWorld, args: Sequence[str]) -> None:
    usage = "power CH drift PERCENT  (true output = setpoint x (1 + PERCENT/100))"
    _want(args, 3, usage)
    channel = _channel(args[0], LS4.CHANNEL_COUNT, "power channel")
    _choice(args[1], {"drift": None}, usage)
    world.ls4.inputs.emitter_drift[channel] = _number(args[2], "drift percent", -100.0, 100.0) / 100.0


def _monitor(world: SimWorld, args: Sequence[str]) -> None:
    usage = "monitor CH error PERCENT  (OUTPUT_POWER = true output x (1 + PERCENT/100))"
    _want(args, 3, usage)
    channel = _channel(args[0], LS4.CHANNEL_COUNT, "monitor channel")
    _choice(args[1], {"error": None}, usage)
    world.ls4.inputs.monitor_error[channel] = _number(args[2], "monitor error percent", -100.0, 100.0) / 100.0


def _ls4(world: SimWorld, args: Sequence[str]) -> None:
    usage = "ls4 selftest fail|ok | ls4 firmware MAP_VERSION MAJOR.MINOR"
    if len(args) == 2 and args[0] == "selftest":
        world.ls4.set_input(selftest_failed=_choice(args[1], {"fail": True, "ok": False}, usage))
    elif len(args) == 3 and args[0] == "firmware":
        world.ls4.inputs.map_version = int(_number(args[1], "map version", 0, 0xFFFF))
        major, _, minor = args[2].partition(".")
        if not (major.isdigit() and minor.isdigit() and int(major) < 256 and int(minor) < 256):
            raise BenchError(f"firmware version must be MAJOR.MINOR (0-255 each), got {args[2]!r}")
        world.ls4.inputs.firmware_version = int(major) * 256 + int(minor)
    else:
        raise BenchError(f"usage: {usage}")


def _probe(world: SimWorld, args: Sequence[str]) -> None:
    usage = (
        "probe CH disconnect|connect | probe CH signal lost|ok | probe CH stuck [DEGC]|unstuck"
        " | probe CH noise SIGMA_C | probe CH offset DEGC | probe CH force DEGC|release"
    )
    if len(args) < 2:
        raise BenchError(f"usage: {usage}")
    channel = _channel(args[0], FT8.CHANNEL_COUNT, "probe channel")
    f = world.ft8.faults
    verb, rest = args[1], args[2:]
    if verb in ("disconnect", "connect") and not rest:
        f.connected[channel] = verb == "connect"
    elif verb == "signal" and len(rest) == 1:
        f.signal_ok[channel] = _choice(rest[0], {"lost": False, "ok": True}, usage)
    elif verb == "stuck" and len(rest) <= 1:
        if rest:
            f.stuck_at_c[channel] = _number(rest[0], "stuck temperature", -50.0, 200.0)
        else:
            raw = world.ft8.temperature_raw[channel]
            f.stuck_at_c[channel] = raw / 100.0 if raw != FT8.INVALID_READING else 37.0
    elif verb == "unstuck" and not rest:
        f.stuck_at_c[channel] = None
    elif verb == "noise" and len(rest) == 1:
        f.noise_c[channel] = _number(rest[0], "noise sigma", 0.0, 50.0)
    elif verb == "offset" and len(rest) == 1:
        f.offset_c[channel] = _number(rest[0], "offset", -100.0, 100.0)
    elif verb == "force" and len(rest) == 1:
        f.forced_tissue_c[channel] = None if rest[0] == "release" else _number(rest[0], "forced temperature", -50.0, 200.0)
    else:
        raise BenchError(f"usage: {usage}")


def _ft8(world: SimWorld, args: Sequence[str]) -> None:
    usage = "ft8 hang|fault|ok"
    _want(args, 1, usage)
    world.ft8.health = _choice(args[0], {"hang": Health.HUNG, "fault": Health.FAULT, "ok": Health.OK}, usage)


def _link(world: SimWorld, args: Sequence[str]) -> None:
    usage = "link delay MS | link drop N | link corrupt N | link ok"
    if not args:
        raise BenchError(f"usage: {usage}")
    verb = args[0]
    if verb == "ok" and len(args) == 1:
        world.link.clear()
    elif verb == "delay" and len(args) == 2:
        world.link.delay_ms = _number(args[1], "delay ms", 0.0, 60_000.0)
    elif verb in ("drop", "corrupt") and len(args) == 2:
        count = int(_number(args[1], f"{verb} count", 0, 1_000_000))
        if verb == "drop":
            world.link.drop_next = count
        else:
            world.link.corrupt_next = count
    else:
        raise BenchError(f"usage: {usage}")


def _reboot(world: SimWorld, args: Sequence[str]) -> None:
    usage = "reboot ls4|ft8|all [SILENT_SECONDS]"
    if len(args) not in (1, 2):
        raise BenchError(f"usage: {usage}")
    which = _choice(args[0], {"ls4": "ls4", "ft8": "ft8", "all": "all"}, usage)
    silent_s = _number(args[1], "silent seconds", 0.0, 600.0) if len(args) == 2 else DEFAULT_REBOOT_SILENT_S
    world._reboot(which, silent_s)


def _clock(world: SimWorld, args: Sequence[str]) -> None:
    usage = "clock freeze|run|step MS"
    if args == ["freeze"]:
        world.clock.freeze()
    elif args == ["run"]:
        world.clock.run()
    elif len(args) == 2 and args[0] == "step":
        if not world.clock.frozen:
            raise BenchError("clock step needs a frozen clock: send 'clock freeze' first")
        world.clock.step(_number(args[1], "step ms", 0.0, MAX_CLOCK_STEP_MS) / 1000.0)
        world.sync()
    else:
        raise BenchError(f"usage: {usage}")


def _pullback(world: SimWorld, args: Sequence[str]) -> None:
    usage = "pullback MM: the clinician withdraws every fibre MM along its axis (needs --scenario)"
    _want(args, 1, usage)
    pull_back = getattr(world.thermal, "pull_back", None)
    if pull_back is None:
        raise BenchError("pullback moves fibres in the tissue model: start laser-sim serve with --scenario")
    try:
        pull_back(_number(args[0], "pull-back distance mm", 0.0, 1000.0))
    except ValueError as e:
        raise BenchError(str(e)) from None


def _render(world: SimWorld, args: Sequence[str]) -> None:
    """The treatment picture of the tissue model as it is now (sim/tissue/render.py), as a PNG file."""
    usage = "render PATH: write a PNG of peak temperature and damage in the fibre plane (needs --scenario; PATH absolute)"
    _want(args, 1, usage)
    model = world.thermal
    if not all(hasattr(model, a) for a in ("scenario", "omega", "peak_temp_c")):
        raise BenchError("render draws the tissue model: start laser-sim serve with --scenario")
    path = Path(args[0])
    if not path.is_absolute():
        raise BenchError(f"render needs an absolute path (the simulator's working directory is not yours), got {args[0]!r}")
    from .tissue.render import png_bytes, render

    data = png_bytes(render(model))  # type: ignore[arg-type]
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)  # whole or not at all
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise BenchError(f"render: cannot write {path}: {exc.strerror or exc}") from None


def _state(world: SimWorld, args: Sequence[str]) -> None:
    _want(args, 0, "state")


BENCH_ACTIONS: dict[str, tuple[Callable[[SimWorld, Sequence[str]], None], str]] = {
    "key": (_key, "key on|off: the key switch"),
    "estop": (_estop, "estop press|release: the emergency stop (faults in any state)"),
    "interlock": (_interlock, "interlock open|close: the remote interlock (door) connector"),
    "footswitch": (_footswitch, "footswitch press|release: the only thing that starts emission"),
    "fibre": (_fibre, "fibre CH connect|disconnect|break: plug, unplug or break a channel's fibre"),
    "diode": (_diode, "diode CH cooling fail|ok: the diode cooler of a channel"),
    "power": (_power, "power CH drift PERCENT: the emitted power drifts from the setpoint"),
    "monitor": (_monitor, "monitor CH error PERCENT: power-monitor calibration error"),
    "ls4": (_ls4, "ls4 selftest fail|ok: an internal self-test failure (fault 9); ls4 firmware MAP_VERSION MAJOR.MINOR: act as a unit with other firmware"),
    "probe": (_probe, "probe CH disconnect|connect|signal lost|signal ok|stuck [C]|unstuck|noise SIGMA|offset C|force C|force release"),
    "ft8": (_ft8, "ft8 hang|fault|ok: the thermometer hangs (stale samples), reports FAULT, or works"),
    "link": (_link, "link delay MS|drop N|corrupt N|ok: faults on the Modbus link"),
    "reboot": (_reboot, "reboot ls4|ft8|all [SILENT_S]: power-cycle a device; it does not answer meanwhile"),
    "clock": (_clock, "clock freeze|run|step MS: stop, restart or step device time"),
    "pullback": (_pullback, "pullback MM: withdraw every fibre MM along its axis between illuminations (tissue model only)"),
    "render": (_render, "render PATH: write the tissue model's picture (peak temperature, damage) as a PNG (tissue model only)"),
    "state": (_state, "state: print the ground truth"),
}

"""The HIL target, named by an environment file in the spirit of labgrid's: which bus and endpoints
the devices are on, and whether a bench (the simulator's) is there to act on the physical world.

    LASERHOST_HIL_ENV=path/to/env.toml .venv/bin/python -m pytest hil_tests

Unset (the default, and CI): `env/sim-tcp.toml` and `env/sim-rtu.toml`, each starting `laser-sim`.
Several files may be given, separated by `:` (os.pathsep). A test sees a `Target` (the bus, the
unit ids, the time scale) and, only if it asks for one, a `Bench`: nothing else in a test knows
whether the devices are simulated. A test that needs the bench skips on an env without one, and
says why. See docs/hil.md.

Every key is validated when the run starts; a bad file stops the run with one line naming the
field (`hil env: hil_tests/env/rig.toml: bus.port = 70000 is out of range 1..65535`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from controller.config import (
    HOST_RE,
    REQUEST_TIMEOUT_MAX_MS,
    REQUEST_TIMEOUT_MIN_MS,
    RTU_BAUDRATES,
    RTU_BYTESIZES,
    RTU_PARITIES,
    RTU_STOPBITS,
    UNIT_ID_MAX,
    UNIT_ID_MIN,
    WATCHDOG_TIMEOUT_RANGE_MS,
)
from controller.launcher import DaemonProcess, SimProcess, write_config
from controller.settings import Section, SettingsError, read_toml_file
from controller.timebase import MAX_TIME_SCALE
from protocol import ft8 as FT8
from protocol import ls4 as LS4
from sim.bench import bench_request_sync

ENV_VAR: Final = "LASERHOST_HIL_ENV"
ENV_DIR: Final = Path(__file__).resolve().parent / "env"
DEFAULT_ENVS: Final = (ENV_DIR / "sim-tcp.toml", ENV_DIR / "sim-rtu.toml")
TRANSPORTS: Final = ("tcp", "rtu")
# A test parametrized with this selector runs on the first selected env, whatever its transport.
ANY: Final = "any"
NAME_MAX_CHARS: Final = 40
DEFAULT_REQUEST_TIMEOUT_MS: Final = 80
DEFAULT_WATCHDOG_TIMEOUT_MS: Final = 1000
# The simulator serves RTU at the LS-4 datasheet's line settings.
SIM_LINE: Final = {"baudrate": LS4.SERIAL_BAUD, "parity": LS4.SERIAL_PARITY, "stopbits": LS4.SERIAL_STOPBITS}


class EnvError(SettingsError):
    """A HIL environment file that cannot be used; `str(e)` is one line naming the file and field."""

    prefix = "hil env"


@dataclass(frozen=True, slots=True)
class BusSpec:
    transport: str  # "tcp" or "rtu"
    host: str | None  # tcp, real devices: the Modbus TCP server (a gateway, or the devices)
    port: int | None
    device: Path | None  # rtu, real devices: the RS-485 adapter
    baudrate: int
    parity: str
    stopbits: int
    bytesize: int
    request_timeout_ms: int


@dataclass(frozen=True, slots=True)
class SimulatorSpec:
    """The env starts `laser-sim serve` itself, with its bench socket."""

    time_scale: float


@dataclass(frozen=True, slots=True)
class HilEnv:
    name: str
    description: str
    path: Path
    bus: BusSpec
    ls4_unit: int
    ft8_unit: int
    watchdog_timeout_ms: int
    simulator: SimulatorSpec | None

    @property
    def has_bench(self) -> bool:
        return self.simulator is not None

    @property
    def time_scale(self) -> float:
        """Device time against wall time: real devices run in real time."""
        return self.simulator.time_scale if self.simulator is not None else 1.0

    def matches(self, selector: str) -> bool:
        return selector in (self.name, self.bus.transport, ANY)


# --- loading and validation -----------------------------------------------------------------------


def load_env(path: str | os.PathLike[str]) -> HilEnv:
    """Read and validate one env file; EnvError (one line, naming the file and field) if it is bad."""
    shown = os.fspath(path)
    try:
        _, table = read_toml_file(path, error=EnvError)
        return _build(table, Path(path))
    except EnvError as err:
        message = str(err).removeprefix(f"{EnvError.prefix}: ")
        if not message.startswith(shown):
            message = f"{shown}: {message}"
        raise EnvError(message, field=err.field, source=shown) from None


def _build(table: Mapping[str, Any], path: Path) -> HilEnv:
    root = Section(table, error=EnvError)
    name = root.get_str("name", default=path.stem, max_length=NAME_MAX_CHARS, check=_name_check)
    description = root.get_str("description", default="")
    simulated = "simulator" in root
    sim_sec = root.table("simulator", required=False)
    simulator = None
    if simulated:
        simulator = SimulatorSpec(
            time_scale=sim_sec.get_float("time_scale", default=1.0, above=0.0, maximum=MAX_TIME_SCALE),
        )
    sim_sec.finish()
    bus = _bus(root.table("bus"), simulated=simulated)
    dev = root.table("devices", required=False)
    ls4_unit = dev.get_int("ls4_unit", default=LS4.UNIT_ID, minimum=UNIT_ID_MIN, maximum=UNIT_ID_MAX)
    ft8_unit = dev.get_int("ft8_unit", default=FT8.UNIT_ID, minimum=UNIT_ID_MIN, maximum=UNIT_ID_MAX)
    if ft8_unit == ls4_unit:
        raise dev.value_error("ft8_unit", ft8_unit, "is also devices.ls4_unit: two devices on one bus need two unit ids")
    if simulated and (ls4_unit, ft8_unit) != (LS4.UNIT_ID, FT8.UNIT_ID):
        raise dev.fail("ls4_unit" if ls4_unit != LS4.UNIT_ID else "ft8_unit", ": the simulator serves the LS-4 as unit 1 and the FT-8 as unit 2")
    watchdog = dev.get_int("watchdog_timeout_ms", default=DEFAULT_WATCHDOG_TIMEOUT_MS, minimum=WATCHDOG_TIMEOUT_RANGE_MS[0], maximum=WATCHDOG_TIMEOUT_RANGE_MS[1])
    dev.finish()
    root.finish()
    return HilEnv(
        name=name,
        description=description,
        path=path,
        bus=bus,
        ls4_unit=ls4_unit,
        ft8_unit=ft8_unit,
        watchdog_timeout_ms=watchdog,
        simulator=simulator,
    )


def _name_check(value: str) -> str | None:
    ok = all(c.isalnum() or c in "-_." for c in value)
    return None if ok else "must be letters, digits, - _ . (it names the test ids)"


def _bus(sec: Section, *, simulated: bool) -> BusSpec:
    transport = sec.get_str("transport", choices=TRANSPORTS)
    timeout = sec.get_int("request_timeout_ms", default=DEFAULT_REQUEST_TIMEOUT_MS, minimum=REQUEST_TIMEOUT_MIN_MS, maximum=REQUEST_TIMEOUT_MAX_MS)
    host = port = device = None
    line = dict(SIM_LINE)
    bytesize = 8
    if transport == "tcp":
        sec.reject(("device", "baudrate", "parity", "stopbits", "bytesize"), "not used with transport = \"tcp\"")
        if simulated:
            sec.reject(("host", "port"), "the simulator serves on a free port of 127.0.0.1 (remove [simulator] to name real devices)")
        else:
            host = sec.get_str("host", check=lambda v: None if HOST_RE.fullmatch(v) else "is not a host name or IP address")
            port = sec.get_int("port", default=502, minimum=1, maximum=65535)
    else:
        sec.reject(("host", "port"), "not used with transport = \"rtu\"")
        if simulated:
            sec.reject(("device",), "the simulator serves on a socat pty pair of its own (remove [simulator] to name a serial device)")
        else:
            device = sec.get_path("device", absolute=True)
        line = {
            "baudrate": sec.get_int("baudrate", default=LS4.SERIAL_BAUD, choices=RTU_BAUDRATES),
            "parity": sec.get_str("parity", default=LS4.SERIAL_PARITY, choices=RTU_PARITIES),
            "stopbits": sec.get_int("stopbits", default=LS4.SERIAL_STOPBITS, choices=RTU_STOPBITS),
        }
        bytesize = sec.get_int("bytesize", default=8, choices=RTU_BYTESIZES)
        if simulated:
            for key, value in line.items():
                if value != SIM_LINE[key]:
                    raise sec.value_error(key, value, f"is not the simulator's line ({LS4.SERIAL_BAUD} 8{LS4.SERIAL_PARITY}{LS4.SERIAL_STOPBITS})")
    sec.finish()
    return BusSpec(
        transport=transport,
        host=host,
        port=port,
        device=device,
        baudrate=int(line["baudrate"]),
        parity=str(line["parity"]),
        stopbits=int(line["stopbits"]),
        bytesize=bytesize,
        request_timeout_ms=timeout,
    )


def selected_env_paths(environ: Mapping[str, str] = os.environ) -> list[Path]:
    value = environ.get(ENV_VAR, "").strip()
    if not value:
        return list(DEFAULT_ENVS)
    return [Path(p) for p in value.split(os.pathsep) if p.strip()]


def selected_envs(environ: Mapping[str, str] = os.environ) -> list[HilEnv]:
    """The envs of this run (LASERHOST_HIL_ENV, else the two simulator envs); names must differ."""
    envs = [load_env(p) for p in selected_env_paths(environ)]
    seen: dict[str, Path] = {}
    for env in envs:
        if env.name in seen:
            raise EnvError(f"{env.path}: name = {env.name!r} is also the name of {seen[env.name]}", field="name")
        seen[env.name] = env.path
    return envs


def pick(envs: list[HilEnv], selector: str) -> HilEnv | None:
    """The first env that `selector` (an env name, a transport, or ANY) names."""
    return next((e for e in envs if e.matches(selector)), None)


# --- the target and the bench -------------------------------------------------------------------------


class Bench:
    """The physical world's hand: footswitch, key, faults, and the ground truth (the simulator's bench
    socket). Calling it carries out one action and returns the ground truth after it.

    It also pairs the wall clock (time.monotonic) with device time, so that a time the daemon
    recorded (its journal's t_mono: the same system clock) can be put on the device's time line:
    `device_time_s(mono)`. The device clock runs at a fixed rate against the system's monotonic clock
    while it is not frozen, so the pairing from the quickest bench round trip is kept (its error is
    half that round trip times the time scale)."""

    def __init__(self, path: str, *, time_scale: float) -> None:
        self.path = path
        self.time_scale = time_scale
        self._sync: tuple[float, float, float] | None = None  # (round trip s, wall monotonic, device seconds)

    def __call__(self, *words: object) -> dict[str, Any]:
        before = time.monotonic()
        reply = bench_request_sync(self.path, [str(w) for w in words])
        after = time.monotonic()
        truth = reply.get("result", reply)
        if isinstance(truth, dict) and "time_s" in truth:
            if truth.get("clock_frozen") or words[:1] == ("clock",):
                self._sync = None  # frozen, stepped or restarted: the old pairing no longer holds
            elif self._sync is None or after - before < self._sync[0]:
                self._sync = (after - before, (before + after) / 2.0, float(truth["time_s"]))
        return truth

    def truth(self) -> dict[str, Any]:
        return self("state")

    def device_time_s(self, mono: float) -> float:
        """Device seconds at wall-clock instant `mono` (time.monotonic), from the latest bench call."""
        if self._sync is None:
            self.truth()
        assert self._sync is not None, "the device clock is frozen"
        _, wall, device = self._sync
        return device + (mono - wall) * self.time_scale


@dataclass
class Target:
    """The devices under test, as an env names them: started (the simulator) or just described (real
    hardware). `bench` is None on real hardware."""

    env: HilEnv
    tmp: Path
    scenario: str | None = None
    time_scale_override: float | None = None
    sim: SimProcess | None = None
    bench: Bench | None = None
    where: str = ""
    _stopped: bool = field(default=False, repr=False)

    @property
    def transport(self) -> str:
        return self.env.bus.transport

    @property
    def time_scale(self) -> float:
        return self.time_scale_override if self.time_scale_override is not None else self.env.time_scale

    @property
    def label(self) -> str:
        return f"{self.env.name} ({self.transport})"

    def start(self) -> Target:
        if self.env.simulator is None:
            if self.scenario is not None or self.time_scale_override not in (None, 1.0):
                raise ValueError("a scenario and a time scale are the simulator's: this env names real devices")
            bus = self.env.bus
            self.where = f"{bus.host}:{bus.port}" if bus.transport == "tcp" else str(bus.device)
            return self
        self.sim = SimProcess(transport=self.transport, tmp=self.tmp, time_scale=self.time_scale, scenario=self.scenario).start()
        self.where = self.sim.where
        self.bench = Bench(self.sim.bench_path, time_scale=self.time_scale)
        return self

    def stop(self) -> None:
        if self.sim is not None and not self._stopped:
            self.sim.stop()
        self._stopped = True

    def bus_toml(self) -> str:
        b = self.env.bus
        if b.transport == "tcp":
            host, port = self.where.rsplit(":", 1)
            lines = [f'transport = "tcp"', f'host = "{host}"', f"port = {port}"]
        else:
            lines = [
                'transport = "rtu"',
                f'device = "{self.where}"',
                f"baudrate = {b.baudrate}",
                f'parity = "{b.parity}"',
                f"stopbits = {b.stopbits}",
                f"bytesize = {b.bytesize}",
            ]
        return "\n".join([*lines, f"request_timeout_ms = {b.request_timeout_ms}"]) + "\n"

    def write_config(self, tmp: Path, *, log_level: str = "info", watchdog_timeout_ms: int | None = None, journal_dir: Path | None = None) -> Path:
        """laserd's config for this target (socket in `tmp`; the journal there too, or in `journal_dir`)."""
        path = write_config(
            tmp,
            None,
            watchdog_timeout_ms=self.env.watchdog_timeout_ms if watchdog_timeout_ms is None else watchdog_timeout_ms,
            log_level=log_level,
            bus_toml=self.bus_toml(),
            ls4_unit=self.env.ls4_unit,
            ft8_unit=self.env.ft8_unit,
        )
        if journal_dir is not None:
            text = path.read_text()
            old = f'path = "{tmp / "journal.sqlite"}"\n'
            assert old in text, "the journal path of controller.launcher.write_config"
            path.write_text(text.replace(old, f'path = "{journal_dir / "journal.sqlite"}"\n'))
        return path

    def daemon(self, tmp: Path, *, config: Path | None = None, environ: dict[str, str] | None = None) -> DaemonProcess:
        """A laserd for this target (not started), at the target's time scale."""
        return DaemonProcess(config=config or self.write_config(tmp), tmp=tmp, time_scale=self.time_scale, env=environ)

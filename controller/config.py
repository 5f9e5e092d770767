"""The daemon's one TOML config file: buses, devices, control period, device hard limits, journal,
socket, MQTT and logging. Validated completely at start; the daemon never starts on a bad file.

Every key, type, default and range is listed in docs/config.md (a test holds the two together).
Relative paths in the file resolve against the directory of the config file, so a config works
the same whatever the daemon's working directory is (systemd starts it in /).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from protocol import ft8, ls4

from safety import limits as safety_bounds

from .settings import REQUIRED, ConfigError, Section, number, parse_toml, read_toml_file, show

# ----- control cycle -----
CONTROL_PERIOD_DEFAULT_MS: Final = 100
CONTROL_PERIOD_MIN_MS: Final = 20  # two LS-4 update periods plus a bus round trip
CONTROL_PERIOD_MAX_MS: Final = 1000  # slower than 1 Hz is too coarse to hold a tip temperature
# "Well under the watchdog": at least this many control periods fit in one LS-4 watchdog timeout,
# so one or two late cycles never trip it, while a dead host still does.
WATCHDOG_MIN_CONTROL_PERIODS: Final = 3

# ----- buses -----
TRANSPORTS: Final = ("tcp", "rtu")
TCP_PORT_DEFAULT: Final = 502  # Modbus/TCP
RTU_BAUDRATES: Final = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
RTU_PARITIES: Final = ("N", "E", "O")
RTU_STOPBITS: Final = (1, 2)
RTU_BYTESIZES: Final = (8,)  # Modbus RTU frames are 8-bit; 7 bits cannot carry them
REQUEST_TIMEOUT_DEFAULT_MS: Final = 60
REQUEST_TIMEOUT_MIN_MS: Final = 10
REQUEST_TIMEOUT_MAX_MS: Final = 1000
RECONNECT_AFTER_FAILURES_DEFAULT: Final = 3
RECONNECT_AFTER_FAILURES_MAX: Final = 100
# One cycle's RTU traffic may use at most this share of a control period on the wire; the rest is
# left for the devices' response latency and retries.
RTU_MAX_WIRE_FRACTION_OF_PERIOD: Final = 0.5
BUS_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}")
HOST_RE: Final = re.compile(r"[A-Za-z0-9._:\[\]-]{1,253}")

# ----- devices -----
UNIT_ID_MIN: Final = 1
UNIT_ID_MAX: Final = 247  # Modbus serial line: 248-255 reserved, 0 broadcast
WATCHDOG_TIMEOUT_DEFAULT_MS: Final = 500  # LS-4 datasheet, holding register WATCHDOG_TIMEOUT
WATCHDOG_TIMEOUT_RANGE_MS: Final = (50, 2000)  # LS-4 datasheet
SAMPLE_PERIOD_DEFAULT_MS: Final = ft8.DEFAULT_SAMPLE_PERIOD_MS
SAMPLE_PERIOD_RANGE_MS: Final = (10, 1000)  # FT-8 datasheet, holding register SAMPLE_PERIOD

# ----- hard limits: each bounded by the datasheets or by physics; none has a default -----
CHANNEL_POWER_CEILING_W: Final = ls4.MAX_CHANNEL_POWER_MW / 1000.0  # LS-4 datasheet: 10 W per channel
FIBRE_ENERGY_CEILING_J: Final = 36_000.0  # 10 W for an hour: more on one fibre is a typo, not a plan
SESSION_ENERGY_CEILING_J: Final = ls4.CHANNEL_COUNT * FIBRE_ENERGY_CEILING_J
SESSION_DURATION_RANGE_S: Final = (60, 14_400)  # 1 min .. 4 h
# Above ~100 degC tissue water boils and chars at the tip, and char on the fibre face absorbs
# the beam and destroys the applicator; below 40 degC nothing is ablated.
TIP_TEMP_CAP_RANGE_C: Final = (40.0, 105.0)
# A protected structure's limit must be above body temperature (or it trips at once) and at
# most 50 degC (above that, damage within seconds: not "protected" any more).
PROTECTED_TEMP_RANGE_C: Final = (38.0, 50.0)
# A protected-structure dose limit above the usual lethal 240 CEM43 min protects nothing.
PROTECTED_CEM43_CEILING_MIN: Final = 240.0
PROBE_STALE_RANGE_MS: Final = (50, round(safety_bounds.STALE_WINDOW_MAX_S * 1000))  # the safety layer's bound
# A probe cannot be judged stale before it had this many chances (FT-8 samples, control cycles) to update.
PROBE_STALE_MIN_UPDATES: Final = 2
# Plausibility: the steepest believable rise at a probe. Below 2 degC/s normal tip heating trips it;
# above 100 degC/s (FT-8 time constant 0.2 s, range 170 degC) nothing is filtered out.
TEMP_RATE_RANGE_C_PER_S: Final = safety_bounds.PROBE_RATE_C_PER_S_RANGE
POWER_TOLERANCE_RANGE: Final = (0.05, safety_bounds.POWER_TOLERANCE_FRACTION_MAX)  # wider than the LS-4's own 20 % is useless
# the host must catch a deviation before the LS-4's own 500 ms fault (safety.limits)
POWER_TOLERANCE_PERSIST_RANGE_MS: Final = (20, round(safety_bounds.POWER_MISMATCH_WINDOW_MAX_S * 1000))
ENERGY_CROSSCHECK_FRACTION_RANGE: Final = (0.01, safety_bounds.ENERGY_CROSSCHECK_TOLERANCE_FRACTION_MAX)
ENERGY_CROSSCHECK_FLOOR_RANGE_J: Final = safety_bounds.ENERGY_CROSSCHECK_TOLERANCE_J_RANGE
# A control cycle starting later than this trips the session (cycle_overrun): the safety layer's
# bound; a longer control period may want a longer one (docs/config.md).
CYCLE_OVERRUN_DEFAULT_MS: Final = round(safety_bounds.DEFAULT_MAX_CYCLE_OVERRUN_S * 1000)
CYCLE_OVERRUN_RANGE_MS: Final = (20, round(safety_bounds.MAX_CYCLE_OVERRUN_MAX_S * 1000))

# ----- journal, socket, mqtt, logging -----
# sun_path is 108 bytes on Linux including the terminating NUL.
SOCKET_PATH_MAX_BYTES: Final = 107
SOCKET_MODE_DEFAULT: Final = 0o660
SOCKET_MODE_OWNER_RW: Final = 0o600
GROUP_NAME_RE: Final = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
MQTT_PORT_DEFAULT: Final = 1883
MQTT_TLS_PORT_DEFAULT: Final = 8883
MQTT_TELEMETRY_HZ_DEFAULT: Final = 5.0
MQTT_TELEMETRY_HZ_RANGE: Final = (0.2, 50.0)
MQTT_QUEUE_SIZE_DEFAULT: Final = 1000  # 200 s of telemetry at 5 Hz while the broker is away
MQTT_QUEUE_SIZE_RANGE: Final = (10, 100_000)
MQTT_DEVICE_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")  # one topic level, no wildcards
MQTT_TOPIC_PREFIX_MAX_CHARS: Final = 200
MQTT_USERNAME_MAX_CHARS: Final = 128
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_LEVEL_DEFAULT: Final = "info"


@dataclass(frozen=True, slots=True)
class TcpBus:
    name: str
    host: str
    port: int
    request_timeout_ms: int
    reconnect_after_failures: int
    transport: Literal["tcp"] = "tcp"


@dataclass(frozen=True, slots=True)
class RtuBus:
    name: str
    device: Path
    baudrate: int
    parity: str
    stopbits: int
    bytesize: int
    request_timeout_ms: int
    reconnect_after_failures: int
    transport: Literal["rtu"] = "rtu"


Bus = TcpBus | RtuBus


@dataclass(frozen=True, slots=True)
class LS4Config:
    bus: str
    unit_id: int
    watchdog_timeout_ms: int


@dataclass(frozen=True, slots=True)
class FT8Config:
    bus: str
    unit_id: int
    sample_period_ms: int


@dataclass(frozen=True, slots=True)
class HardLimits:
    """The site's hard limits. A treatment plan can only lower them; the safety layer enforces them.
    Meanings in docs/config.md; none has a default."""

    max_channel_power_w: float  # any channel's setpoint; also the LS-4 POWER_LIMIT
    max_fibre_energy_j: float  # per fibre, per illumination
    max_session_energy_j: float  # all channels, all illuminations
    max_session_duration_s: int  # from the first emission, pauses and pull-backs included
    tip_temp_cap_c: float  # at any tip probe
    protected_max_temp_c: float  # ceiling for a plan's protected-probe temperature limit
    protected_max_cem43_min: float  # ceiling for a plan's protected-probe dose limit
    probe_stale_ms: int  # a reading not updated this long is stale
    max_temp_rate_c_per_s: float  # plausibility: faster changes are not believed
    power_tolerance_fraction: float  # measured vs commanded power
    power_tolerance_persist_ms: int  # ... for at most this long
    energy_crosscheck_tolerance_fraction: float  # host-integrated energy vs LS-4 counter
    energy_crosscheck_tolerance_j: float  # ... or this many J, whichever is larger
    max_cycle_overrun_ms: int = CYCLE_OVERRUN_DEFAULT_MS  # a cycle starting this late trips the session


@dataclass(frozen=True, slots=True)
class SocketConfig:
    path: Path
    mode: int
    group: str | None


@dataclass(frozen=True, slots=True)
class MqttConfig:
    enabled: bool
    host: str | None
    port: int
    tls: bool
    tls_ca_file: Path | None
    tls_cert_file: Path | None
    tls_key_file: Path | None
    username: str | None
    password_file: Path | None
    device_id: str | None
    topic_prefix: str | None
    telemetry_hz: float
    queue_size: int
    command_topic_enabled: bool


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    source: Path | None  # the file it was loaded from
    control_period_ms: int
    buses: tuple[Bus, ...]
    ls4: LS4Config
    ft8: FT8Config
    limits: HardLimits
    journal_path: Path
    socket: SocketConfig
    mqtt: MqttConfig
    log_level: str

    def bus(self, name: str) -> Bus:
        for bus in self.buses:
            if bus.name == name:
                return bus
        raise KeyError(name)


def load_config(path: str | os.PathLike[str], *, key_log: set[str] | None = None) -> DaemonConfig:
    """Read and validate the config file at `path`; raise a one-line ConfigError on anything wrong.

    `key_log`, if given, collects the generic dotted name of every key the schema reads
    (`bus.<name>.port`); docs/config.md is checked against it.
    """
    text, table = read_toml_file(path, error=ConfigError)
    base = Path(os.path.abspath(path)).parent
    return _build(table, base_dir=base, source=Path(os.path.abspath(path)), key_log=key_log)


def parse_config(text: str, *, base_dir: Path, key_log: set[str] | None = None) -> DaemonConfig:
    """Validate config TOML text; relative paths resolve against `base_dir`."""
    return _build(parse_toml(text, error=ConfigError, source="<text>"), base_dir=Path(base_dir), source=None, key_log=key_log)


def _build(table: dict, *, base_dir: Path, source: Path | None, key_log: set[str] | None) -> DaemonConfig:
    root = Section(table, error=ConfigError, key_log=key_log)
    control_period_ms = root.get_int(
        "control_period_ms", default=CONTROL_PERIOD_DEFAULT_MS, minimum=CONTROL_PERIOD_MIN_MS, maximum=CONTROL_PERIOD_MAX_MS
    )
    buses = _buses(root)
    ls4_cfg, ft8_cfg = _devices(root, buses)
    limits = _limits(root.table("limits"))
    journal = root.table("journal")
    journal_path = journal.get_path("path", base=base_dir)
    journal.finish()
    socket = _socket(root.table("socket"), base_dir)
    mqtt = _mqtt(root.table("mqtt", required=False), base_dir)
    logging_ = root.table("logging", required=False)
    log_level = logging_.get_str("level", default=LOG_LEVEL_DEFAULT, choices=LOG_LEVELS)
    logging_.finish()
    root.finish()

    _cross_checks(root, control_period_ms, buses, ls4_cfg, ft8_cfg, limits, mqtt)
    if socket.path == journal_path:
        raise root.fail("socket.path", f"= {show(table['socket']['path'])} is the same file as journal.path ({journal_path})")
    return DaemonConfig(
        source=source,
        control_period_ms=control_period_ms,
        buses=tuple(buses.values()),
        ls4=ls4_cfg,
        ft8=ft8_cfg,
        limits=limits,
        journal_path=journal_path,
        socket=socket,
        mqtt=mqtt,
        log_level=log_level,
    )


# ----- sections -----

_TCP_KEYS = ("host", "port")
_RTU_KEYS = ("device", "baudrate", "parity", "stopbits", "bytesize")


def _bus_name_check(name: str) -> str | None:
    return None if BUS_NAME_RE.fullmatch(name) else "use 1-32 of a-z 0-9 _ -, starting with a letter"


def _host_check(value: str) -> str | None:
    return None if HOST_RE.fullmatch(value) else "is not a host name or IP address"


def _buses(root: Section) -> dict[str, Bus]:
    buses: dict[str, Bus] = {}
    for name, sec in root.named_tables("bus", name_check=_bus_name_check).items():
        transport = sec.get_str("transport", choices=TRANSPORTS)
        timeout = sec.get_int(
            "request_timeout_ms", default=REQUEST_TIMEOUT_DEFAULT_MS, minimum=REQUEST_TIMEOUT_MIN_MS, maximum=REQUEST_TIMEOUT_MAX_MS
        )
        failures = sec.get_int(
            "reconnect_after_failures", default=RECONNECT_AFTER_FAILURES_DEFAULT, minimum=1, maximum=RECONNECT_AFTER_FAILURES_MAX
        )
        bus: Bus
        if transport == "tcp":
            sec.reject(_RTU_KEYS, 'not used with transport = "tcp"')
            bus = TcpBus(
                name=name,
                host=sec.get_str("host", check=_host_check),
                port=sec.get_int("port", default=TCP_PORT_DEFAULT, minimum=1, maximum=65535),
                request_timeout_ms=timeout,
                reconnect_after_failures=failures,
            )
        else:
            sec.reject(_TCP_KEYS, 'not used with transport = "rtu"')
            bus = RtuBus(
                name=name,
                device=sec.get_path("device", absolute=True),
                baudrate=sec.get_int("baudrate", default=ls4.SERIAL_BAUD, choices=RTU_BAUDRATES),
                parity=sec.get_str("parity", default=ls4.SERIAL_PARITY, choices=RTU_PARITIES),
                stopbits=sec.get_int("stopbits", default=ls4.SERIAL_STOPBITS, choices=RTU_STOPBITS),
                bytesize=sec.get_int("bytesize", default=ls4.SERIAL_BYTESIZE, choices=RTU_BYTESIZES),
                request_timeout_ms=timeout,
                reconnect_after_failures=failures,
            )
        sec.finish()
        buses[name] = bus
    return buses


def _devices(root: Section, buses: dict[str, Bus]) -> tuple[LS4Config, FT8Config]:
    devices = root.table("devices")

    def bus_of(sec: Section) -> str:
        name = sec.get_str("bus")
        if name not in buses:
            raise sec.value_error("bus", name, f"names no bus (defined: {', '.join(sorted(buses))})")
        return name

    sec = devices.table("ls4")
    ls4_cfg = LS4Config(
        bus=bus_of(sec),
        unit_id=sec.get_int("unit_id", default=ls4.UNIT_ID, minimum=UNIT_ID_MIN, maximum=UNIT_ID_MAX),
        watchdog_timeout_ms=sec.get_int("watchdog_timeout_ms", default=WATCHDOG_TIMEOUT_DEFAULT_MS, minimum=WATCHDOG_TIMEOUT_RANGE_MS[0], maximum=WATCHDOG_TIMEOUT_RANGE_MS[1]),
    )
    sec.finish()
    sec = devices.table("ft8")
    ft8_cfg = FT8Config(
        bus=bus_of(sec),
        unit_id=sec.get_int("unit_id", default=ft8.UNIT_ID, minimum=UNIT_ID_MIN, maximum=UNIT_ID_MAX),
        sample_period_ms=sec.get_int("sample_period_ms", default=SAMPLE_PERIOD_DEFAULT_MS, minimum=SAMPLE_PERIOD_RANGE_MS[0], maximum=SAMPLE_PERIOD_RANGE_MS[1]),
    )
    if ft8_cfg.bus == ls4_cfg.bus and ft8_cfg.unit_id == ls4_cfg.unit_id:
        raise sec.fail("unit_id", f' = {ft8_cfg.unit_id} is already devices.ls4.unit_id on bus "{ft8_cfg.bus}"')
    sec.finish()
    devices.finish()
    for name in buses:
        if name not in (ls4_cfg.bus, ft8_cfg.bus):
            raise root.fail(f"bus.{name}", ": not used by any device (remove it, or point devices.ls4.bus / devices.ft8.bus at it)")
    return ls4_cfg, ft8_cfg


def _limits(sec: Section) -> HardLimits:
    limits = HardLimits(
        max_channel_power_w=sec.get_float("max_channel_power_w", above=0.0, maximum=CHANNEL_POWER_CEILING_W),
        max_fibre_energy_j=sec.get_float("max_fibre_energy_j", above=0.0, maximum=FIBRE_ENERGY_CEILING_J),
        max_session_energy_j=sec.get_float("max_session_energy_j", above=0.0, maximum=SESSION_ENERGY_CEILING_J),
        max_session_duration_s=sec.get_int("max_session_duration_s", minimum=SESSION_DURATION_RANGE_S[0], maximum=SESSION_DURATION_RANGE_S[1]),
        tip_temp_cap_c=sec.get_float("tip_temp_cap_c", minimum=TIP_TEMP_CAP_RANGE_C[0], maximum=TIP_TEMP_CAP_RANGE_C[1]),
        protected_max_temp_c=sec.get_float("protected_max_temp_c", minimum=PROTECTED_TEMP_RANGE_C[0], maximum=PROTECTED_TEMP_RANGE_C[1]),
        protected_max_cem43_min=sec.get_float("protected_max_cem43_min", above=0.0, maximum=PROTECTED_CEM43_CEILING_MIN),
        probe_stale_ms=sec.get_int("probe_stale_ms", minimum=PROBE_STALE_RANGE_MS[0], maximum=PROBE_STALE_RANGE_MS[1]),
        max_temp_rate_c_per_s=sec.get_float("max_temp_rate_c_per_s", minimum=TEMP_RATE_RANGE_C_PER_S[0], maximum=TEMP_RATE_RANGE_C_PER_S[1]),
        power_tolerance_fraction=sec.get_float("power_tolerance_fraction", minimum=POWER_TOLERANCE_RANGE[0], maximum=POWER_TOLERANCE_RANGE[1]),
        power_tolerance_persist_ms=sec.get_int("power_tolerance_persist_ms", minimum=POWER_TOLERANCE_PERSIST_RANGE_MS[0], maximum=POWER_TOLERANCE_PERSIST_RANGE_MS[1]),
        energy_crosscheck_tolerance_fraction=sec.get_float("energy_crosscheck_tolerance_fraction", minimum=ENERGY_CROSSCHECK_FRACTION_RANGE[0], maximum=ENERGY_CROSSCHECK_FRACTION_RANGE[1]),
        energy_crosscheck_tolerance_j=sec.get_float("energy_crosscheck_tolerance_j", minimum=ENERGY_CROSSCHECK_FLOOR_RANGE_J[0], maximum=ENERGY_CROSSCHECK_FLOOR_RANGE_J[1]),
        max_cycle_overrun_ms=sec.get_int("max_cycle_overrun_ms", default=CYCLE_OVERRUN_DEFAULT_MS, minimum=CYCLE_OVERRUN_RANGE_MS[0], maximum=CYCLE_OVERRUN_RANGE_MS[1]),
    )
    sec.finish()
    return limits


def _octal(mode: int) -> str:
    return f"0o{mode:03o}"


def _socket(sec: Section, base_dir: Path) -> SocketConfig:
    path = sec.get_path("path", base=base_dir, max_bytes=SOCKET_PATH_MAX_BYTES)
    if isinstance(sec.peek("mode"), str):
        text = sec.get_str("mode", check=lambda v: None if re.fullmatch(r"0?[0-7]{3}", v) else 'is not an octal file mode like "0660"')
        mode = int(text, 8)
    else:
        mode = sec.get_int("mode", default=SOCKET_MODE_DEFAULT)
        if not 0 <= mode <= 0o777:
            raise sec.fail("mode", f" = {mode} is not a file mode 0o000..0o777 (write it in octal: 0o660)")
    if mode & 0o007:
        raise sec.fail("mode", f" = {_octal(mode)} lets any user on the machine command the laser (others must get no access, e.g. 0o660)")
    if mode & SOCKET_MODE_OWNER_RW != SOCKET_MODE_OWNER_RW:
        raise sec.fail("mode", f" = {_octal(mode)} must give its owner read and write (0o600 at least)")
    group = sec.get_str("group", default=None, check=lambda v: None if GROUP_NAME_RE.fullmatch(v) else "is not a group name")
    sec.finish()
    return SocketConfig(path=path, mode=mode, group=group)


def _topic_prefix_check(value: str) -> str | None:
    if "+" in value or "#" in value:
        return "must not contain the MQTT wildcards + or #"
    if value.startswith("$"):
        return "must not start with $ (reserved for the broker)"
    if not value.endswith("/"):
        return 'must end with "/"'
    return None


def _mqtt(sec: Section, base_dir: Path) -> MqttConfig:
    # Validated in full even when disabled, so a typo is found today and not on the day it is enabled.
    enabled = sec.get_bool("enabled", default=False)
    tls = sec.get_bool("tls", default=False)
    host = sec.get_str("host", default=REQUIRED if enabled else None, check=_host_check)
    port = sec.get_int("port", default=MQTT_TLS_PORT_DEFAULT if tls else MQTT_PORT_DEFAULT, minimum=1, maximum=65535)
    files = {}
    for key in ("tls_ca_file", "tls_cert_file", "tls_key_file", "password_file"):
        files[key] = sec.get_path(key, default=None, base=base_dir, must_exist=enabled)
    if not tls:
        for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
            if files[key] is not None:
                raise sec.fail(key, ": has no effect unless mqtt.tls = true")
    if (files["tls_cert_file"] is None) != (files["tls_key_file"] is None):
        key = "tls_key_file" if files["tls_key_file"] is None else "tls_cert_file"
        raise sec.fail(key, ": missing (tls_cert_file and tls_key_file go together)")
    username = sec.get_str("username", default=None, max_length=MQTT_USERNAME_MAX_CHARS)
    if files["password_file"] is not None and username is None:
        raise sec.fail("password_file", ": needs mqtt.username")
    device_id = sec.get_str(
        "device_id",
        default=REQUIRED if enabled else None,
        check=lambda v: None if MQTT_DEVICE_ID_RE.fullmatch(v) else "must be 1-64 of A-Z a-z 0-9 _ - (one topic level)",
    )
    topic_prefix = sec.get_str("topic_prefix", default=None, max_length=MQTT_TOPIC_PREFIX_MAX_CHARS, check=_topic_prefix_check)
    if topic_prefix is None and device_id is not None:
        topic_prefix = f"laser/{device_id}/"
    telemetry_hz = sec.get_float("telemetry_hz", default=MQTT_TELEMETRY_HZ_DEFAULT, minimum=MQTT_TELEMETRY_HZ_RANGE[0], maximum=MQTT_TELEMETRY_HZ_RANGE[1])
    queue_size = sec.get_int("queue_size", default=MQTT_QUEUE_SIZE_DEFAULT, minimum=MQTT_QUEUE_SIZE_RANGE[0], maximum=MQTT_QUEUE_SIZE_RANGE[1])
    command_topic_enabled = sec.get_bool("command_topic_enabled", default=False)
    sec.finish()
    return MqttConfig(
        enabled=enabled,
        host=host,
        port=port,
        tls=tls,
        tls_ca_file=files["tls_ca_file"],
        tls_cert_file=files["tls_cert_file"],
        tls_key_file=files["tls_key_file"],
        username=username,
        password_file=files["password_file"],
        device_id=device_id,
        topic_prefix=topic_prefix,
        telemetry_hz=telemetry_hz,
        queue_size=queue_size,
        command_topic_enabled=command_topic_enabled,
    )


# ----- rules between sections -----


def rtu_cycle_wire_ms(bus: RtuBus, *, ls4_on_bus: bool, ft8_on_bus: bool) -> float:
    """Time on the wire of one control cycle's Modbus RTU frames on `bus`, silent intervals included.

    LS-4: read input 0-51 (fn 4) and write holding 3-11 (fn 16); FT-8: read input 0-21 (fn 4).
    """
    frames: list[int] = []  # bytes per frame, address and CRC included
    if ls4_on_bus:
        frames += [8, 5 + 2 * ls4.INPUT_COUNT, 9 + 2 * ls4.CYCLE_WRITE_COUNT, 8]
    if ft8_on_bus:
        frames += [8, 5 + 2 * ft8.INPUT_COUNT]
    bits_per_char = 1 + bus.bytesize + (0 if bus.parity == "N" else 1) + bus.stopbits
    chars = sum(frames) + 3.5 * len(frames)  # t3.5 silence after every frame
    return chars * bits_per_char / bus.baudrate * 1000.0


def _cross_checks(
    root: Section,
    control_period_ms: int,
    buses: dict[str, Bus],
    ls4_cfg: LS4Config,
    ft8_cfg: FT8Config,
    limits: HardLimits,
    mqtt: MqttConfig,
) -> None:
    watchdog = ls4_cfg.watchdog_timeout_ms
    if control_period_ms * WATCHDOG_MIN_CONTROL_PERIODS > watchdog:
        raise root.fail(
            "control_period_ms",
            f"= {control_period_ms} is not well under devices.ls4.watchdog_timeout_ms = {watchdog}: "
            f"at least {WATCHDOG_MIN_CONTROL_PERIODS} periods must fit in one watchdog timeout "
            f"(period <= {watchdog // WATCHDOG_MIN_CONTROL_PERIODS} ms)",
        )
    if limits.max_cycle_overrun_ms + control_period_ms >= watchdog:
        raise root.fail(
            "limits.max_cycle_overrun_ms",
            f"= {limits.max_cycle_overrun_ms} plus control_period_ms = {control_period_ms} must stay below devices.ls4.watchdog_timeout_ms = {watchdog} "
            "(the host must trip on a late cycle before the LS-4's watchdog does)",
        )
    for bus in buses.values():
        field = f"bus.{bus.name}.request_timeout_ms"
        if bus.request_timeout_ms >= control_period_ms:
            raise root.fail(field, f"= {bus.request_timeout_ms} must be below control_period_ms = {control_period_ms} (a silent device must not stall the cycle)")
        if isinstance(bus, RtuBus):
            wire_ms = rtu_cycle_wire_ms(bus, ls4_on_bus=ls4_cfg.bus == bus.name, ft8_on_bus=ft8_cfg.bus == bus.name)
            allowed = control_period_ms * RTU_MAX_WIRE_FRACTION_OF_PERIOD
            if wire_ms > allowed:
                raise root.fail(
                    f"bus.{bus.name}.baudrate",
                    f"= {bus.baudrate} is too slow for control_period_ms = {control_period_ms}: one cycle's frames take "
                    f"{wire_ms:.0f} ms on the wire, at most {number(allowed)} ms allowed",
                )
    if ft8_cfg.sample_period_ms > control_period_ms:
        raise root.fail(
            "devices.ft8.sample_period_ms",
            f"= {ft8_cfg.sample_period_ms} is longer than control_period_ms = {control_period_ms} (the controller would act on old temperatures)",
        )
    stale_min = PROBE_STALE_MIN_UPDATES * max(ft8_cfg.sample_period_ms, control_period_ms)
    if limits.probe_stale_ms < stale_min:
        raise root.fail(
            "limits.probe_stale_ms",
            f"= {limits.probe_stale_ms} is too short: a probe gets {PROBE_STALE_MIN_UPDATES} sample and control periods "
            f"to update before it is stale (>= {stale_min} ms)",
        )
    if limits.power_tolerance_persist_ms < control_period_ms:
        raise root.fail(
            "limits.power_tolerance_persist_ms",
            f"= {limits.power_tolerance_persist_ms} is shorter than control_period_ms = {control_period_ms}",
        )
    max_hz = 1000.0 / control_period_ms
    if mqtt.telemetry_hz > max_hz:
        raise root.fail(
            "mqtt.telemetry_hz",
            f"= {number(mqtt.telemetry_hz)} is faster than the control cycle ({number(round(max_hz, 3))} Hz at control_period_ms = {control_period_ms})",
        )


"""The HIL environment files (hil_tests/hil_env.py): the shipped ones are valid, a bad field is one
line naming the file and the field, and the switch works end to end: a run pointed at a bad file
stops at once, and a run pointed at real hardware skips every test that needs the bench, saying why,
without touching a device."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import hil_summary
from hil_env import ANY, DEFAULT_ENVS, ENV_DIR, ENV_VAR, EnvError, load_env, pick, selected_envs

HIL_DIR = Path(__file__).resolve().parent
REPO = HIL_DIR.parent

TCP_SIM = '[simulator]\ntime_scale = 4.0\n[bus]\ntransport = "tcp"\n'
RIG_RTU = '[bus]\ntransport = "rtu"\ndevice = "/dev/ttyUSB0"\n'
RIG_TCP = '[bus]\ntransport = "tcp"\nhost = "192.168.10.20"\n'


def write(tmp_path: Path, text: str, name: str = "env.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_shipped_envs_are_valid() -> None:
    tcp, rtu = (load_env(p) for p in DEFAULT_ENVS)
    assert (tcp.name, tcp.bus.transport, tcp.has_bench, tcp.time_scale) == ("sim-tcp", "tcp", True, 4.0)
    assert (rtu.name, rtu.bus.transport, rtu.has_bench, rtu.time_scale) == ("sim-rtu", "rtu", True, 4.0)
    rig = load_env(ENV_DIR / "hardware.example.toml")
    assert (rig.bus.transport, str(rig.bus.device), rig.has_bench, rig.time_scale) == ("rtu", "/dev/ttyUSB0", False, 1.0)
    assert (rig.bus.baudrate, rig.bus.parity, rig.bus.stopbits, rig.watchdog_timeout_ms) == (115200, "E", 1, 500)


def test_defaults_of_a_minimal_rig(tmp_path: Path) -> None:
    env = load_env(write(tmp_path, RIG_TCP, "bench-rig.toml"))
    assert (env.name, env.bus.host, env.bus.port, env.ls4_unit, env.ft8_unit) == ("bench-rig", "192.168.10.20", 502, 1, 2)
    assert env.simulator is None and not env.has_bench and env.time_scale == 1.0


BAD = [
    (RIG_TCP + "port = 70000\n", "bus.port = 70000 is out of range 1..65535"),
    ('[bus]\ntransport = "udp"\n', 'bus.transport = "udp" must be one of "tcp", "rtu"'),
    (RIG_RTU + "baud = 9600\n", "bus.baud: unknown key (known: "),
    ('name = "x"\n', "bus: missing (required table)"),
    ('[bus]\ntransport = "rtu"\n', "bus.device: missing (required; path string)"),
    ('[bus]\ntransport = "rtu"\ndevice = "ttyUSB0"\n', 'bus.device = "ttyUSB0" must be an absolute path'),
    (RIG_RTU + "parity = \"X\"\n", 'bus.parity = "X" must be one of "N", "E", "O"'),
    (RIG_RTU + "host = \"10.0.0.1\"\n", 'bus.host: not used with transport = "rtu"'),
    (RIG_TCP + "[devices]\nft8_unit = 1\n", "devices.ft8_unit = 1 is also devices.ls4_unit"),
    (RIG_TCP + "[devices]\nwatchdog_timeout_ms = 5000\n", "devices.watchdog_timeout_ms = 5000 is out of range 50..2000"),
    (TCP_SIM.replace("4.0", "0"), "simulator.time_scale = 0 is out of range: must be > 0 and <= 1000"),
    (TCP_SIM + 'host = "10.0.0.1"\n', "bus.host: the simulator serves on a free port of 127.0.0.1"),
    ('[simulator]\n[bus]\ntransport = "rtu"\nbaudrate = 9600\n', "bus.baudrate = 9600 is not the simulator's line (115200 8E1)"),
    (TCP_SIM + "[simulator.extra]\n", "simulator.extra: unknown key (known: time_scale)"),
    ('name = "my rig"\n' + RIG_TCP, 'name = "my rig" must be letters, digits, - _ .'),
    ("[bus\n", "TOML syntax error"),
]


@pytest.mark.parametrize(("text", "expected"), BAD, ids=[e.split(" ")[0].split(":")[0] + f"-{i}" for i, (_, e) in enumerate(BAD)])
def test_a_bad_field_is_one_line_naming_the_file_and_the_field(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(EnvError) as caught:
        load_env(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"hil env: {path}: "), message
    assert expected in message, message


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(EnvError, match=r"^hil env: .*nope\.toml: cannot read: No such file or directory$"):
        load_env(tmp_path / "nope.toml")


def test_the_variable_selects_one_or_several_envs_with_distinct_names(tmp_path: Path) -> None:
    rig = write(tmp_path, RIG_RTU, "rig.toml")
    assert [e.name for e in selected_envs({})] == ["sim-tcp", "sim-rtu"]
    assert [e.name for e in selected_envs({ENV_VAR: str(rig)})] == ["rig"]
    both = selected_envs({ENV_VAR: os.pathsep.join([str(DEFAULT_ENVS[0]), str(rig)])})
    assert [e.name for e in both] == ["sim-tcp", "rig"]
    assert pick(both, "rtu").name == "rig" and pick(both, ANY).name == "sim-tcp" and pick(both, "sim-rtu") is None
    twin = write(tmp_path, 'name = "rig"\n' + RIG_TCP, "twin.toml")
    with pytest.raises(EnvError, match="is also the name of"):
        selected_envs({ENV_VAR: os.pathsep.join([str(rig), str(twin)])})


def _pytest(tmp_path: Path, env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, ENV_VAR: str(env_file), hil_summary.SUMMARY_VAR: str(tmp_path / "summary.json")}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", f"--basetemp={tmp_path / 'base'}", *args]
    return subprocess.run(cmd, cwd=REPO, env=environ, capture_output=True, text=True, timeout=120, check=False)


def test_a_run_pointed_at_a_bad_env_stops_with_one_line(tmp_path: Path) -> None:
    bad = write(tmp_path, RIG_TCP + "port = 70000\n", "rig.toml")
    result = _pytest(tmp_path, bad, "--collect-only", "-q", "hil_tests/test_laserd.py")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [f"ERROR: hil env: {bad}: bus.port = 70000 is out of range 1..65535"], result.stderr


def test_on_real_hardware_the_bench_tests_skip_and_say_why(tmp_path: Path) -> None:
    """A rig env with a serial device that does not exist: nothing may touch it, since every selected
    test needs the bench (or the simulator's patient)."""
    rig = write(tmp_path, '[bus]\ntransport = "rtu"\ndevice = "/dev/laserhost-no-such-rig"\n', "rig.toml")
    tests = [
        "hil_tests/test_faults.py::test_fault_during_emission_trips_and_stops_the_light[rig-estop]",
        "hil_tests/test_laserd.py::test_pause_and_resume_by_footswitch[rig]",
        "hil_tests/test_scenarios.py::test_nominal_treatment[single_fibre-FIXED_POWER-rtu]",
        "hil_tests/test_scenarios.py::test_nominal_treatment[single_fibre-FIXED_POWER-tcp]",
    ]
    result = _pytest(tmp_path, rig, "-rs", *tests)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "4 skipped" in out, out
    assert out.count("needs the bench (footswitch, injected faults, ground truth): rig names real devices without one") == 2, out
    assert "needs the simulator (a tissue scenario, its own time scale): rig names real devices" in out, out
    assert "no HIL env for 'tcp' among rig" in out, out

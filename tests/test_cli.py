"""laser-sim as a user runs it: real subprocesses, a real bench socket, real Modbus.

Synchronisation is by what the processes say (the ready line on stderr, exit codes), never by
sleeping.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sim import cli
from sim.ptypair import PtyPair

BIN = Path(sys.executable).parent
LASER_SIM = [str(BIN / "laser-sim")] if (BIN / "laser-sim").exists() else [sys.executable, "-m", "sim.cli"]
READY = re.compile(r"serving .*, on (tcp|rtu) (\S+)")
START_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 30.0


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LASER_SIM, *args], capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, f"expected one line, got {lines!r}"
    return lines[0]


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    where: str  # "127.0.0.1:PORT" or the pty the server serves on
    sock: str
    stderr_lines: list[str]


def _read_ready(process: subprocess.Popen[bytes]) -> tuple[str, list[str]]:
    """Lines from stderr until the ready line, with a deadline; fails with what was said if it dies.

    Reads the pipe's file descriptor directly: a buffered readline() may swallow the ready line
    into its buffer, where select() cannot see it.
    """
    assert process.stderr is not None
    fd = process.stderr.fileno()
    seen: list[str] = []
    pending = b""
    deadline = time.monotonic() + START_TIMEOUT_S
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            pytest.fail(f"laser-sim serve exited ({process.wait()}) before it was ready: {seen}")
        *lines, pending = (pending + chunk).split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace")
            seen.append(line)
            if match := READY.search(line):
                return match.group(2), seen
    process.kill()
    pytest.fail(f"laser-sim serve not ready within {START_TIMEOUT_S} s: {seen}")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for sockets (a Unix socket path must stay under ~100 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="lsim", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _start(*serve_args: str, sock: Path) -> Served:
    process = subprocess.Popen(
        [*LASER_SIM, "serve", *serve_args, "--bench", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    where, seen = _read_ready(process)
    return Served(process=process, where=where, sock=str(sock), stderr_lines=seen)


def _stop(served: Served) -> None:
    if served.process.poll() is None:
        served.process.kill()
        served.process.wait()
    if served.process.stderr is not None:
        served.process.stderr.close()


@pytest.fixture
def served(short_dir: Path) -> Iterator[Served]:
    s = _start("--tcp", "127.0.0.1:0", sock=short_dir / "bench.sock")
    yield s
    _stop(s)


def test_serve_bench_show_and_sigterm(served: Served) -> None:
    assert re.fullmatch(r"127\.0\.0\.1:\d+", served.where) and not served.where.endswith(":0")
    assert (os.stat(served.sock).st_mode & 0o777) == 0o600

    done = run("bench", served.sock, "key", "off")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ls4"]["inputs"]["key_on"] is False

    drift = run("bench", served.sock, "power", "0", "drift", "-25")  # a word that looks like an option
    assert drift.returncode == 0, drift.stderr
    assert json.loads(drift.stdout)["ls4"]["inputs"]["emitter_drift"][0] == -0.25

    refused = run("bench", served.sock, "teleport", "now")
    assert refused.returncode == 1 and refused.stdout == ""
    assert "unknown bench action 'teleport'" in one_line(refused.stderr)

    shown = run("show", "--tcp", served.where, "--once")
    assert shown.returncode == 0, shown.stderr
    assert "LS-4 (unit 1)  STANDBY" in shown.stdout and "FT-8 (unit 2)  MEASURING" in shown.stdout
    assert "inputs: -" in shown.stdout  # the key is off, read back over Modbus

    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=RUN_TIMEOUT_S) == 0
    assert served.process.stderr is not None
    assert b"stopped" in served.process.stderr.read()
    assert not os.path.exists(served.sock)


def test_sigint_stops_cleanly_too(served: Served) -> None:
    served.process.send_signal(signal.SIGINT)
    assert served.process.wait(timeout=RUN_TIMEOUT_S) == 0
    assert not os.path.exists(served.sock)


def test_serve_and_show_over_rtu(short_dir: Path) -> None:
    with PtyPair() as pair:
        s = _start("--rtu", pair.server_end, "--time-scale", "10", sock=short_dir / "b.sock")
        try:
            assert s.where == pair.server_end
            assert run("bench", s.sock, "footswitch", "press").returncode == 0
            shown = run("show", "--rtu", pair.client_end, "--once")
            assert shown.returncode == 0, shown.stderr
            assert "FOOTSWITCH_PRESSED" in shown.stdout and "FT-8 (unit 2)" in shown.stdout
            s.process.send_signal(signal.SIGTERM)
            assert s.process.wait(timeout=RUN_TIMEOUT_S) == 0
        finally:
            _stop(s)


def test_a_second_simulator_on_the_same_bench_socket_is_refused(served: Served) -> None:
    second = run("serve", "--tcp", "127.0.0.1:0", "--bench", served.sock)
    assert second.returncode == 1
    assert "another simulator is listening" in one_line(second.stderr)
    assert run("bench", served.sock, "state").returncode == 0  # the first one still serves


def test_a_port_in_use_is_one_line_and_exit_1(short_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--tcp", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"cannot listen on TCP 127.0.0.1:{port}" in one_line(result.stderr)


def test_bench_without_a_simulator(short_dir: Path) -> None:
    result = run("bench", str(short_dir / "nothing.sock"), "key", "on")
    assert result.returncode == 1 and result.stdout == ""
    assert "no simulator bench at" in one_line(result.stderr)


def test_show_without_a_simulator() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # closed again before show connects: nobody listens
    result = run("show", "--tcp", f"127.0.0.1:{port}", "--once")
    assert result.returncode == 1
    assert "cannot connect" in one_line(result.stderr)


BAD_ARGUMENTS = [
    ["serve"],
    ["serve", "--tcp", "127.0.0.1"],
    ["serve", "--tcp", "127.0.0.1:99999"],
    ["serve", "--tcp", ":502"],
    ["serve", "--tcp", "127.0.0.1:0", "--rtu", "/dev/null"],
    ["serve", "--tcp", "127.0.0.1:0", "--time-scale", "-1"],
    ["serve", "--tcp", "127.0.0.1:0", "--time-scale", "0"],
    ["serve", "--tcp", "127.0.0.1:0", "--time-scale", "nan"],
    ["serve", "--tcp", "127.0.0.1:0", "--seed", "x"],
    ["serve", "--rtu", "/dev/no-such-serial-device"],
    ["serve", "--tcp", "127.0.0.1:0", "--bench", "/no/such/dir/b.sock"],
    ["bench"],
    ["bench", "/tmp/x.sock"],
    ["show", "--rtu", "/dev/no-such-serial-device", "--once"],
    ["show", "--once"],
    ["teleport"],
    [],
]


@pytest.mark.parametrize("argv", BAD_ARGUMENTS, ids=[" ".join(a) or "nothing" for a in BAD_ARGUMENTS])
def test_bad_arguments_are_one_line_and_exit_2(argv: list[str]) -> None:
    result = run(*argv)
    assert result.returncode == 2, result
    assert one_line(result.stderr).startswith("laser-sim")
    assert result.stdout == ""


# --- in-process: delegation to modules other helpers write -------------------------------------------


def test_ablate_delegates_every_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    fake = types.ModuleType("sim.tissue.ablate")
    fake.main = lambda argv: seen.append(list(argv)) or 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sim.tissue", types.ModuleType("sim.tissue"))
    monkeypatch.setitem(sys.modules, "sim.tissue.ablate", fake)
    assert cli.main(["ablate", "--scenario", "s.toml", "--power", "0=5", "--json"]) == 3
    assert seen == [["--scenario", "s.toml", "--power", "0=5", "--json"]]


def test_a_bad_scenario_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def load_thermal_model(path: str) -> None:
        raise ValueError(f"{path}: [tissue] is missing\nsecond line")

    fake = types.ModuleType("sim.tissue")
    fake.load_thermal_model = load_thermal_model  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sim.tissue", fake)
    scenario = tmp_path / "bad.toml"
    scenario.write_text("nonsense")
    assert cli.main(["serve", "--tcp", "127.0.0.1:0", "--scenario", str(scenario)]) == 2
    assert "[tissue] is missing second line" in one_line(capsys.readouterr().err)


def test_serve_a_shipped_scenario(short_dir: Path) -> None:
    tissue = pytest.importorskip("sim.tissue", reason="the tissue model is another module's")
    name = tissue.shipped_scenarios()[0].stem
    s = _start("--tcp", "127.0.0.1:0", "--scenario", name, sock=short_dir / "b.sock")
    try:
        shown = run("show", "--tcp", s.where, "--once")
        assert shown.returncode == 0, shown.stderr
        s.process.send_signal(signal.SIGTERM)
        assert s.process.wait(timeout=RUN_TIMEOUT_S) == 0
    finally:
        _stop(s)
    missing = run("serve", "--tcp", "127.0.0.1:0", "--scenario", str(short_dir / "none.toml"))
    assert missing.returncode == 2 and "no such file" in one_line(missing.stderr)

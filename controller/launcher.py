"""laser-sim and laserd as separate processes, joined by real Modbus: for `make demo` and the HIL tests.

Both run at the same accelerated time scale. Callers wait for conditions (with wall-clock
deadlines), never for fixed times. The simulator's bench socket is the only thing used here
that real hardware would not have.
"""

from __future__ import annotations

import asyncio
import os
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .operator import request
from sim.bench import bench_request_sync
from sim.ptypair import PtyPair

BIN = Path(sys.executable).parent
TIME_SCALE = 4.0  # device time runs 4x faster; the host's 150 ms overrun bound is then ~37 ms of wall time
WATCHDOG_TIMEOUT_MS = 1000
START_TIMEOUT_S = 20.0
_READY = re.compile(r" on (tcp|rtu) (\S+)")


def wait_until(condition: Callable[[], Any], *, timeout_s: float = 20.0, what: str = "condition", poll_s: float = 0.02) -> Any:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout_s` of wall time."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


@dataclass
class SimProcess:
    """`laser-sim serve` on TCP (a free port) or on one end of a socat pty pair."""

    transport: str
    tmp: Path
    time_scale: float = TIME_SCALE
    scenario: str | None = None
    proc: subprocess.Popen[str] | None = None
    pty: PtyPair | None = None
    where: str = ""  # what the host connects to: HOST:PORT or the other pty end
    bench_path: str = ""
    stderr_lines: list[str] = field(default_factory=list)

    def start(self) -> SimProcess:
        self.bench_path = str(self.tmp / "bench.sock")
        cmd = [str(BIN / "laser-sim"), "serve", "--bench", self.bench_path, "--time-scale", str(self.time_scale)]
        if self.scenario:
            cmd += ["--scenario", self.scenario]
        if self.transport == "tcp":
            cmd += ["--tcp", "127.0.0.1:0"]
        else:
            self.pty = PtyPair().start()
            cmd += ["--rtu", self.pty.server_end]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        assert self.proc.stderr is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise AssertionError(f"laser-sim exited before serving: {''.join(self.stderr_lines)}")
            self.stderr_lines.append(line)
            if match := _READY.search(line):
                self.where = match.group(2) if self.transport == "tcp" else self.pty.client_end  # type: ignore[union-attr]
                return self
        raise AssertionError("laser-sim did not say where it serves")

    def bench(self, *words: object) -> dict[str, Any]:
        reply = bench_request_sync(self.bench_path, [str(w) for w in words])
        return reply.get("result", reply)

    def truth(self) -> dict[str, Any]:
        return self.bench("state")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.pty is not None:
            self.pty.stop()


def write_config(
    tmp: Path,
    sim: SimProcess | None,
    *,
    watchdog_timeout_ms: int = WATCHDOG_TIMEOUT_MS,
    log_level: str = "info",
    bus_toml: str | None = None,
    ls4_unit: int = 1,
    ft8_unit: int = 2,
) -> Path:
    """laserd's config for the devices `sim` serves. `bus_toml`: the body of [bus.main] instead of
    the simulator's (hil_tests: a bus named by a HIL environment file, real hardware included)."""
    if bus_toml is not None:
        bus = bus_toml if bus_toml.endswith("\n") else bus_toml + "\n"
    elif sim is None:
        raise ValueError("write_config needs the simulator, or bus_toml")
    elif sim.transport == "tcp":
        host, port = sim.where.rsplit(":", 1)
        bus = f'transport = "tcp"\nhost = "{host}"\nport = {port}\nrequest_timeout_ms = 80\n'
    else:
        bus = f'transport = "rtu"\ndevice = "{sim.where}"\nbaudrate = 115200\nparity = "E"\nrequest_timeout_ms = 80\n'
    text = f"""
control_period_ms = 100

[bus.main]
{bus}reconnect_after_failures = 3

[devices.ls4]
bus = "main"
unit_id = {ls4_unit}
watchdog_timeout_ms = {watchdog_timeout_ms}

[devices.ft8]
bus = "main"
unit_id = {ft8_unit}
sample_period_ms = 50

[limits]
max_channel_power_w = 10.0
max_fibre_energy_j = 9000.0
max_session_energy_j = 36000.0
max_session_duration_s = 3600
tip_temp_cap_c = 95.0
protected_max_temp_c = 44.0
protected_max_cem43_min = 10.0
probe_stale_ms = 500
max_temp_rate_c_per_s = 30.0
power_tolerance_fraction = 0.20
power_tolerance_persist_ms = 200
energy_crosscheck_tolerance_fraction = 0.05
energy_crosscheck_tolerance_j = 5.0

[journal]
path = "{tmp / 'journal.sqlite'}"

[socket]
path = "{tmp / 'laserd.sock'}"

[logging]
level = "{log_level}"
"""
    path = tmp / "laserd.toml"
    path.write_text(text)
    return path


def fixed_plan(*, power_w: float = 3.0, budget_j: float = 30.0, channels: tuple[int, ...] = (0, 1), illuminations: int = 1) -> str:
    """A FIXED_POWER plan on the default thermal model's probes (probe c near fibre c)."""
    fibres = "".join(
        f'\n[[fibres]]\nchannel = {c}\nmode = "FIXED_POWER"\npower_w = {power_w}\nenergy_budget_j = {budget_j}\n' for c in channels
    )
    probes = "".join(f'\n[[probes]]\nchannel = {c}\nrole = "tip"\nfibre = {c}\n' for c in channels)
    session_j = budget_j * len(channels) * illuminations + 1.0
    return f"""
[session]
patient_id = "HIL"
max_session_energy_j = {session_j}
max_duration_s = 3600
tip_temp_cap_c = 95.0
illuminations = {illuminations}
endpoint = "all_fibres_at_budget"
{fibres}{probes}"""


@dataclass
class DaemonProcess:
    config: Path
    tmp: Path
    time_scale: float = TIME_SCALE
    env: dict[str, str] | None = None  # extra environment (e.g. NOTIFY_SOCKET for systemd tests)
    proc: subprocess.Popen[str] | None = None
    log_path: Path | None = None

    @property
    def socket(self) -> Path:
        return self.tmp / "laserd.sock"

    def start(self, *, wait_ready: bool = True) -> DaemonProcess:
        self.log_path = self.tmp / f"laserd-{time.monotonic_ns()}.log"
        log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [str(BIN / "laserd"), "--config", str(self.config), "--time-scale", str(self.time_scale)],
            stderr=log,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(self.env or {})},
        )
        log.close()
        if wait_ready:
            wait_until(self._answers, timeout_s=START_TIMEOUT_S, what=f"laserd to answer (log: {self.log_text()[-2000:]})")
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"laserd exited with {self.proc.returncode}: {self.log_text()[-2000:]}")
        if not self.socket.exists():
            return False
        try:
            return bool(self.ctl("status").get("ok"))
        except OSError:
            return False

    def ctl(self, cmd: str, **args: Any) -> dict[str, Any]:
        return asyncio.run(request(self.socket, cmd, **args))

    def ok(self, cmd: str, **args: Any) -> dict[str, Any]:
        reply = self.ctl(cmd, **args)
        assert reply.get("ok"), f"laserctl {cmd} refused: {reply.get('error')}"
        return reply["result"]

    def status(self) -> dict[str, Any]:
        return self.ok("status")

    def session_state(self) -> str:
        return self.status()["session_state"]

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 20.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def laserctl(socket: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "laserctl"), "--socket", str(socket), *args], capture_output=True, text=True, timeout=30, check=False)


def read_json(text: str) -> Any:
    return json.loads(text)


"""laserd speaks systemd's notify protocol: READY=1 once the devices check out, WATCHDOG=1 while
the control cycle is healthy, STOPPING=1 on SIGTERM. A real datagram socket stands in for systemd."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.launcher import wait_until
from hil_env import ANY, Bench, Target

WATCHDOG_USEC = 400_000


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    yield sock, path
    sock.close()


def _drain(sock: socket.socket, into: list[str]) -> list[str]:
    while True:
        try:
            into.extend(sock.recv(4096).decode().splitlines())
        except BlockingIOError:
            return into


@pytest.mark.parametrize("target", [ANY], indirect=True)
def test_ready_watchdog_and_stopping(target: Target, tmp_path: Path, notify_socket) -> None:
    sock, path = notify_socket
    daemon = target.daemon(tmp_path, environ={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}).start()
    try:
        messages: list[str] = []
        wait_until(lambda: "READY=1" in _drain(sock, messages), what="READY=1")
        ready_at = messages.index("READY=1")
        assert any(m.startswith("STATUS=") for m in messages[:ready_at])  # said what it was doing before
        wait_until(lambda: _drain(sock, messages).count("WATCHDOG=1") >= 3, what="three WATCHDOG=1")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
        _drain(sock, messages)
        assert "STOPPING=1" in messages[ready_at:]
    finally:
        daemon.stop()


@pytest.mark.parametrize("target", [ANY], indirect=True)
def test_no_ready_while_the_devices_do_not_answer(bench: Bench, target: Target, tmp_path: Path, notify_socket) -> None:
    sock, path = notify_socket
    bench("reboot", "all", 600)  # the bus stays silent for ten device minutes
    daemon = target.daemon(tmp_path, environ={"NOTIFY_SOCKET": str(path)}).start(wait_ready=False)
    try:
        wait_until(lambda: "devices-unreachable" in daemon.log_text(), what="laserd to report the devices unreachable")
        assert "READY=1" not in _drain(sock, [])
        assert not daemon.socket.exists()  # no operator socket before the devices check out
    finally:
        daemon.stop()
    assert daemon.proc is not None and daemon.proc.returncode == 0

"""laserd and laserctl at the command line: every bad input is one line and a non-zero exit."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from controller.operator import CommandError, OperatorServer, request

BIN = Path(sys.executable).parent
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*args], capture_output=True, text=True, timeout=60, check=False)


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda t: t.replace("control_period_ms = 100", "control_period_ms = 5"), "control_period_ms"),
        (lambda t: t.replace("port = 5020", 'port = "x"'), "bus.main.port"),
        (lambda t: t + "\n[limits2]\nx = 1\n", "limits2"),
        (lambda t: t.replace("tip_temp_cap_c = 95.0", "tip_temp_cap_c = 300.0"), "limits.tip_temp_cap_c"),
        (lambda t: t.replace("[devices.ls4]", "[devices.ls4]\nfirmware = 3"), "devices.ls4.firmware"),
    ],
)
def test_laserd_refuses_a_bad_config_in_one_line_and_never_starts(tmp_path: Path, edit, field: str) -> None:
    config = tmp_path / "laserd.toml"
    config.write_text(edit((EXAMPLES / "laserd.toml").read_text()))
    result = _run(str(BIN / "laserd"), "--config", str(config))
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert line.startswith("laserd: config:") and field in line
    assert not (tmp_path / "run").exists()  # no journal, no socket: it never started


def test_laserd_missing_config_and_bad_time_scale(tmp_path: Path) -> None:
    missing = _run(str(BIN / "laserd"), "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "nope.toml" in _one_line(missing.stderr)
    scale = _run(str(BIN / "laserd"), "--config", str(EXAMPLES / "laserd.toml"), "--time-scale", "0")
    assert scale.returncode == 2 and "time-scale" in _one_line(scale.stderr)


def test_laserctl_without_a_daemon_says_so_in_one_line(tmp_path: Path) -> None:
    result = _run(str(BIN / "laserctl"), "--socket", str(tmp_path / "laserd.sock"), "status")
    assert result.returncode == 3
    assert "not running" in _one_line(result.stderr)


def test_laserctl_needs_a_socket_and_a_readable_plan(tmp_path: Path) -> None:
    no_socket = subprocess.run([str(BIN / "laserctl"), "status"], capture_output=True, text=True, env={"PATH": "/usr/bin"}, check=False)
    assert no_socket.returncode == 2 and "--socket" in _one_line(no_socket.stderr)
    no_plan = _run(str(BIN / "laserctl"), "--socket", str(tmp_path / "s"), "load", str(tmp_path / "plan.toml"))
    assert no_plan.returncode == 2 and "cannot read plan" in _one_line(no_plan.stderr)


async def test_operator_socket_answers_bad_requests_in_one_line(tmp_path: Path) -> None:
    async def handler(cmd: str, args: dict) -> dict:
        if cmd == "boom":
            raise RuntimeError("kaput")
        if cmd == "refuse":
            raise CommandError("refused: because")
        return {"echo": args}

    path = tmp_path / "op.sock"
    server = OperatorServer(path=path, handler=handler)
    await server.start()
    try:
        assert oct(path.stat().st_mode & 0o777) == "0o660"
        assert await request(path, "x", a=1) == {"ok": True, "result": {"echo": {"a": 1}}}
        assert await request(path, "refuse") == {"ok": False, "error": "refused: because"}
        boom = await request(path, "boom")
        assert boom["ok"] is False and "kaput" in boom["error"]
        reader, writer = await asyncio.open_unix_connection(str(path))
        for bad in (b"not json\n", b"[1, 2]\n", b'{"cmd": 5}\n'):
            writer.write(bad)
            await writer.drain()
            reply = json.loads(await reader.readline())
            assert reply["ok"] is False and "\n" not in reply["error"]
        writer.close()
        assert await request(path, "x") == {"ok": True, "result": {"echo": {}}}  # still serving
    finally:
        await server.stop()
    assert not path.exists()

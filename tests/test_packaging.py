"""The systemd unit: hardened (exposure <= 2.0) while it can still open the serial device."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "packaging" / "laserd.service"
MAX_EXPOSURE = 2.0


def _settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_is_type_notify_with_watchdog_and_sigterm() -> None:
    s = _settings()
    assert s["Type"] == ["notify"]
    assert s["WatchdogSec"] and s["KillSignal"] == ["SIGTERM"]
    assert "laserd --config" in s["ExecStart"][0]


def test_unit_can_open_serial_devices() -> None:
    s = _settings()
    assert "PrivateDevices" not in s or s["PrivateDevices"] == ["no"]
    assert any("ttyUSB" in d and "rw" in d for d in s["DeviceAllow"])
    assert "dialout" in " ".join(s.get("SupplementaryGroups", []))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_security_exposure_is_at_most_2() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNIT)], capture_output=True, text=True, check=False
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE

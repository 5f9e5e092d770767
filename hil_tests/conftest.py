"""Fixtures for the hardware-in-the-loop tests: a simulator process and a daemon process per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.launcher import DaemonProcess, SimProcess, write_config


@pytest.fixture(params=["tcp", "rtu"])
def sim(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SimProcess]:
    process = SimProcess(transport=request.param, tmp=tmp_path).start()
    yield process
    process.stop()


@pytest.fixture
def daemon(sim: SimProcess, tmp_path: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(config=write_config(tmp_path, sim), tmp=tmp_path).start()
    yield process
    process.stop()

"""Fixtures for the hardware-in-the-loop tests: a simulator process and a daemon process per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.launcher import DaemonProcess, SimProcess, write_config
from mosquitto_broker import Broker, TlsFiles, available, make_password_file, make_tls_files


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


# ----- MQTT: real mosquitto processes (hil_tests/mosquitto_broker.py) -------------------------


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """A plain broker (anonymous) on a free port of 127.0.0.1."""
    if (missing := available()) is not None:
        pytest.fail(f"the MQTT tests need a real mosquitto: {missing}")
    broker = Broker(tmp=tmp_path / "mosquitto").start()
    yield broker
    broker.stop()


@pytest.fixture
def mosquitto_tls(tmp_path: Path, tls_files: TlsFiles) -> Iterator[Broker]:
    """A TLS broker (server cert for 127.0.0.1 by `tls_files.ca_cert`) with a password file."""
    if (missing := available()) is not None:
        pytest.fail(f"the MQTT tests need a real mosquitto: {missing}")
    directory = tmp_path / "mosquitto-tls"
    broker = Broker(tmp=directory, tls_files=tls_files, password_file=make_password_file(directory / "passwd")).start()
    yield broker
    broker.stop()

"""Fixtures for the hardware-in-the-loop tests: the target (devices named by a HIL env file), its
bench when there is one, a daemon process per test, real mosquitto brokers, and the run's summary.

The target comes from LASERHOST_HIL_ENV (hil_tests/hil_env.py, docs/hil.md); unset, every test
that uses `target` runs once per simulator env (sim-tcp, sim-rtu). A test parametrizes `target`
itself (indirectly) with an env name, a transport ("tcp", "rtu") or hil_env.ANY to run on fewer.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import hil_summary
from controller.launcher import DaemonProcess
from hil_env import ENV_VAR, Bench, EnvError, HilEnv, Target, pick, selected_envs
from hil_summary import Row
from mosquitto_broker import Broker, TlsFiles, available, make_password_file, make_tls_files

ENVS_KEY = pytest.StashKey[list[HilEnv]]()
ROWS_KEY = pytest.StashKey[list[Row]]()
ROW_KEY = pytest.StashKey[Row]()


def pytest_configure(config: pytest.Config) -> None:
    try:
        config.stash[ENVS_KEY] = selected_envs()
    except EnvError as err:
        raise pytest.UsageError(str(err)) from None
    config.stash[ROWS_KEY] = []


def _parametrizes(metafunc: pytest.Metafunc, name: str) -> bool:
    for marker in metafunc.definition.iter_markers(name="parametrize"):
        names = marker.args[0] if marker.args else marker.kwargs.get("argnames", ())
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",")]
        if name in names:
            return True
    return False


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test on a target runs once per selected env, unless it chose its targets itself."""
    if "target" in metafunc.fixturenames and not _parametrizes(metafunc, "target"):
        names = [e.name for e in metafunc.config.stash[ENVS_KEY]]
        metafunc.parametrize("target", names, indirect=True)


# ----- the target ------------------------------------------------------------------------------------

StartTarget = Callable[..., Target]


@pytest.fixture
def targets(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StartTarget]:
    """`targets(selector, scenario=None, time_scale=None)`: start the target an env name, a transport
    or hil_env.ANY selects (skip if no selected env matches); stopped after the test."""
    envs = request.config.stash[ENVS_KEY]
    started: list[Target] = []

    def start(selector: str, *, scenario: str | None = None, time_scale: float | None = None) -> Target:
        env = pick(envs, selector)
        if env is None:
            pytest.skip(f"no HIL env for {selector!r} among {', '.join(e.name for e in envs)} (set {ENV_VAR})")
        if (scenario is not None or time_scale is not None) and env.simulator is None:
            pytest.skip(f"needs the simulator (a tissue scenario, its own time scale): {env.name} names real devices")
        target = Target(env, tmp_path, scenario=scenario, time_scale_override=time_scale).start()
        started.append(target)
        return target

    yield start
    for target in reversed(started):
        target.stop()


@pytest.fixture
def target(request: pytest.FixtureRequest, targets: StartTarget) -> Target:
    return targets(request.param)


@pytest.fixture
def bench(target: Target) -> Bench:
    """The physical world's hand and the ground truth; skips where the env has no bench."""
    if target.bench is None:
        pytest.skip(f"needs the bench (footswitch, injected faults, ground truth): {target.env.name} names real devices without one")
    return target.bench


@pytest.fixture
def memory_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory in memory (tmpfs /dev/shm, else tmp_path) for the journal of an accelerated run:
    the disk's fsync (3-12 ms here, spikes of 25 ms and more) is K times longer in device time at
    xK, and would decide late cycles that at x1 are a non-event. Removed after the test."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path
    path = Path(tempfile.mkdtemp(prefix="laserhost-hil-", dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(target: Target, tmp_path: Path) -> Iterator[DaemonProcess]:
    process = target.daemon(tmp_path).start()
    yield process
    process.stop()


# ----- the summary -------------------------------------------------------------------------------------


@pytest.fixture
def hil_row(request: pytest.FixtureRequest) -> Row:
    """This test's row of the HIL summary: fill in what it measured (hil_tests/hil_summary.py)."""
    row = Row(nodeid=request.node.nodeid)
    request.node.stash[ROW_KEY] = row
    request.config.stash[ROWS_KEY].append(row)
    return row


def _reason(report: pytest.TestReport) -> str | None:
    if hasattr(report, "wasxfail"):
        return str(report.wasxfail) or None
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (path, line, reason)
        return str(longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message).splitlines()[0][:200]
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # noqa: ANN201
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    row = item.stash.get(ROW_KEY, None)
    if row is None:
        return
    target = getattr(item, "funcargs", {}).get("target")
    if row.transport == "-" and isinstance(target, Target):
        row.on(target)
    if report.when == "call":
        row.wall_s = round(report.duration, 2)
        if hasattr(report, "wasxfail"):
            row.outcome = "xfailed" if report.skipped else "xpassed"
        else:
            row.outcome = report.outcome
        if not report.passed or hasattr(report, "wasxfail"):
            row.reason = _reason(report)
    elif not report.passed and (report.when == "setup" or row.outcome in ("passed", "not run")):
        row.outcome = "skipped" if report.skipped else "error"
        row.reason = _reason(report)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    rows = config.stash.get(ROWS_KEY, [])
    if not rows:
        return
    terminalreporter.write_sep("=", f"HIL summary ({len(rows)} rows)")
    for line in hil_summary.table(rows):
        terminalreporter.write_line(line)
    path = hil_summary.write_json(rows, envs=config.stash[ENVS_KEY])
    terminalreporter.write_line(f"written to {path}")


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

"""What laserd calls healthy (and so feeds systemd's watchdog for): a recent cycle and every bus up."""

from __future__ import annotations

from pathlib import Path

from controller.config import load_config
from controller.daemon import HEALTHY_CYCLES, Daemon, link_settings
from controller.modbus_link import BusLink
from controller.sdnotify import Notifier

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "laserd.toml"


class UpLink(BusLink):
    """A bus whose connection is up (the real one needs a server; health only asks `up`)."""

    @property
    def up(self) -> bool:
        return True


def _daemon() -> Daemon:
    config = load_config(EXAMPLE)
    daemon = Daemon(config, time_scale=1.0)
    bus = config.buses[0]
    daemon.links = {bus.name: UpLink(link_settings(bus))}
    return daemon


def test_no_cycle_yet_is_not_healthy() -> None:
    assert not _daemon().healthy()


def test_a_recent_cycle_with_the_bus_up_is_healthy() -> None:
    daemon = _daemon()
    daemon.stats.last_cycle_end_s = daemon.timebase.now_s()
    assert daemon.healthy()


def test_a_stale_cycle_is_not_healthy() -> None:
    daemon = _daemon()
    daemon.stats.last_cycle_end_s = daemon.timebase.now_s() - (HEALTHY_CYCLES + 1) * daemon.period_s
    assert not daemon.healthy()


def test_a_bus_down_is_not_healthy() -> None:
    daemon = _daemon()
    daemon.stats.last_cycle_end_s = daemon.timebase.now_s()
    bus = daemon.config.buses[0]
    daemon.links[bus.name] = BusLink(link_settings(bus))  # never connected
    assert not daemon.healthy()


def test_notifier_reads_systemd_environment(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "n"), "WATCHDOG_USEC": "2000000"})
    assert n.enabled and n.watchdog_s == 2.0
    assert Notifier({}).watchdog_s is None and not Notifier({}).notify("READY=1")
    assert Notifier({"WATCHDOG_USEC": "5", "WATCHDOG_PID": "1"}).watchdog_s is None  # meant for another process

"""systemd's notify protocol (sd_notify(3)) without a dependency: one datagram per message."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends READY=1, WATCHDOG=1, STOPPING=1, STATUS=... when run under systemd; a no-op otherwise."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        watchdog_ok = usec is not None and usec.isdigit() and (pid is None or pid == str(os.getpid()))
        #: systemd's watchdog interval in seconds, or None when it does not watch us
        self.watchdog_s: float | None = int(usec) / 1e6 if watchdog_ok and int(usec) > 0 else None
        if self._address and self._address.startswith("@"):
            self._address = "\0" + self._address[1:]

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        if self._address is None:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(self._address)
            sock.sendall("\n".join(lines).encode())
        return True

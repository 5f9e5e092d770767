"""A connected pair of pseudo-terminals from socat: an RS-485 null-modem cable without hardware.

The simulator serves Modbus RTU on one end and the host (or a test) opens the other. A pty
ignores baud rate and parity, so both sides still set 115200 8E1 as they would on a real line.
"""

from __future__ import annotations

import collections
import os
import re
import select
import shutil
import subprocess
import threading
import time


SOCAT_ARGS = ("-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0")
_PTY_LINE = re.compile(rb"PTY is (\S+)")
_READY_LINE = b"starting data transfer loop"


class PtyPairError(RuntimeError):
    """socat is missing, or did not set up the pair (one-line message)."""


class PtyPair:
    """`with PtyPair() as pair:` gives `pair.server_end` and `pair.client_end`, two connected pty paths."""

    def __init__(self, *, socat: str = "socat", start_timeout_s: float = 5.0) -> None:
        self._socat = socat
        self._start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._drain: threading.Thread | None = None
        self._log: collections.deque[str] = collections.deque(maxlen=20)
        self.server_end = ""
        self.client_end = ""

    def start(self) -> PtyPair:
        """Start socat and return once it reports both ptys and its transfer loop (no fixed waits)."""
        if self._process is not None:
            raise PtyPairError("pty pair already started")
        executable = shutil.which(self._socat)
        if executable is None:
            raise PtyPairError(f"{self._socat} not found: install socat (apt-get install socat)")
        self._process = subprocess.Popen([executable, *SOCAT_ARGS], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            self.server_end, self.client_end = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        # socat may still write to stderr (on exit); drain it so it can never block on a full pipe
        self._drain = threading.Thread(target=self._drain_stderr, name="socat-stderr", daemon=True)
        self._drain.start()
        return self

    def _wait_ready(self) -> tuple[str, str]:
        assert self._process is not None and self._process.stderr is not None
        fd = self._process.stderr.fileno()
        deadline = time.monotonic() + self._start_timeout_s
        pending = b""
        paths: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PtyPairError(f"socat did not set up a pty pair within {self._start_timeout_s:g} s")
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                last = self._log[-1] if self._log else "no output"
                raise PtyPairError(f"socat exited before setting up the pty pair: {last}")
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._log.append(line.decode(errors="replace"))
                if match := _PTY_LINE.search(line):
                    paths.append(match.group(1).decode())
                elif _READY_LINE in line and len(paths) == 2:
                    return paths[0], paths[1]

    def _drain_stderr(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for line in self._process.stderr:
            self._log.append(line.decode(errors="replace").rstrip())

    def stop(self) -> None:
        """Stop socat (idempotent). Both pty paths disappear."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._drain is not None:
            self._drain.join(timeout=5)
            self._drain = None
        if process.stderr is not None:
            process.stderr.close()

    def __enter__(self) -> PtyPair:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

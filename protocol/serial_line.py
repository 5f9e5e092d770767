"""Serial line settings shared by the host and the simulator.

The datasheets fix 115200 baud 8E1. A pty (the socat pair the tests and the demo use) carries
bytes, not bits on a wire, so parity means nothing there, and some kernels refuse it outright.
"""

from __future__ import annotations

import os
import termios

import serial


def is_pty(path: str) -> bool:
    return os.path.realpath(path).startswith("/dev/pts/")


def line_parity(port: str, parity: str, *, baudrate: int) -> str:
    """The parity to open `port` with: `parity`, unless `port` is a pty that refuses it, then "N".

    Linux stores and ignores a parity setting on a pty, but some kernels (a sandboxed 6.x, for one)
    refuse PARENB on a pty with EINVAL, and pyserial then fails on its second reconfiguration.
    A pty carries bytes, not bits on a wire, so 8N1 on a pty changes nothing the devices see.
    A real serial port is never downgraded: if it refuses 8E1, opening it fails loudly.
    """
    if parity == serial.PARITY_NONE or not is_pty(port):
        return parity
    try:
        # open, then reconfigure as pymodbus's SerialTransport does (timeouts to 0)
        with serial.Serial(port, baudrate=baudrate, parity=parity, timeout=1) as probe:
            probe.timeout = 0
            probe.write_timeout = 0
    except (termios.error, serial.SerialException, ValueError):
        return serial.PARITY_NONE
    return parity

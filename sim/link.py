"""Link faults the bench can inject between the served devices and the host."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LinkFaults:
    """Mutable switches read by the Modbus server for every response.

    delay_ms: every response is held back this long (wall milliseconds) before it is sent.
    drop_next: this many responses are not sent at all (the request is still carried out).
    corrupt_next: this many responses are sent with one byte flipped (a CRC error on RTU,
      a garbled frame on TCP).
    silent_until_s: device time until which the devices do not answer at all (reboot).
    """

    delay_ms: float = 0.0
    drop_next: int = 0
    corrupt_next: int = 0
    silent_until_s: float = 0.0
    dropped: int = 0
    corrupted: int = 0

    def clear(self) -> None:
        self.delay_ms = 0.0
        self.drop_next = 0
        self.corrupt_next = 0
        self.silent_until_s = 0.0

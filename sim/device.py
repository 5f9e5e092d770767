"""What the Modbus server needs from a simulated device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from protocol.registers import RegisterMap
from protocol.validation import ExceptionCode


@dataclass(frozen=True)
class Identity:
    """Function 43/14 (read device identification) basic objects."""

    vendor_name: str
    product_code: str
    revision: str


class ServedDevice(Protocol):
    unit_id: int
    regmap: RegisterMap
    identity: Identity

    def input_words(self) -> list[int]:
        """The whole input-register block, as the device shows it now."""
        ...

    def holding_words(self) -> list[int]:
        """The whole holding-register block, as a function-03 read shows it now."""
        ...

    def write_holding(self, address: int, values: list[int]) -> ExceptionCode | None:
        """Apply a function-06/16 write whose addresses are all in the map.

        The request is judged whole: on any exception nothing is written.
        """
        ...

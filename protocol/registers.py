"""Declarative register maps and the codecs that turn 16-bit words into values.

A device's map is a tuple of `Register` rows copied from its datasheet. The
simulator builds its register image from the same rows that the host decodes
with, so the two can never disagree about an address, a type or a range.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

WORD_MASK = 0xFFFF
INT16_MIN = -0x8000
INT16_MAX = 0x7FFF
UINT32_MAX = 0xFFFF_FFFF


class CodecError(ValueError):
    """A value cannot be encoded into, or decoded from, Modbus words."""


class Table(enum.Enum):
    INPUT = "input"  # function 04, read-only
    HOLDING = "holding"  # functions 03, 06, 16


class Kind(enum.Enum):
    UINT16 = "uint16"
    INT16 = "int16"
    UINT32 = "uint32"  # two words, high word first
    BITS = "bits"
    ENUM = "enum"
    RESERVED = "reserved"  # in the map, reads as 0

    @property
    def words(self) -> int:
        return 2 if self is Kind.UINT32 else 1


@dataclass(frozen=True, kw_only=True)
class Register:
    """One datasheet row. An array row (`length` > 1) covers `length` elements of `kind.words` words."""

    name: str
    address: int
    kind: Kind
    table: Table
    length: int = 1
    scale: float = 1.0  # engineering value = raw * scale
    unit: str = ""
    minimum: int | None = None  # raw range a write may use (holding only)
    maximum: int | None = None
    maximum_ref: str | None = None  # the range's top is another register's value (same element)
    bits: type[enum.IntFlag] | None = None  # for BITS: the defined bits; any other bit is reserved
    enum_type: type[enum.IntEnum] | None = None  # for ENUM
    default: int = 0
    description: str = ""

    @property
    def words(self) -> int:
        return self.kind.words * self.length

    @property
    def end(self) -> int:
        """One past the last address of this row."""
        return self.address + self.words

    def element_address(self, index: int) -> int:
        if not 0 <= index < self.length:
            raise IndexError(f"{self.name}[{index}] is outside 0..{self.length - 1}")
        return self.address + index * self.kind.words

    def allowed_bits(self) -> int:
        if self.bits is None:
            return WORD_MASK
        mask = 0
        for flag in self.bits:
            mask |= int(flag)
        return mask


@dataclass(frozen=True)
class RegisterMap:
    """All rows of one device, with lookups by name and by address."""

    device: str
    rows: tuple[Register, ...]

    def __post_init__(self) -> None:
        for table in Table:
            taken: dict[int, str] = {}
            for row in self.table_rows(table):
                for addr in range(row.address, row.end):
                    if addr in taken:
                        raise ValueError(f"{self.device}: {row.name} overlaps {taken[addr]} at {addr}")
                    taken[addr] = row.name

    def table_rows(self, table: Table) -> tuple[Register, ...]:
        return tuple(sorted((r for r in self.rows if r.table is table), key=lambda r: r.address))

    def __getitem__(self, name: str) -> Register:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"{self.device} has no register {name!r}")

    def span(self, table: Table) -> tuple[int, int]:
        """(first address, word count) of the table's contiguous block."""
        rows = self.table_rows(table)
        first, end = rows[0].address, rows[-1].end
        return first, end - first

    def row_at(self, table: Table, address: int) -> tuple[Register, int] | None:
        """The row covering `address` and the element index within it, or None outside the map."""
        for row in self.table_rows(table):
            if row.address <= address < row.end:
                return row, (address - row.address) // row.kind.words
        return None

    def defaults(self, table: Table) -> dict[str, Any]:
        return {
            row.name: (row.default if row.length == 1 else (row.default,) * row.length)
            for row in self.table_rows(table)
        }


# --- word codecs -------------------------------------------------------------


def encode_uint16(value: int) -> int:
    if not 0 <= value <= WORD_MASK:
        raise CodecError(f"uint16 out of range: {value}")
    return value


def encode_int16(value: int) -> int:
    if not INT16_MIN <= value <= INT16_MAX:
        raise CodecError(f"int16 out of range: {value}")
    return value & WORD_MASK


def decode_int16(word: int) -> int:
    return word - 0x10000 if word & 0x8000 else word


def encode_uint32(value: int) -> tuple[int, int]:
    if not 0 <= value <= UINT32_MAX:
        raise CodecError(f"uint32 out of range: {value}")
    return (value >> 16) & WORD_MASK, value & WORD_MASK


def decode_uint32(high: int, low: int) -> int:
    return (high << 16) | low


def encode_scaled(value: float, scale: float, *, signed: bool) -> int:
    """Engineering value to one word, rounded to the nearest step of `scale`."""
    raw = round(value / scale)
    return encode_int16(raw) if signed else encode_uint16(raw)


def decode_scaled(word: int, scale: float, *, signed: bool) -> float:
    raw = decode_int16(word) if signed else word
    return raw * scale


def encode_bits(flags: int, allowed: int) -> int:
    if flags & ~allowed & WORD_MASK or not 0 <= flags <= WORD_MASK:
        raise CodecError(f"bits 0x{flags:04X} set outside the defined mask 0x{allowed:04X}")
    return flags


def _encode_element(row: Register, raw: int) -> list[int]:
    raw = int(raw)
    if row.kind is Kind.UINT32:
        return list(encode_uint32(raw))
    if row.kind is Kind.INT16:
        return [encode_int16(raw)]
    if row.kind is Kind.BITS:
        return [encode_bits(raw, row.allowed_bits())]
    if row.kind is Kind.RESERVED:
        return [0]
    return [encode_uint16(raw)]


def _decode_element(row: Register, words: Sequence[int]) -> int:
    if row.kind is Kind.UINT32:
        return decode_uint32(words[0], words[1])
    if row.kind is Kind.INT16:
        return decode_int16(words[0])
    return words[0]


def encode_block(regmap: RegisterMap, table: Table, raw_values: Mapping[str, Any]) -> list[int]:
    """Raw (unscaled) values by row name -> the words of the whole table block."""
    first, count = regmap.span(table)
    words = [0] * count
    for row in regmap.table_rows(table):
        value = raw_values.get(row.name, row.default if row.length == 1 else (row.default,) * row.length)
        elements: Iterable[int] = value if row.length > 1 else (value,)
        elements = list(elements)
        if len(elements) != row.length:
            raise CodecError(f"{row.name} needs {row.length} elements, got {len(elements)}")
        offset = row.address - first
        for element in elements:
            encoded = _encode_element(row, element)
            words[offset : offset + len(encoded)] = encoded
            offset += len(encoded)
    return words


def decode_block(regmap: RegisterMap, table: Table, words: Sequence[int], *, first: int | None = None) -> dict[str, Any]:
    """Words of a block read -> raw values by row name (tuples for array rows)."""
    start, count = regmap.span(table)
    first = start if first is None else first
    if first != start or len(words) != count:
        raise CodecError(
            f"{regmap.device} {table.value} block must be {count} words from {start}, got {len(words)} from {first}"
        )
    out: dict[str, Any] = {}
    for row in regmap.table_rows(table):
        offset = row.address - first
        elements = []
        for i in range(row.length):
            at = offset + i * row.kind.words
            word_slice = words[at : at + row.kind.words]
            if any(not 0 <= w <= WORD_MASK for w in word_slice):
                raise CodecError(f"{row.name}: word out of range {word_slice}")
            elements.append(_decode_element(row, word_slice))
        out[row.name] = tuple(elements) if row.length > 1 else elements[0]
    return out


def scaled(row: Register, raw: int) -> float:
    return raw * row.scale

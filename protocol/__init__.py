"""The LS-4 and FT-8 register maps, word codecs and decoded snapshots: one source of truth for host and simulator."""

from . import ft8, ls4
from .registers import CodecError, Kind, Register, RegisterMap, Table
from .validation import ExceptionCode

__all__ = ["CodecError", "ExceptionCode", "Kind", "Register", "RegisterMap", "Table", "ft8", "ls4"]

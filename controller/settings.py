"""Bounded getters over a parsed TOML table, in the spirit of Klipper's config getters.

A `Section` wraps one TOML table and knows its dotted path (`bus.main`). Every getter is
keyword-only, checks type and range, and raises a one-line `SettingsError` naming the field:

    config: bus.main.port = 70000 is out of range 1..65535
    config: limits.tipcap: unknown key (known: max_channel_power_w, ...)

`finish()` must be called on every section once all its keys were read: keys nobody asked for
are errors, so a typo never silently falls back to a default.

The same toolkit reads the daemon config (`ConfigError`) and treatment plans (`PlanError`).
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

# Messages stay on one line and readable: long strings in them are cut to this many characters.
SHOWN_VALUE_MAX_CHARS: Final = 40


class _Required:
    """Marker for 'no default': the key must be present."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()


class SettingsError(ValueError):
    """A settings file is unusable. `str(e)` is one line; `field` is the dotted path at fault, if any."""

    prefix = "settings"

    def __init__(self, message: str, *, field: str | None = None, source: str | None = None) -> None:
        self.field = field
        self.source = source
        super().__init__(one_line(f"{self.prefix}: {message}"))


class ConfigError(SettingsError):
    prefix = "config"


class PlanError(SettingsError):
    prefix = "plan"


E = TypeVar("E", bound=SettingsError)
T = TypeVar("T")


def one_line(text: str) -> str:
    """Collapse any line breaks: every error this toolkit makes is exactly one line."""
    return " ".join(text.split())


def show(value: Any) -> str:
    """A value as it would be written in TOML, short and on one line (for error messages)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= SHOWN_VALUE_MAX_CHARS else value[: SHOWN_VALUE_MAX_CHARS - 3] + "..."
        return '"' + text.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array" if len(value) > 4 else "[" + ", ".join(show(v) for v in value) + "]"
    return type(value).__name__


def number(value: float) -> str:
    """A bound or limit for a message: 3000.0 -> '3000', 0.25 -> '0.25'."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def parse_toml(text: str, *, error: type[E], source: str) -> dict[str, Any]:
    """TOML text to a table; a syntax error becomes one line naming the source."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{source}: TOML syntax error: {exc}", source=source) from None


def read_toml_file(path: str | os.PathLike[str], *, error: type[E]) -> tuple[str, dict[str, Any]]:
    """Read and parse a TOML file: (its text, its table). Unreadable or bad files are one line."""
    shown = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise error(f"{shown}: cannot read: {exc.strerror or exc}", source=shown) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{shown}: not UTF-8 text (byte {exc.start})", source=shown) from None
    return text, parse_toml(text, error=error, source=shown)


def _in_range(value: float, minimum: float | None, maximum: float | None) -> bool:
    return (minimum is None or value >= minimum) and (maximum is None or value <= maximum)


def range_text(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f"{number(minimum)}..{number(maximum)}"
    if minimum is not None:
        return f">= {number(minimum)}"
    if maximum is not None:
        return f"<= {number(maximum)}"
    return "any"


class Section:
    """One TOML table being read. Paths: `path` for messages (`fibres[2]`), `schema` for docs (`fibres[]`)."""

    def __init__(
        self,
        table: Mapping[str, Any],
        *,
        error: type[SettingsError],
        path: str = "",
        schema: str | None = None,
        key_log: set[str] | None = None,
    ) -> None:
        self._table = table
        self._error = error
        self.path = path
        self.schema = path if schema is None else schema
        self._key_log = key_log
        self._known: list[str] = []

    # ----- paths and errors -----

    def field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _schema_field(self, key: str) -> str:
        return f"{self.schema}.{key}" if self.schema else key

    def fail(self, key: str | None, message: str) -> SettingsError:
        """An error about `key` of this section (or the section itself); the caller raises it."""
        field = self.field(key) if key is not None else (self.path or None)
        if field:
            return self._error(f"{field}{message if message.startswith((' ', ':', '[')) else ' ' + message}", field=field)
        return self._error(message.lstrip(" :"))

    def value_error(self, key: str, value: Any, message: str) -> SettingsError:
        """`<field> = <value> <message>`."""
        return self.fail(key, f" = {show(value)} {message}")

    def peek(self, key: str) -> Any:
        """The raw value of `key` (None if absent), for getters that depend on its TOML type."""
        return self._table.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._table

    def keys(self) -> list[str]:
        return list(self._table)

    def _note(self, key: str, *, leaf: bool = True, known: bool = True) -> None:
        if known and key not in self._known:
            self._known.append(key)
        if leaf and self._key_log is not None:
            self._key_log.add(self._schema_field(key))

    def _raw(self, key: str, default: Any, expected: str) -> Any:
        self._note(key)
        if key in self._table:
            return self._table[key]
        if default is REQUIRED:
            raise self.fail(key, f": missing (required; {expected})")
        return default

    # ----- scalar getters -----

    def get_int(
        self,
        key: str,
        *,
        default: int | None | _Required = REQUIRED,
        minimum: int | None = None,
        maximum: int | None = None,
        choices: Sequence[int] | None = None,
    ) -> Any:
        expected = _expect("integer", minimum, maximum, choices)
        value = self._raw(key, default, expected)
        if key not in self._table:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.value_error(key, value, f"must be {_article(expected)}")
        if choices is not None and value not in choices:
            raise self.value_error(key, value, f"must be one of {', '.join(str(c) for c in choices)}")
        if not _in_range(value, minimum, maximum):
            raise self.value_error(key, value, f"is out of range {range_text(minimum, maximum)}")
        return value

    def get_float(
        self,
        key: str,
        *,
        default: float | None | _Required = REQUIRED,
        minimum: float | None = None,
        maximum: float | None = None,
        above: float | None = None,
    ) -> Any:
        """A finite number (TOML integer or float) in [minimum, maximum]; `above` is an exclusive lower bound."""
        bounds = _float_bounds(minimum, maximum, above)
        value = self._raw(key, default, f"number {bounds}" if bounds else "number")
        if key not in self._table:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.value_error(key, value, "must be a number")
        if not math.isfinite(value):
            raise self.value_error(key, value, "must be a finite number")
        if (above is not None and not value > above) or not _in_range(value, minimum, maximum):
            if above is None and minimum is not None and maximum is not None:
                raise self.value_error(key, value, f"is out of range {bounds}")
            raise self.value_error(key, value, f"is out of range: must be {bounds}")
        return float(value)

    def get_str(
        self,
        key: str,
        *,
        default: str | None | _Required = REQUIRED,
        choices: Sequence[str] | None = None,
        max_length: int | None = None,
        non_empty: bool = True,
        check: Callable[[str], str | None] | None = None,
    ) -> Any:
        """A string; `check(value)` may return a reason it is bad (shown after the value)."""
        expected = "one of " + ", ".join(show(c) for c in choices) if choices is not None else "string"
        value = self._raw(key, default, expected)
        if key not in self._table:
            return value
        if not isinstance(value, str):
            raise self.value_error(key, value, f"must be {_article(expected)}" if choices is None else f"must be {expected}")
        if choices is not None and value not in choices:
            raise self.value_error(key, value, f"must be {expected}")
        if non_empty and not value.strip():
            raise self.value_error(key, value, "must not be empty")
        if max_length is not None and len(value) > max_length:
            raise self.value_error(key, value, f"is longer than {max_length} characters")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise self.value_error(key, value, "must not contain control characters")
        if check is not None and (reason := check(value)) is not None:
            raise self.value_error(key, value, reason)
        return value

    def get_bool(self, key: str, *, default: bool | _Required = REQUIRED) -> Any:
        value = self._raw(key, default, "true or false")
        if key in self._table and not isinstance(value, bool):
            raise self.value_error(key, value, "must be true or false")
        return value

    def get_path(
        self,
        key: str,
        *,
        default: Path | None | _Required = REQUIRED,
        base: Path | None = None,
        absolute: bool = False,
        must_exist: bool = False,
        max_bytes: int | None = None,
    ) -> Any:
        """A filesystem path. Relative paths resolve against `base` (refused if `absolute`)."""
        value = self._raw(key, default, "path string")
        if key not in self._table:
            return value
        self.get_str(key)  # type, emptiness and control characters
        path = Path(value).expanduser()
        if not path.is_absolute():
            if absolute or base is None:
                raise self.value_error(key, value, "must be an absolute path")
            path = base / path
        path = Path(os.path.normpath(path))
        if max_bytes is not None and len(os.fsencode(path)) > max_bytes:
            raise self.value_error(key, value, f"is too long: {len(os.fsencode(path))} bytes once resolved, at most {max_bytes}")
        if must_exist and not (path.is_file() and os.access(path, os.R_OK)):
            raise self.value_error(key, value, f"does not name a readable file ({path})")
        return path

    def get_list(
        self,
        key: str,
        *,
        item: Callable[[Any], T],
        item_name: str,
        default: Sequence[T] | None | _Required = REQUIRED,
        min_length: int = 0,
        max_length: int | None = None,
        unique: bool = False,
    ) -> Any:
        """An array; `item(v)` returns the item or raises ValueError/TypeError (the message is not shown)."""
        value = self._raw(key, default, f"array of {item_name}")
        if key not in self._table:
            return value
        if not isinstance(value, list):
            raise self.value_error(key, value, f"must be an array of {item_name}")
        if len(value) < min_length or (max_length is not None and len(value) > max_length):
            raise self.fail(key, f" has {len(value)} items, needs {range_text(min_length, max_length)}")
        out = []
        for index, element in enumerate(value):
            try:
                out.append(item(element))
            except (ValueError, TypeError):
                raise self.fail(key, f"[{index}] = {show(element)} must be {item_name}") from None
        if unique and len(set(out)) != len(out):
            raise self.value_error(key, value, "has duplicate items")
        return tuple(out)

    # ----- tables -----

    def table(self, key: str, *, required: bool = True) -> Section:
        """A sub-table. An absent optional table reads as empty (every key then takes its default)."""
        self._note(key, leaf=False)
        value = self._table.get(key)
        if value is None:
            if required:
                raise self.fail(key, ": missing (required table)")
            value = {}
        if not isinstance(value, Mapping):
            raise self.value_error(key, value, "must be a table")
        return Section(value, error=self._error, path=self.field(key), schema=self._schema_field(key), key_log=self._key_log)

    def named_tables(self, key: str, *, required: bool = True, min_count: int = 1, name_check: Callable[[str], str | None] | None = None) -> dict[str, Section]:
        """A table of named tables (`[bus.main]`, `[bus.aux]`): name -> Section; schema path `bus.<name>`."""
        outer = self.table(key, required=required)
        if len(outer.keys()) < min_count:
            raise self.fail(key, f": needs at least {min_count} entry (e.g. [{self.field(key)}.main])")
        out: dict[str, Section] = {}
        for name in outer.keys():
            outer._note(name, leaf=False)
            if name_check is not None and (reason := name_check(name)) is not None:
                raise outer.fail(name, f": bad name: {reason}")
            value = outer._table[name]
            if not isinstance(value, Mapping):
                raise outer.value_error(name, value, "must be a table")
            out[name] = Section(value, error=self._error, path=outer.field(name), schema=f"{outer.schema}.<name>", key_log=self._key_log)
        return out

    def array_of_tables(self, key: str, *, min_count: int = 0, max_count: int | None = None) -> list[Section]:
        """An array of tables (`[[fibres]]`): Sections with paths `fibres[0]`, `fibres[1]`...; schema `fibres[]`."""
        self._note(key, leaf=False)
        value = self._table.get(key)
        if value is None:
            if min_count:
                raise self.fail(key, f": missing (required; at least {min_count} [[{self.field(key)}]] table)")
            return []
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            raise self.value_error(key, value, f"must be an array of tables ([[{self.field(key)}]])")
        if len(value) < min_count or (max_count is not None and len(value) > max_count):
            raise self.fail(key, f": has {len(value)} tables, needs {range_text(min_count, max_count)}")
        return [
            Section(v, error=self._error, path=f"{self.field(key)}[{i}]", schema=f"{self._schema_field(key)}[]", key_log=self._key_log)
            for i, v in enumerate(value)
        ]

    # ----- the end -----

    def reject(self, keys: Sequence[str], reason: str) -> None:
        """Keys that are known to the schema but not allowed here (`host` on an RTU bus)."""
        for key in keys:
            # In the schema (docs list it) but not among the keys an unknown-key message offers here.
            self._note(key, known=False)
            if key in self._table:
                raise self.fail(key, f": {reason}")

    def finish(self) -> None:
        """Every key of the table must have been asked for: an unknown key is an error, never ignored."""
        for key in self._table:
            if key not in self._known:
                known = ", ".join(sorted(self._known)) or "none"
                raise self.fail(key, f": unknown key (known: {known})")


def _article(expected: str) -> str:
    return ("an " if expected[:1] in "aeiou" else "a ") + expected


def _float_bounds(minimum: float | None, maximum: float | None, above: float | None) -> str:
    if above is None:
        return range_text(minimum, maximum) if (minimum, maximum) != (None, None) else ""
    return f"> {number(above)}" + (f" and <= {number(maximum)}" if maximum is not None else "")


def _expect(kind: str, minimum: float | None, maximum: float | None, choices: Sequence[int] | None) -> str:
    if choices is not None:
        return f"{kind}, one of " + ", ".join(str(c) for c in choices)
    if minimum is None and maximum is None:
        return kind
    return f"{kind} {range_text(minimum, maximum)}"

"""Typed access to the TOML document, collecting every problem instead of stopping at the first."""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from jobcompd.config.settings import ConfigProblem

_T = TypeVar("_T")

_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    bool: "a boolean (true or false)",
    int: "an integer",
    dict: "a table",
}


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    for kind, name in (
        (str, "string"),
        (int, "integer"),
        (float, "float"),
        (list, "array"),
        (dict, "table"),
    ):
        if isinstance(value, kind):
            return name
    return "date/time"


def _toml_error(exc: tomllib.TOMLDecodeError) -> tuple[str, str]:
    match = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", str(exc), re.DOTALL)
    if match is None:
        return "", f"not valid TOML: {exc}"
    return f"line {match.group(2)}", f"not valid TOML: {match.group(1)} (column {match.group(3)})"


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _did_you_mean(word: str, known: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _flatten(table: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``bootstrap.servers = "x"`` in TOML is a nested table; librdkafka wants the dotted name."""
    for key, value in table.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


class TableReader:
    """One `load_settings` call: the document, what was found wrong, and what to warn about."""

    def __init__(self, config_path: Path, environ: Mapping[str, str]) -> None:
        self.path = config_path
        self.src = str(config_path)
        self.base = config_path.parent
        self.environ = environ
        self.problems: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []

    def error(self, where: str, reason: str, source: str | None = None) -> None:
        self.problems.append(ConfigProblem(self.src if source is None else source, where, reason))

    def warn(self, where: str, reason: str, source: str | None = None) -> None:
        self.warnings.append(ConfigProblem(self.src if source is None else source, where, reason))

    def _get(self, table: dict[str, Any], section: str, key: str, kind: type[_T]) -> _T | None:
        """The value if present and of the right TOML type; None (and a problem) otherwise."""
        if key not in table:
            return None
        value = table[key]
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
        self.error(
            f"{section}.{key}" if section else key,
            f"expected {_TYPE_NAMES[kind]}, got {_toml_type(value)} {value!r}",
        )
        return None

    def _choice(
        self, table: dict[str, Any], section: str, key: str, choices: tuple[str, ...], default: str
    ) -> str:
        value = self._get(table, section, key, str)
        if value is None:
            return default
        if value.lower() not in choices:
            self.error(f"{section}.{key}", f"{value!r} is not one of: {', '.join(choices)}")
            return default
        return value.lower()

    def _count(self, table: dict[str, Any], section: str, key: str, default: int, low: int) -> int:
        value = self._get(table, section, key, int)
        if value is None:
            return default
        if value < low:
            self.error(f"{section}.{key}", f"{value} is below the minimum, {low}")
            return default
        return value

    def _path(self, value: str) -> Path:
        return Path(os.path.normpath(self.base / value))

    def _days(self, table: dict[str, Any], section: str, key: str, default: float) -> float:
        if key not in table:
            return default
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            self.error(f"{section}.{key}", f"expected a number of days >= 0, got {value!r}")
            return default
        return float(value)

"""A small typed reader for YAML config trees that reports errors by key path.

Every reader takes the raw value and its key path (``peers[1].asn``) and either
returns a typed value or raises :class:`ConfigError` whose message names the path
and what was wrong, e.g. ``peers[1].asn: 4294967296 is out of range 1..4294967295``.
Kept separate from the node config's field list so that the datastore's cluster
file can reuse it.
"""
from __future__ import annotations

import ipaddress
import reprlib
from typing import Any, Callable, Iterable, TypeVar

T = TypeVar("T")

_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 60
_SHOW.maxlong = 40
_SHOW.maxlist = _SHOW.maxdict = 4
_SHOW.maxlevel = 2


def show(value: Any) -> str:
    """``repr(value)`` cut to a few dozen characters: values quoted in errors come from the
    file and may be megabytes long or nested, and a message stays one short line."""
    return _SHOW.repr(value)


def clip(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters (a key or file name quoted in a message)."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _one_line(text: str) -> str:
    # File names and YAML problems can hold newlines or terminal escapes; a message is one line.
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else ascii(c)[1:-1] for c in text)


class ConfigError(Exception):
    """A config value is missing, of the wrong type or out of range.

    ``str(err)`` is one line: ``<file>: <key path>: <what is wrong>``; control characters
    in any part are shown escaped (``\\n``).
    """

    def __init__(self, path: str, message: str, file: str | None = None) -> None:
        self.path = path
        self.message = message
        self.file = file
        super().__init__(str(self))

    def with_file(self, file: str) -> "ConfigError":
        return ConfigError(self.path, self.message, file)

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        prefix = f"{self.file}: " if self.file else ""
        return _one_line(f"{prefix}{where}{self.message}")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class Section:
    """A mapping being read: tracks which keys were consumed so unknown keys are errors."""

    def __init__(self, raw: Any, path: str) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(path or "(top level)", f"expected a mapping, got {_kind(raw)}")
        self.raw = raw
        self.path = path
        self._seen: set[str] = set()

    def get(self, key: str, reader: Callable[[Any, str], T], default: Any = ..., ) -> T:
        self._seen.add(key)
        path = join(self.path, key)
        if key not in self.raw or self.raw[key] is None:
            if default is ...:
                raise ConfigError(path, "is required")
            return default
        return reader(self.raw[key], path)

    def section(self, key: str) -> "Section":
        self._seen.add(key)
        return Section(self.raw.get(key), join(self.path, key))

    def finish(self) -> None:
        unknown = sorted(clip(str(k)) for k in self.raw if k not in self._seen)
        if unknown:
            also = ", ".join(unknown[1:6]) + (f" and {len(unknown) - 6} more" if len(unknown) > 6 else "")
            raise ConfigError(join(self.path, unknown[0]), "unknown key" + (f" (also: {also})" if also else ""))


def integer(lo: int, hi: int) -> Callable[[Any, str], int]:
    def read(value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {show(value)} ({_kind(value)})")
        if not lo <= value <= hi:
            raise ConfigError(path, f"{show(value)} is out of range {lo}..{hi}")
        return value
    return read


def number(lo: float, hi: float) -> Callable[[Any, str], float]:
    def read(value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {show(value)} ({_kind(value)})")
        if not lo <= value <= hi:
            raise ConfigError(path, f"{show(value)} is out of range {lo}..{hi}")
        return float(value)
    return read


def boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, f"expected true or false, got {show(value)} ({_kind(value)})")
    return value


def string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(path, f"expected a non-empty string, got {show(value)} ({_kind(value)})")
    return value


def choice(*options: str) -> Callable[[Any, str], str]:
    def read(value: Any, path: str) -> str:
        if value not in options:
            raise ConfigError(path, f"{show(value)} is not one of {', '.join(options)}")
        return value
    return read


def ipv4_address(value: Any, path: str) -> ipaddress.IPv4Address:
    if not isinstance(value, str):
        raise ConfigError(path, f"expected an IPv4 address, got {show(value)} ({_kind(value)})")
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ConfigError(path, f"{show(value)} is not an IPv4 address") from None


def ipv4_network(value: Any, path: str) -> ipaddress.IPv4Network:
    if not isinstance(value, str):
        raise ConfigError(path, f"expected an IPv4 CIDR, got {show(value)} ({_kind(value)})")
    try:
        return ipaddress.IPv4Network(value, strict=True)
    except ValueError as e:
        raise ConfigError(path, f"{show(value)} is not an IPv4 CIDR ({e})" if len(value) <= 60 else
                          f"{show(value)} is not an IPv4 CIDR") from None


def list_of(reader: Callable[[Any, str], T], *, min_items: int = 0) -> Callable[[Any, str], tuple[T, ...]]:
    def read(value: Any, path: str) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise ConfigError(path, f"expected a list, got {_kind(value)}")
        if len(value) < min_items:
            raise ConfigError(path, f"needs at least {min_items} item(s)")
        return tuple(reader(item, join(path, i)) for i, item in enumerate(value))
    return read


def no_overlaps(nets: Iterable[ipaddress.IPv4Network], path: str) -> None:
    seen: list[ipaddress.IPv4Network] = []
    for i, net in enumerate(nets):
        for other in seen:
            if net.overlaps(other):
                raise ConfigError(join(path, i), f"{net} overlaps {other}")
        seen.append(net)

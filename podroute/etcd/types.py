"""The values the etcd adapter returns: frozen, no client-library objects leak out."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class KeyValue:
    """One key as etcd holds it. Revisions are etcd's cluster-wide revision counters: ``create_revision``
    when the key was created, ``mod_revision`` of its last write; ``version`` counts writes since creation
    (0 means absent, which is what ``create`` compares on). ``lease`` is the lease ID, 0 for none."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0

    def json(self) -> Any:
        """The value decoded as JSON; ValueError naming the key when it is not UTF-8 JSON."""
        try:
            return json.loads(self.value.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"etcd key {self.key!r}: value is not JSON: {e}") from None


@dataclass(frozen=True)
class Listing:
    """A consistent read of a prefix: ``items`` sorted by key, all as of etcd revision ``revision``
    (the response header's). Watch from ``revision + 1`` to see every later change exactly once."""

    items: tuple[KeyValue, ...]
    revision: int


@dataclass(frozen=True)
class WatchEvent:
    """A put or a delete seen by a watch, in etcd revision order. For a delete ``value`` is b"" and
    ``mod_revision`` is the revision of the delete."""

    kind: Literal["put", "delete"]
    key: str
    value: bytes
    mod_revision: int
    version: int
    create_revision: int = 0      # of a put; 0 for a delete

    def json(self) -> Any:
        """As :meth:`KeyValue.json`."""
        return KeyValue(self.key, self.value, 0, self.mod_revision, self.version).json()


@dataclass(frozen=True)
class Lease:
    """A granted etcd lease: its ID and the TTL etcd granted in seconds (etcd may raise a requested
    TTL to its minimum, 1.5 x the election timeout)."""

    id: int
    ttl_s: int

"""Import policy for learned routes (the Calico behaviour mirrored: only pool routes from
other nodes are programmed).

A route is accepted only if all hold, checked in this order (the first failing check is
the reason counted):

- ``default``: not 0.0.0.0/0;
- ``outside_pool``: inside one of ``import_pools``;
- ``own_block``: does not overlap any of the node's ``own_blocks`` (we originate those);
- ``own_next_hop``: next hop is not the node's own IP (our route reflected back).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Iterable

REASONS = ("default", "outside_pool", "own_block", "own_next_hop")


@dataclass(frozen=True)
class ImportPolicy:
    import_pools: tuple[IPv4Network, ...]
    own_blocks: tuple[IPv4Network, ...]
    node_ip: IPv4Address

    def check(self, prefix: IPv4Network, next_hop: IPv4Address) -> str | None:
        """None when accepted, else the rejection reason (one of REASONS)."""
        if prefix.prefixlen == 0:
            return "default"
        if not any(prefix.subnet_of(pool) for pool in self.import_pools):
            return "outside_pool"
        if any(prefix.overlaps(block) for block in self.own_blocks):
            return "own_block"
        if next_hop == self.node_ip:
            return "own_next_hop"
        return None


class RejectionCounter:
    """Currently rejected prefixes per peer and reason (counts follow the Adj-RIB-In, so a
    withdrawn or flushed rejected route stops being counted); ``total`` counts every
    rejection decision ever made."""

    def __init__(self) -> None:
        self._current: dict[IPv4Address, dict[IPv4Network, str]] = {}
        self.total: Counter[tuple[IPv4Address, str]] = Counter()

    def reject(self, peer: IPv4Address, prefix: IPv4Network, reason: str) -> None:
        self._current.setdefault(peer, {})[prefix] = reason
        self.total[(peer, reason)] += 1

    def clear(self, peer: IPv4Address, prefixes: Iterable[IPv4Network]) -> None:
        table = self._current.get(peer)
        if table:
            for p in prefixes:
                table.pop(p, None)

    def flush_peer(self, peer: IPv4Address) -> None:
        self._current.pop(peer, None)

    def count(self, peer: IPv4Address) -> int:
        return len(self._current.get(peer, {}))

    def by_reason(self, peer: IPv4Address) -> dict[str, int]:
        return dict(Counter(self._current.get(peer, {}).values()))

"""A consumer of :class:`bgp.speaker.Speaker`'s production callback (``on_changes``) for tests.

It applies each delta (prefix key -> BestRoute, or None when withdrawn) to its own table as
the FIB side does, and checks on the way that a key matches its route's prefix. Deltas are
coalesced between calls, so a withdrawal may name a key never delivered (a route that came
and went) and a route may be one already held (it changed and changed back): both apply as
no-ops, as in the agent.
"""
from __future__ import annotations

from ipaddress import IPv4Network

from bgp.model import BestRoute
from bgp.prefix import key_of


class LocRibMirror:
    """``mirror(delta)`` is the callback. ``calls`` holds, per call, a copy of the mirrored
    Loc-RIB (prefix -> BestRoute) after it; ``deltas`` holds the deltas as given."""

    def __init__(self) -> None:
        self.table: dict[int, BestRoute] = {}
        self.calls: list[dict[IPv4Network, BestRoute]] = []
        self.deltas: list[dict[int, BestRoute | None]] = []

    def __call__(self, delta) -> None:
        delta = dict(delta)
        for key, route in delta.items():
            if route is None:
                self.table.pop(key, None)
            else:
                assert key == key_of(route.prefix), f"key {key} != key of {route.prefix}"
                self.table[key] = route
        self.deltas.append(delta)
        self.calls.append(self.loc_rib())

    def loc_rib(self) -> dict[IPv4Network, BestRoute]:
        return {r.prefix: r for r in self.table.values()}

    def __len__(self) -> int:
        return len(self.calls)

    def __getitem__(self, i: int) -> dict[IPv4Network, BestRoute]:
        return self.calls[i]

    def __bool__(self) -> bool:
        return bool(self.calls)

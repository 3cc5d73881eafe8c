"""Adj-RIB-In: every received path kept pre-policy, import policy and max-prefix limits.

Every path a peer sent is kept (like BIRD's import table) so a policy change
(:meth:`AdjRibIn.set_policy`) re-evaluates without a route refresh. The policy only accepts
or rejects, never rewrites attributes, so a peer's Adj-RIB-In is two disjoint halves, both
keyed by prefix key (bgp.prefix):

- accepted paths: the Rib's own per-peer table (:meth:`bgp.rib.Rib.peer_keys`), which feeds
  best-path selection; they are not copied (at 100k routes a second table costs ~5 MB);
- rejected paths: one table here, key -> :class:`Rejected` (prefix, attrs, reason), which is
  also what the per-reason counts are read from.

A path moves between the halves when a later UPDATE or a policy change decides differently;
a rejection of an earlier accepted path is an implicit withdrawal from the Loc-RIB.

Max-prefix limit (``PeerConfig.max_prefixes``): an accepted path that would take the peer's
accepted count above the limit is rejected with reason ``max_prefixes``; with
``max_prefixes_action == "teardown"`` the first such path of a session also asks for a Cease
NOTIFICATION, subcode 1 (RFC 4486 §4), which :meth:`AdjRibIn.receive` reports to the caller.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Callable, Mapping

from . import api
from .model import BestRoute, PathAttrs, PeerConfig
from .policy import ImportPolicy
from .prefix import key_of
from .rib import Rib


@dataclass(frozen=True, slots=True)
class Rejected:
    """A received path import policy rejected, and why (one of bgp.policy.REASONS)."""

    prefix: IPv4Network
    attrs: PathAttrs
    reason: str


class _PeerIn:
    __slots__ = ("rejected", "teardown_sent", "teardowns", "withdrawn_undecoded",
                 "announced_undecoded")

    def __init__(self) -> None:
        self.rejected: dict[int, Rejected] = {}
        self.teardown_sent = False  # one teardown request per session
        self.teardowns = 0
        self.withdrawn_undecoded = 0
        self.announced_undecoded = 0


class AdjRibIn:
    """The Adj-RIB-In of every peer and the Loc-RIB selected from it (``rib``).

    ``on_changes(delta)`` gets the Loc-RIB changes (prefix key -> BestRoute, or None) once per
    event-loop pass after a mutator changed it (see :class:`bgp.speaker.Speaker`), or after
    :meth:`notify`. Not thread-safe (one event loop).
    """

    def __init__(self, local_as: int, policy: ImportPolicy, log: logging.Logger,
                 on_changes: Callable[[Mapping[int, BestRoute | None]], None]) -> None:
        self.rib = Rib(local_as)
        self.policy = policy
        self.log = log
        self._on_changes = on_changes
        self._scheduled = False
        self._peers: dict[IPv4Address, _PeerIn] = {}

    def notify(self) -> None:
        """Call ``on_changes`` on the next loop pass (with whatever changed, maybe nothing);
        at most once per pass. Without a running loop, the changes wait for the next call."""
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._scheduled = True
        loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        self._scheduled = False
        try:
            self._on_changes(self.rib.take_changes())
        except Exception:
            self.log.exception("on_changes callback failed")

    def add_peer(self, peer: IPv4Address, asn: int, router_id: IPv4Address | None = None) -> None:
        """Know ``peer`` (ASN from config, router id from its OPEN)."""
        self._peers.setdefault(peer, _PeerIn())
        self.rib.set_peer(peer, asn, router_id)

    def remove_peer(self, peer: IPv4Address) -> None:
        """Flush and forget ``peer``."""
        self.flush(peer)
        self._peers.pop(peer, None)

    def session_up(self, peer: IPv4Address) -> None:
        """A new session: max-prefix teardown may be requested again."""
        self._peers[peer].teardown_sent = False

    # ---- updates ----

    def receive(self, peer: IPv4Address, ev: api.UpdateEvent, withdrawn: list[int],
                cfg: PeerConfig | None, local_as: int) -> bool:
        """Apply one UPDATE from ``peer`` whose withdrawals are the prefix keys ``withdrawn``.
        Returns True when a max-prefix teardown is newly due."""
        p = self._peers[peer]
        if ev.announced_raw:
            p.announced_undecoded += len(ev.announced)
        if ev.withdrawn_keys is not None:
            p.withdrawn_undecoded += len(withdrawn)
        rejected = p.rejected
        if withdrawn and rejected:
            pop = rejected.pop
            for k in withdrawn:
                pop(k, None)
        # attrs.next_hop == nh in every announced tuple
        return self._evaluate(peer, p, [(pfx, attrs) for pfx, _nh, attrs in ev.announced],
                              withdrawn, cfg, local_as)

    def drop(self, peer: IPv4Address, keys: set[int]) -> None:
        """Remove the paths with prefix keys ``keys`` from ``peer`` (a graceful-restart sweep)."""
        p = self._peers.get(peer)
        if p is not None and p.rejected:
            for k in keys:
                p.rejected.pop(k, None)
        if self.rib.update(peer, (), keys):
            self.notify()

    def flush(self, peer: IPv4Address) -> None:
        """Drop every path from ``peer``."""
        p = self._peers.get(peer)
        if p is not None:
            p.rejected = {}
        if self.rib.flush_peer(peer):
            self.notify()

    def set_policy(self, policy: ImportPolicy, cfgs: Mapping[IPv4Address, PeerConfig],
                   local_as: int) -> None:
        """Replace the policy and re-evaluate every kept path."""
        self.policy = policy
        for peer, p in list(self._peers.items()):
            routes = self.pre_policy(peer)
            if routes:
                self._evaluate(peer, p, sorted(routes.items()), [], cfgs.get(peer), local_as)

    # ---- reads ----

    def pre_policy(self, peer: IPv4Address) -> dict[IPv4Network, PathAttrs]:
        """``peer``'s every kept path by prefix (a copy; empty for an unknown peer)."""
        out = dict(self.rib.adj_rib_in(peer))
        p = self._peers.get(peer)
        if p is not None:
            out.update((r.prefix, r.attrs) for r in p.rejected.values())
        return out

    def keys(self, peer: IPv4Address) -> set[int]:
        """Prefix keys of every path kept from ``peer``, accepted or rejected."""
        out = set(self.rib.peer_keys(peer))
        p = self._peers.get(peer)
        if p is not None:
            out.update(p.rejected)
        return out

    def counts(self, peer: IPv4Address) -> tuple[int, int, dict[str, int]]:
        """(accepted, rejected, rejected per reason) for ``peer``."""
        p = self._peers.get(peer)
        rejected = p.rejected if p is not None else {}
        return (len(self.rib.peer_keys(peer)), len(rejected),
                dict(Counter(r.reason for r in rejected.values())))

    def stats(self, peer: IPv4Address) -> tuple[int, int, int]:
        """(max-prefix teardowns, withdrawals and announcements that came undecoded)."""
        p = self._peers.get(peer) or _PeerIn()
        return p.teardowns, p.withdrawn_undecoded, p.announced_undecoded

    # ---- the import decision ----

    def _evaluate(self, peer: IPv4Address, p: _PeerIn,
                  routes: list[tuple[IPv4Network, PathAttrs]], withdrawn: list[int],
                  cfg: PeerConfig | None, local_as: int) -> bool:
        """Run import policy on ``routes`` (prefix, attrs) from ``peer`` and apply the result
        with the ``withdrawn`` prefix keys (accepted → Rib; rejected → kept apart and
        implicitly withdrawn). Returns True when a max-prefix teardown is newly due."""
        rejected = p.rejected
        enforce = cfg.enforces_next_hop(local_as) if cfg else False
        limit = cfg.max_prefixes if cfg else None
        teardown = False
        # The peer's accepted set after this UPDATE, tracked as a live view of the Adj-RIB-In
        # plus this batch's delta: O(batch), never a copy of a 100k-route table per UPDATE.
        table = self.rib.peer_keys(peer)
        # Only the prefix limit reads the size: withdrawals cost a lookup each otherwise.
        gone = {w for w in withdrawn if w in table} if limit is not None else set()
        added: set[int] = set()
        size = len(table) - len(gone)

        def present(key: int) -> bool:
            return key in added or (key in table and key not in gone)
        accepted: list[tuple[IPv4Network, PathAttrs]] = []
        withdraw = list(withdrawn)
        check = self.policy.check
        if limit is None and not rejected:
            # No prefix limit and nothing rejected before: the size bookkeeping and the
            # earlier-rejection lookups below have nothing to do (the common case).
            accept = accepted.append
            for i, (prefix, attrs) in enumerate(routes):
                if check(prefix, attrs.next_hop, attrs, enforce_next_hop=enforce) is not None:
                    routes = routes[i:]
                    break
                accept((prefix, attrs))
            else:
                routes = []
        for prefix, attrs in routes:
            reason = check(prefix, attrs.next_hop, attrs, enforce_next_hop=enforce)
            key = key_of(prefix)
            if reason is None and limit is not None and not present(key) and size >= limit:
                reason = "max_prefixes"
                if cfg is not None and cfg.max_prefixes_action == "teardown" \
                        and not p.teardown_sent:
                    p.teardown_sent = True
                    p.teardowns += 1
                    teardown = True
            if reason is None:
                if rejected:
                    rejected.pop(key, None)
                accepted.append((prefix, attrs))
                if not present(key):
                    size += 1
                    added.add(key)
            else:
                self.log.debug("rejected %s via %s from %s: %s", prefix, attrs.next_hop, peer,
                               reason)
                rejected[key] = Rejected(prefix, attrs, reason)
                withdraw.append(key)  # implicit withdraw of an earlier accepted path
                if present(key):
                    size -= 1
                    added.discard(key)
                    gone.add(key)
        if self.rib.update(peer, accepted, withdraw):
            self.notify()
        return teardown


def withdrawn_keys(ev: api.UpdateEvent) -> list[int]:
    """The prefix keys ``ev`` withdraws: raw ones as they came (bgp/exabgp_launch.py), decoded
    ones converted; the rest of the pipeline is keyed by them too (bgp.prefix)."""
    keys = ev.withdrawn_keys
    return keys if keys is not None else [key_of(w) for w in ev.withdrawn]


"""Per-peer Adj-RIB-In and the Loc-RIB derived from it by best-path selection.

Decision process: a subset of RFC 4271 §9.1.2.2 (ExaBGP 5.0 has no best-path logic of its
own: it hands every received path to the API), in order:

1. highest LOCAL_PREF (absent = 100; RFC 4271 §5.1.5, the de-facto default)
2. shortest AS_PATH (an AS_SET counts 1)
3. lowest ORIGIN (IGP < EGP < INCOMPLETE)
4. lowest MED, compared only between paths from the same neighbor AS (absent = 0)
5. eBGP-learned over iBGP-learned
6. (ECMP) every path still tied here is used: next hops are unioned, as in multipath BGP
7. otherwise-single-path tie-break: lowest originator/router id, then lowest peer address
   (RFC 4271 §9.1.2.2 f/g, RFC 4456 §9) — applied only to pick the reported AS path and to
   order the equal-cost set deterministically.

Stale paths of a gracefully restarting peer (RFC 4724 §4.2, tracked by the speaker) stay
here and take part in selection like any other: the forwarding state they describe is valid.
"""
from __future__ import annotations

from collections import abc
from types import MappingProxyType

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Iterable, Mapping

from nlcore.fast import new as _new, slot_setters as _slot_setters

from .model import BestRoute, PathAttrs
from .prefix import Prefix, from_key, key_of

DEFAULT_LOCAL_PREF = 100


@dataclass(frozen=True, slots=True)  # slots: 100k+ of these in a full table
class Candidate:
    """One path in the Adj-RIB-In: who sent it and its attributes."""

    peer: IPv4Address
    peer_asn: int
    peer_router_id: IPv4Address | None
    attrs: PathAttrs


class Rib:
    """Adj-RIB-In per peer plus the Loc-RIB. ``local_as`` decides iBGP vs eBGP.

    Tables are keyed by prefix key (``bgp.prefix``: ``1 << length | network >> (32 -
    length)``), the one int every table on the BGP->FIB path shares; the prefix object itself
    is the Loc-RIB entry's ``BestRoute.prefix``. Mutators return the Loc-RIB delta they caused, ``{key: new
    BestRoute, or None when gone}``. Not thread-safe (used from one event loop).
    """

    def __init__(self, local_as: int) -> None:
        self.local_as = local_as
        self._adj_in: dict[IPv4Address, dict[int, Candidate]] = {}
        self._peer_asn: dict[IPv4Address, int] = {}
        self._peer_rid: dict[IPv4Address, IPv4Address] = {}
        # Every key of any Adj-RIB-In has an entry here (selection over a non-empty set of
        # paths always yields one): the prefix object of a learned key is loc[key].prefix.
        self._loc: dict[int, BestRoute] = {}
        self._changed: dict[int, BestRoute | None] = {}  # Loc-RIB changes not yet taken

    def set_peer(self, peer: IPv4Address, asn: int, router_id: IPv4Address | None = None) -> None:
        """Record the peer's ASN (from config) and BGP identifier (from its OPEN)."""
        self._peer_asn[peer] = asn
        if router_id is not None:
            self._peer_rid[peer] = router_id

    def peer_keys(self, peer: IPv4Address) -> Mapping[int, Candidate]:
        """``peer``'s accepted paths by prefix key, as a live read-only view (O(1))."""
        return MappingProxyType(self._adj_in.get(peer, {}))

    def adj_rib_in(self, peer: IPv4Address) -> Mapping[IPv4Network, PathAttrs]:
        """``peer``'s accepted paths by prefix (a copy)."""
        loc = self._loc
        return {loc[k].prefix: c.attrs for k, c in self._adj_in.get(peer, {}).items()}

    def update(self, peer: IPv4Address, announced: Iterable[tuple[IPv4Network, PathAttrs]] = (),
               withdrawn: Iterable[int] = ()) -> dict[int, BestRoute | None]:
        """Apply one UPDATE's accepted announcements (prefix, attrs) and withdrawals (prefix
        keys) from ``peer``.

        An announcement replaces the peer's previous path for that prefix (implicit
        withdraw, RFC 4271 §3.1). Returns the Loc-RIB delta (class doc).
        """
        table = self._adj_in.setdefault(peer, {})
        # key -> the announced prefix object, or None (withdrawn: the Loc-RIB has the object)
        touched: dict[int, IPv4Network | None] = {}
        pop = table.pop
        for key in withdrawn:
            if pop(key, None) is not None:
                touched[key] = None
        asn = self._peer_asn.get(peer, self.local_as)
        rid = self._peer_rid.get(peer)
        # One UPDATE carries one attribute set for all its NLRI: share one Candidate per
        # PathAttrs object (memory and time per route at 100k routes).
        shared: dict[int, Candidate] = {}
        for prefix, attrs in announced:
            c = shared.get(id(attrs))
            if c is None or c.attrs is not attrs:
                c = shared[id(attrs)] = Candidate(peer, asn, rid, attrs)
            key = prefix._key if type(prefix) is Prefix else key_of(prefix)  # type: ignore[attr-defined]
            table[key] = c
            touched[key] = prefix
        return self._recompute(touched, table)

    def prefixes(self) -> list[IPv4Network]:
        """Every prefix some peer offers a path for."""
        return [b.prefix for b in self._loc.values()]

    def best_path(self, prefix: IPv4Network) -> Candidate | None:
        """The single path a route reflector advertises for ``prefix`` (first after the
        tie-break of step 7), or None."""
        key = key_of(prefix)
        cands = [t[key] for t in self._adj_in.values() if key in t]
        pool = select(cands, self.local_as)
        return pool[0] if pool else None

    def flush_peer(self, peer: IPv4Address) -> dict[int, BestRoute | None]:
        """Drop every path from ``peer`` (session down: ExaBGP sends the API a ``state``
        ``down`` event and no withdraws). Returns the Loc-RIB delta."""
        table = self._adj_in.pop(peer, {})
        return self._recompute(dict.fromkeys(table))

    def loc_rib(self) -> dict[IPv4Network, BestRoute]:
        """The current best routes by prefix (a copy)."""
        return {b.prefix: b for b in self._loc.values()}

    def loc_rib_view(self) -> Mapping[IPv4Network, BestRoute]:
        """The current best routes by prefix, as a live read-only view (O(1); no copy)."""
        return _PrefixView(self._loc)

    def take_changes(self) -> dict[int, BestRoute | None]:
        """The Loc-RIB delta since the last call: prefix key -> new best route, or None if
        gone (the prefix object is ``BestRoute.prefix``).

        Lets consumers (the FIB) work in O(changes) rather than O(table) per update batch.
        """
        changed, self._changed = self._changed, {}
        return changed

    def _recompute(self, touched: Mapping[int, IPv4Network | None],
                   withdrawn_from: dict[int, Candidate] | None = None) -> dict[int, BestRoute | None]:
        # ``withdrawn_from``: the table update() popped the None-valued keys from, so a
        # withdrawn key is known to be absent there without another probe.
        changed: dict[int, BestRoute | None] = {}
        tables = list(self._adj_in.values())
        loc = self._loc
        # (next hops, peers) tuples shared by every prefix of one Candidate (one UPDATE).
        single: dict[int, tuple[Candidate, tuple, tuple]] = {}
        one = tables[0] if len(tables) == 1 else None
        for key, prefix in touched.items():
            if one is not None:  # one peer (a ToR, a reflector): nothing to select
                c = None if prefix is None and one is withdrawn_from else one.get(key)
                if c is None:
                    if loc.pop(key, None) is not None:
                        changed[key] = None
                    continue
                cands = None
            else:
                cands = [t[key] for t in tables if key in t]
                if len(cands) == 1:
                    c = cands[0]
                    cands = None
                elif not cands:
                    if loc.pop(key, None) is not None:
                        changed[key] = None
                    continue
            old = loc.get(key)
            if prefix is None:  # withdrawn by this peer, other paths remain
                prefix = old.prefix if old is not None else from_key(key)
            if cands is None:  # the common case: one path, nothing to select
                hit = single.get(id(c))
                if hit is None or hit[0] is not c:
                    hit = single[id(c)] = (c, (c.attrs.next_hop,), (c.peer,))
                if old is not None and old.next_hops == hit[1] and old.peers == hit[2] \
                        and old.as_path == c.attrs.as_path:
                    continue
                new = _new(BestRoute)
                _set_prefix(new, prefix)
                _set_next_hops(new, hit[1])
                _set_peers(new, hit[2])
                _set_as_path(new, c.attrs.as_path)
            else:
                new = best_route(prefix, cands, self.local_as)
                if old is not None and new == old:
                    continue
            loc[key] = new
            changed[key] = new
        if changed:
            self._changed.update(changed)
        return changed


class _PrefixView(abc.Mapping):
    """A read-only live view of a key-indexed table of BestRoutes, indexed by prefix."""

    __slots__ = ("_d",)

    def __init__(self, d: dict[int, BestRoute]) -> None:
        self._d = d

    def __getitem__(self, prefix: IPv4Network) -> BestRoute:
        if not isinstance(prefix, IPv4Network):
            raise KeyError(prefix)
        return self._d[key_of(prefix)]

    def __contains__(self, prefix: object) -> bool:
        return isinstance(prefix, IPv4Network) and key_of(prefix) in self._d

    def __iter__(self):
        return (b.prefix for b in self._d.values())

    def __len__(self) -> int:
        return len(self._d)

    def values(self):
        return self._d.values()


# nlcore.fast.slot_setters: _recompute's one-path case builds a Loc-RIB entry per learned
# prefix from values it holds (nothing to validate); the frozen __init__ would cost about
# twice as much (RouteOp's figures in nlcore.fast).
_set_prefix, _set_next_hops, _set_peers, _set_as_path = _slot_setters(
    BestRoute, "prefix", "next_hops", "peers", "as_path")


def _path_len(attrs: PathAttrs) -> int:
    return attrs.path_length()


def select(cands: list[Candidate], local_as: int) -> list[Candidate]:
    """The equal-best paths among ``cands`` (steps 1-6 of the module doc), ordered by the
    step-7 tie-break; empty if no candidates."""
    if not cands:
        return []
    pool = list(cands)

    def keep(key) -> None:
        nonlocal pool
        best = min(key(c) for c in pool)
        pool = [c for c in pool if key(c) == best]

    keep(lambda c: -(c.attrs.local_pref if c.attrs.local_pref is not None else DEFAULT_LOCAL_PREF))
    keep(lambda c: _path_len(c.attrs))
    keep(lambda c: c.attrs.origin)
    # MED only between paths from the same neighbouring AS (RFC 4271 §9.1.2.2 c).
    def neighbor_as(c: Candidate) -> int:
        return c.attrs.as_path[0] if c.attrs.as_path else c.peer_asn
    survivors = []
    for c in pool:
        med = c.attrs.med or 0
        if all(med <= (o.attrs.med or 0) for o in pool if neighbor_as(o) == neighbor_as(c)):
            survivors.append(c)
    pool = survivors
    keep(lambda c: 0 if c.peer_asn != local_as else 1)

    def tiebreak(c: Candidate) -> tuple[int, int]:
        rid = c.attrs.originator_id or c.peer_router_id or c.peer
        return (int(rid), int(c.peer))

    pool.sort(key=tiebreak)
    return pool


def best_route(prefix: IPv4Network, cands: list[Candidate], local_as: int) -> BestRoute | None:
    """Select the best path(s) among ``cands`` (see module doc). None if no candidates."""
    pool = select(cands, local_as)
    if not pool:
        return None
    hops: list[IPv4Address] = []
    peers: list[IPv4Address] = []
    for c in pool:
        if c.attrs.next_hop not in hops:
            hops.append(c.attrs.next_hop)
            peers.append(c.peer)
    order = sorted(range(len(hops)), key=lambda i: int(hops[i]))
    return BestRoute(prefix=prefix, next_hops=tuple(hops[i] for i in order),
                     peers=tuple(peers[i] for i in order), as_path=pool[0].attrs.as_path)

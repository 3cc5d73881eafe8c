"""Per-peer Adj-RIB-In and the Loc-RIB derived from it by best-path selection.

Decision process: a subset of RFC 4271 §9.1.2.2 (ExaBGP has no best-path logic of its own:
FACTS "Supported / not"), in order:

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

from types import MappingProxyType

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Iterable, Mapping

from .model import BestRoute, PathAttrs

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

    All mutators return the set of prefixes whose best route may have changed; read the
    result with :meth:`loc_rib`. Not thread-safe (used from one event loop).
    """

    def __init__(self, local_as: int) -> None:
        self.local_as = local_as
        self._adj_in: dict[IPv4Address, dict[IPv4Network, Candidate]] = {}
        self._peer_asn: dict[IPv4Address, int] = {}
        self._peer_rid: dict[IPv4Address, IPv4Address] = {}
        self._loc: dict[IPv4Network, BestRoute] = {}
        self._changed: set[IPv4Network] = set()   # Loc-RIB changes not yet taken

    def set_peer(self, peer: IPv4Address, asn: int, router_id: IPv4Address | None = None) -> None:
        """Record the peer's ASN (from config) and BGP identifier (from its OPEN)."""
        self._peer_asn[peer] = asn
        if router_id is not None:
            self._peer_rid[peer] = router_id

    def peer_prefixes(self, peer: IPv4Address) -> Mapping[IPv4Network, Candidate]:
        """``peer``'s accepted paths as a live read-only view (O(1); for membership/size)."""
        return MappingProxyType(self._adj_in.get(peer, {}))

    def adj_rib_in(self, peer: IPv4Address) -> Mapping[IPv4Network, PathAttrs]:
        return {p: c.attrs for p, c in self._adj_in.get(peer, {}).items()}

    def update(self, peer: IPv4Address, announced: Iterable[tuple[IPv4Network, PathAttrs]] = (),
               withdrawn: Iterable[IPv4Network] = ()) -> set[IPv4Network]:
        """Apply one UPDATE's accepted announcements and withdrawals from ``peer``.

        An announcement replaces the peer's previous path for that prefix (implicit
        withdraw, RFC 4271 §3.1). Returns the prefixes whose Loc-RIB entry changed.
        """
        table = self._adj_in.setdefault(peer, {})
        touched: set[IPv4Network] = set()
        for prefix in withdrawn:
            if table.pop(prefix, None) is not None:
                touched.add(prefix)
        asn = self._peer_asn.get(peer, self.local_as)
        rid = self._peer_rid.get(peer)
        # One UPDATE carries one attribute set for all its NLRI: share one Candidate per
        # PathAttrs object (memory and time per route at 100k routes).
        shared: dict[int, Candidate] = {}
        for prefix, attrs in announced:
            c = shared.get(id(attrs))
            if c is None or c.attrs is not attrs:
                c = shared[id(attrs)] = Candidate(peer, asn, rid, attrs)
            table[prefix] = c
            touched.add(prefix)
        return self._recompute(touched)

    def prefixes(self) -> set[IPv4Network]:
        """Every prefix some peer offers a path for."""
        out: set[IPv4Network] = set()
        for t in self._adj_in.values():
            out.update(t)
        return out

    def best_path(self, prefix: IPv4Network) -> Candidate | None:
        """The single path a route reflector advertises for ``prefix`` (first after the
        tie-break of step 7), or None."""
        cands = [t[prefix] for t in self._adj_in.values() if prefix in t]
        pool = select(cands, self.local_as)
        return pool[0] if pool else None

    def flush_peer(self, peer: IPv4Address) -> set[IPv4Network]:
        """Drop every path from ``peer`` (session down: ExaBGP sends no withdraws, FACTS
        pitfall 2). Returns the prefixes whose Loc-RIB entry changed."""
        table = self._adj_in.pop(peer, {})
        return self._recompute(set(table))

    def loc_rib(self) -> Mapping[IPv4Network, BestRoute]:
        """The current best routes (a copy)."""
        return dict(self._loc)

    def loc_rib_view(self) -> Mapping[IPv4Network, BestRoute]:
        """The current best routes as a live read-only view (O(1); no copy)."""
        return MappingProxyType(self._loc)

    def take_changes(self) -> dict[IPv4Network, BestRoute | None]:
        """The Loc-RIB delta since the last call: prefix → new best route, or None if gone.

        Lets consumers (the FIB) work in O(changes) rather than O(table) per update batch.
        """
        changed, self._changed = self._changed, set()
        return {p: self._loc.get(p) for p in changed}

    def _recompute(self, prefixes: set[IPv4Network]) -> set[IPv4Network]:
        changed: set[IPv4Network] = set()
        tables = list(self._adj_in.values())
        loc = self._loc
        # (next hops, peers) tuples shared by every prefix of one Candidate (one UPDATE).
        single: dict[int, tuple[Candidate, tuple, tuple]] = {}
        for prefix in prefixes:
            cands = [t[prefix] for t in tables if prefix in t]
            if len(cands) == 1:  # the common case: one path, nothing to select
                c = cands[0]
                hit = single.get(id(c))
                if hit is None or hit[0] is not c:
                    hit = single[id(c)] = (c, (c.attrs.next_hop,), (c.peer,))
                old = loc.get(prefix)
                if old is not None and old.next_hops == hit[1] and old.peers == hit[2] \
                        and old.as_path == c.attrs.as_path:
                    continue
                new = _new(BestRoute)
                _set_prefix(new, prefix)
                _set_next_hops(new, hit[1])
                _set_peers(new, hit[2])
                _set_as_path(new, c.attrs.as_path)
                loc[prefix] = new
                changed.add(prefix)
                continue
            new = best_route(prefix, cands, self.local_as)
            old = loc.get(prefix)
            if new is None:
                if old is not None:
                    del loc[prefix]
                    changed.add(prefix)
            elif old is None or new != old:
                loc[prefix] = new
                changed.add(prefix)
        self._changed |= changed
        return changed


# A Loc-RIB entry per learned prefix is built in _recompute's one-path case; the frozen
# dataclass __init__ (object.__setattr__ per field) was a fifth of that loop. BestRoute's
# fields are the values given, nothing to validate.
_new = object.__new__
_set_prefix, _set_next_hops, _set_peers, _set_as_path = (
    BestRoute.__dict__[f].__set__ for f in ("prefix", "next_hops", "peers", "as_path"))


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

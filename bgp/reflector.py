"""Route reflection decisions (RFC 4456), for a podroute node acting as the route reflector.

ExaBGP 5.0 has no reflector logic (no cluster-id or client configuration, no best-path
selection, ``exabgp/configuration/neighbor/__init__.py``): the speaker picks one best path per
prefix from its RIB (:meth:`bgp.rib.Rib.best_path`) and uses this module to decide where it
goes and with which ORIGINATOR_ID / CLUSTER_LIST, then announces it per neighbor with
``neighbor N announce route ... originator-id I cluster-list [ ... ]``.

Rules (RFC 4456 §6, §8), among iBGP peers only (eBGP peers never get reflected routes; a
podroute node is not a transit AS):

- from a client: to every other iBGP peer, clients and non-clients;
- from a non-client: to clients only;
- never back to the peer it came from;
- ORIGINATOR_ID: kept if the path has one, else the BGP identifier of the peer we learned it
  from (its router id from the OPEN; its address if no OPEN was seen);
- CLUSTER_LIST: our cluster ID prepended to the path's list;
- NEXT_HOP and the other attributes unchanged.

Loops (a path whose CLUSTER_LIST holds our cluster ID, or whose ORIGINATOR_ID is our router
ID) are dropped on import by :class:`bgp.policy.ImportPolicy`.
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Mapping

from .model import PathAttrs
from .rib import Candidate, Rib


@dataclass(frozen=True)
class Reflected:
    """One path as we reflect it: attributes as received plus RFC 4456 §8 attributes."""

    prefix: IPv4Network
    attrs: PathAttrs
    originator_id: IPv4Address
    cluster_list: tuple[IPv4Address, ...]


def targets(source: IPv4Address, clients: Mapping[IPv4Address, bool]) -> list[IPv4Address]:
    """The iBGP peers a path learned from ``source`` is reflected to. ``clients`` maps every
    iBGP peer address → whether it is an RR client. ``source`` not in ``clients`` (an eBGP
    peer) → no targets. Sorted."""
    if source not in clients:
        return []
    from_client = clients[source]
    return sorted(p for p, is_client in clients.items()
                  if p != source and (from_client or is_client))


def reflect(cand: Candidate, prefix: IPv4Network, cluster_id: IPv4Address) -> Reflected:
    """``cand`` as reflected by a reflector with ``cluster_id`` (RFC 4456 §8)."""
    originator = cand.attrs.originator_id or cand.peer_router_id or cand.peer
    return Reflected(prefix, cand.attrs, originator, (cluster_id,) + tuple(cand.attrs.cluster_list))


def plan(rib: Rib, clients: Mapping[IPv4Address, bool],
         cluster_id: IPv4Address) -> dict[IPv4Address, dict[IPv4Network, Reflected]]:
    """Everything to reflect, per target peer: target → prefix → Reflected. Every peer in
    ``clients`` has an entry (possibly empty)."""
    out: dict[IPv4Address, dict[IPv4Network, Reflected]] = {p: {} for p in clients}
    for prefix in rib.prefixes():
        best = rib.best_path(prefix)
        if best is None:
            continue
        dests = targets(best.peer, clients)
        if not dests:
            continue
        r = reflect(best, prefix, cluster_id)
        for d in dests:
            out[d][prefix] = r
    return out

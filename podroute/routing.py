"""Translate the speaker's Loc-RIB into felix routes for this node's FIB.

Per remote block the IP pool's encapsulation mode decides (:func:`ipip.modes.route_encap`,
Calico's ipipMode / vxlanMode semantics):

- native (Never, or CrossSubnet with the next hop in one of our underlay subnets):
  ``<block> via <node IP>``;
- IPIP: ``<block> via <node IP> dev tunl0 onlink`` (RFC 2003 encapsulation by the kernel);
- VXLAN: ``<block> via <node IP> dev vxlan.podroute onlink``. The remote VTEP is keyed by
  the remote node IP itself: the neighbour entry maps it to the VTEP MAC and the FDB entry
  maps that MAC to the node IP as the VXLAN destination. The MAC is derived from the node
  IP (:func:`ipip.vxlan.vtep_mac`), so every node can compute any remote VTEP from the BGP
  next hop alone; Calico keeps the same facts in its datastore instead.

Several equal best paths (RFC 4271 §9.1.2.2 tie) give one ECMP route with a next hop
each. Routes via our own node IP are dropped.
"""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any, Sequence

from felix.routes import NextHop, Route
from nlcore.fast import net_len as _net_len
from ipip.devices import TUNL0, VXLAN_IFNAME as VXLAN_DEV
from ipip.modes import Encapsulation, PoolEncap, route_encap


def _hop(encap: Encapsulation, nh: IPv4Address) -> NextHop:
    if encap is Encapsulation.IPIP:
        return NextHop(nh, TUNL0, onlink=True)
    if encap is Encapsulation.VXLAN:
        return NextHop(nh, VXLAN_DEV, onlink=True)
    return NextHop(nh)


class FibPlanner:
    """Maps one Loc-RIB entry at a time to its felix route (the incremental BGP→FIB path).

    Memoises what repeats across a table of blocks from a few hundred nodes: the pool that
    holds a prefix (by integer match, most specific pool first), and the encapsulation and
    NextHop per (pool, next hop). ``plan(prefix, best)`` returns ``(route or None,
    vxlan next hops)``; None when every next hop is our own node IP.
    """

    def __init__(self, *, node_ip: IPv4Address, pools: Sequence[PoolEncap],
                 local_subnets: Sequence[IPv4Network]) -> None:
        self.node_ip = node_ip
        self.local_subnets = tuple(local_subnets)
        # In configured order: the first pool holding the prefix decides (pools do not overlap
        # in practice; the config check rejects overlapping pools).
        self._pools = [(int(p.cidr.network_address), int(p.cidr.netmask), p.cidr.prefixlen, p)
                       for p in pools]
        # (pool index, next hop as int) -> (NextHop, is VXLAN). Keyed by int: an
        # IPv4Address hashes through hex() in Python, ~0.4 µs per learned route.
        self._hops: dict[tuple[int, int], tuple[NextHop, bool]] = {}

    def _pool_index(self, prefix: IPv4Network) -> int:
        net, plen = _net_len(prefix)  # nlcore.fast
        for i, (pnet, pmask, plen_pool, _p) in enumerate(self._pools):
            if plen >= plen_pool and net & pmask == pnet:
                return i
        return -1

    def _hop(self, pool_i: int, prefix: IPv4Network, nh: IPv4Address) -> tuple[NextHop, bool]:
        key = (pool_i, int(nh))
        hit = self._hops.get(key)
        if hit is None:
            # Outside every pool (policy may import extra ranges): routed natively.
            pool = self._pools[pool_i][3] if pool_i >= 0 else PoolEncap(prefix)
            encap = route_encap(pool, local_subnets=self.local_subnets, next_hop=nh)
            if len(self._hops) > 65536:
                self._hops.clear()
            hit = self._hops[key] = (_hop(encap, nh), encap is Encapsulation.VXLAN)
        return hit

    def plan(self, prefix: IPv4Network, best: Any) -> tuple[Route | None, frozenset[IPv4Address]]:
        next_hops = best.next_hops
        pool_i = self._pool_index(prefix)
        if len(next_hops) == 1:
            nh = next_hops[0]
            if nh == self.node_ip:
                return None, _NONE
            hop, vx = self._hop(pool_i, prefix, nh)
            return Route.via_hop(prefix, hop), (frozenset((nh,)) if vx else _NONE)
        hops, vxlan = [], []
        for nh in sorted({nh for nh in next_hops if nh != self.node_ip}):
            hop, vx = self._hop(pool_i, prefix, nh)
            hops.append(hop)
            if vx:
                vxlan.append(nh)
        if not hops:
            return None, _NONE
        if len(hops) == 1:
            route = Route.via_hop(prefix, hops[0])
        else:
            route = Route.ecmp(prefix, tuple(hops))
        return route, frozenset(vxlan)


_NONE: frozenset[IPv4Address] = frozenset()

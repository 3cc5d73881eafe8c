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

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Mapping, Sequence

from felix.routes import NextHop, Route
from ipip.modes import Encapsulation, PoolEncap, route_encap

TUNL0 = "tunl0"
VXLAN_DEV = "vxlan.podroute"


@dataclass(frozen=True)
class FibPlan:
    routes: tuple[Route, ...]
    vxlan_next_hops: frozenset[IPv4Address]   # remote VTEPs needed (node IPs)


def _hop(encap: Encapsulation, nh: IPv4Address) -> NextHop:
    if encap is Encapsulation.IPIP:
        return NextHop(nh, TUNL0, onlink=True)
    if encap is Encapsulation.VXLAN:
        return NextHop(nh, VXLAN_DEV, onlink=True)
    return NextHop(nh)


def plan_fib(best: Mapping[IPv4Network, Any], *, node_ip: IPv4Address, pools: Sequence[PoolEncap],
             local_subnets: Sequence[IPv4Network]) -> FibPlan:
    """Map ``{prefix: BestRoute}`` to felix routes, choosing the encapsulation per next hop."""
    routes: list[Route] = []
    vxlan: set[IPv4Address] = set()
    for prefix, br in best.items():
        pool = next((p for p in pools if prefix.subnet_of(p.cidr)), None)
        if pool is None:
            # Policy may import extra ranges outside the pools: route those natively.
            pool = PoolEncap(prefix)
        hops = []
        for nh in sorted({nh for nh in br.next_hops if nh != node_ip}):
            encap = route_encap(pool, local_subnets=local_subnets, next_hop=nh)
            if encap is Encapsulation.VXLAN:
                vxlan.add(nh)
            hops.append(_hop(encap, nh))
        if not hops:
            continue
        if len(hops) == 1:
            h = hops[0]
            routes.append(Route.via(prefix, h.gateway, ifname=h.ifname, onlink=h.onlink))
        else:
            routes.append(Route.ecmp(prefix, tuple(hops)))
    return FibPlan(tuple(routes), frozenset(vxlan))

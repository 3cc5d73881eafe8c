"""Translate the speaker's Loc-RIB into felix routes for this node's FIB.

Native mode (ipipMode/vxlanMode Never, as in Calico's BGP-only data path): a remote
block is routed ``<block> via <node IP>``, relying on the node IP being on-link in the
underlay; with several equal best paths (RFC 4271 §9.1.2.2 tie, e.g. two route
reflectors' copies or two ToRs) an ECMP route with one next hop per path.
"""
from __future__ import annotations

from typing import Any, Mapping

from felix.routes import NextHop, Route
from podroute.config import NodeConfig


def bgp_routes_to_fib(best: Mapping[Any, Any], cfg: NodeConfig) -> list[Route]:
    """Map ``{prefix: BestRoute}`` to felix routes. Routes via our own node IP are dropped."""
    out: list[Route] = []
    for prefix, br in best.items():
        hops = sorted({nh for nh in br.next_hops if nh != cfg.node_ip})
        if not hops:
            continue
        if len(hops) == 1:
            out.append(Route.via(prefix, hops[0]))
        else:
            out.append(Route.ecmp(prefix, tuple(NextHop(h) for h in hops)))
    return out

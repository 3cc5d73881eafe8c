"""The lab's report: ``report.txt`` (what ``lab up`` prints) and ``report.json``.

Both are built from given inputs only (no namespace is read here), so they can be
tested on a made-up lab: the lab state (timings, nodes, pods), each agent's ``status``
document (podroute.statusd; ``{}`` when it did not answer), the ping matrix, the external
routers' session states and each node's proto-90 routes (podroute.lab.probes).

The lab passes when every node has at least one BGP peer and all are established, every
external router session is Established (when there are routers), and every pod pair
pings (cross-node and same-node).
"""
from __future__ import annotations

import statistics
from dataclasses import asdict
from typing import Any

from podroute import statusd
from podroute.lab.model import ASN, ETCD_IP, POOL, RR2_IP, RR_IP, TOR_ASN, Lab, subnet_net

Matrix = dict[tuple[str, str], bool]


def describe_routing(lab: Lab) -> str:
    """One phrase for the lab's BGP topology, e.g. ``bird route reflector 198.18.0.1 (AS 64512)``."""
    return {"rr": f"{lab.peer} route reflector {RR_IP} (AS {ASN})",
            "rr2": f"two {lab.peer} route reflectors {RR_IP}, {RR2_IP} (AS {ASN})",
            "tor": f"{lab.peer} ToR {RR_IP} (AS {TOR_ASN}), eBGP, one AS per node",
            "mesh": f"node-to-node full mesh (AS {ASN})",
            "podroute-rr": f"{lab.nodes[0].name} is a podroute route reflector (AS {ASN})"}[lab.topology]


def _summary(lab: Lab) -> list[str]:
    out: list[str] = []
    t = lab.timings
    nets = ", ".join(str(subnet_net(s)) for s in range(lab.subnets))
    encap = "none (native routing)" if lab.encapsulation == "none" else f"{lab.encapsulation} {lab.encap_mode}"
    store = (f"; datastore etcd at {lab.etcd_endpoint} (pool, BGP configuration and peers written by the lab; "
             f"nodes registered and blocks claimed by the agents)" if lab.datastore == "etcd" else
             f"; datastore kubernetes at https://{ETCD_IP}:6443 (pool, BGP "
             f"configuration, peers and kubelet-style Nodes written by the lab; Nodes annotated and IPAMBlocks "
             f"claimed by the agents)" if lab.datastore == "kubernetes" else "")
    out.append(f"podroute lab '{lab.name}': {len(lab.nodes)} nodes, {len(lab.pods)} pods, {describe_routing(lab)}; "
               f"underlay {nets}, pool {POOL}, encapsulation {encap}{store}")
    out.append(f"lab up took {t.get('total_s', 0):.1f} s: namespaces {t.get('fabric_s', 0):.2f} s, "
               f"first {len(lab.nodes) - 1} agents established {t.get('established_s', 0):.2f} s, "
               f"pods {t.get('pods_s', 0):.2f} s")
    out.append(f"new node join: {lab.nodes[-1].name}'s block reached every other FIB "
               f"{1000 * t.get('join_converge_s', 0):.0f} ms after its BGP session came up "
               f"({t.get('join_total_s', 0):.2f} s after its agent started"
               + (f", {1000 * t['join_registered_s']:.0f} ms after it registered in the datastore"
                  if "join_registered_s" in t else "") + ")")
    adds = [p.add_ms for p in lab.pods if p.add_ms is not None]
    if adds:
        out.append(f"CNI ADD (runtime-style, through the installed conflist: podroute + portmap, wall): "
                   f"p50 {statistics.median(adds):.1f} ms, max {max(adds):.1f} ms over {len(adds)} pods")
    return out


def _nodes_table(lab: Lab, statuses: dict[str, dict[str, Any]]) -> tuple[str, bool]:
    rows = []
    ok = True
    for n in lab.nodes:
        st = statuses.get(n.name) or {}
        peers = st.get("bgp", {}).get("peers", [])
        est = sum(1 for p in peers if p["state"] == "established")
        ok &= bool(peers) and est == len(peers)
        learned = len(st.get("bgp", {}).get("routes", []))
        fib = st.get("fib", {}).get("desired_by_owner", {})
        owners = f"{fib.get('bgp', 0)} remote, {fib.get('blocks', 0)} blackhole, {fib.get('workloads', 0)} workload"
        rows.append([n.name, n.ip, n.block, f"{est}/{len(peers)} Established", str(learned), owners,
                     str(st.get("workloads", 0))])
    table = statusd._table(["NODE", "NODE IP", "BLOCK", "BGP SESSIONS", "ROUTES LEARNED", "FIB (proto 90)", "PODS"],
                           rows)
    return table, ok


def _matrix_lines(lab: Lab, matrix: Matrix) -> list[str]:
    names = [p.name for p in lab.pods]
    width = max(len(n) for n in names) + 2
    out = ["Ping matrix (row pings column; ok = reply, FAIL = no reply, . = same pod)",
           " " * width + "".join(n.ljust(width) for n in names)]
    for s in lab.pods:
        cells = ["." if s is d else ("ok" if matrix[(s.name, d.name)] else "FAIL") for d in lab.pods]
        out.append(s.name.ljust(width) + "".join(c.ljust(width) for c in cells))
    return out


def render(lab: Lab, statuses: dict[str, dict[str, Any]], matrix: Matrix, router_states: dict[str, bool],
           fib_routes: dict[str, list[str]]) -> tuple[str, bool]:
    """``(report.txt text without its final newline, passed)``.

    ``statuses``/``fib_routes`` are keyed by node name, ``matrix`` by (src pod, dst pod)
    name and must hold every ordered pair of ``lab.pods``; ``router_states`` is
    ``{"<router>:<node>": Established?}`` (podroute.lab.routers.sessions). Raises KeyError
    for a missing matrix pair.
    """
    out = _summary(lab)
    out.append("")
    table, ok_sessions = _nodes_table(lab, statuses)
    out.append("Nodes")
    out.append(table)
    out.append("")
    out.append("Routes to other nodes' blocks (ip route show proto 90, per node)")
    for n in lab.nodes:
        for line in fib_routes.get(n.name, []):
            out.append(f"  {n.name}: {line}")
    out.append("")
    if lab.routers:
        out.append(f"Router sessions: {sum(router_states.values())}/{len(router_states)} Established "
                   f"({', '.join(k + '=' + ('up' if v else 'DOWN') for k, v in sorted(router_states.items()))})")
        ok_sessions &= bool(router_states) and all(router_states.values())
    out.append("")
    out += _matrix_lines(lab, matrix)
    cross = [(s, d) for s in lab.pods for d in lab.pods if s.node != d.node]
    cross_ok = sum(matrix[(s.name, d.name)] for s, d in cross)
    same = [(s, d) for s in lab.pods for d in lab.pods if s.node == d.node and s is not d]
    same_ok = sum(matrix[(s.name, d.name)] for s, d in same)
    passed = ok_sessions and cross_ok == len(cross) and same_ok == len(same)
    out.append("")
    out.append(f"cross-node pod pairs reachable: {cross_ok}/{len(cross)}; same-node: {same_ok}/{len(same)}; "
               f"BGP sessions {'all Established' if ok_sessions else 'NOT all Established'}")
    out.append(f"RESULT: {'PASS' if passed else 'FAIL'}")
    return "\n".join(out), passed


def to_json(lab: Lab, passed: bool, statuses: dict[str, dict[str, Any]], matrix: Matrix,
            router_states: dict[str, bool], fib_routes: dict[str, list[str]]) -> dict[str, Any]:
    """The report.json document (same inputs as :func:`render`); tests/e2e and bench/ read
    ``passed``, ``timings``, ``pods``, ``nodes``, ``fib_routes``, ``router_sessions``,
    ``matrix``, ``sessions``, ``datastore`` and ``etcd_endpoint`` (None on the file datastore)."""
    return {
        "passed": passed, "timings": lab.timings,
        "pods": [asdict(p) for p in lab.pods], "nodes": [asdict(n) for n in lab.nodes],
        "encapsulation": lab.encapsulation, "encap_mode": lab.encap_mode, "subnets": lab.subnets,
        "fib_routes": {n.name: fib_routes.get(n.name, []) for n in lab.nodes},
        "router_sessions": router_states, "topology": lab.topology, "peer": lab.peer,
        "matrix": [{"src": s, "dst": d, "ok": ok} for (s, d), ok in matrix.items()],
        "sessions": {n: [{"address": p["address"], "state": p["state"]} for p in (st.get("bgp", {}).get("peers", []))]
                     for n, st in statuses.items()},
        "datastore": lab.datastore, "etcd_endpoint": lab.etcd_endpoint if lab.datastore == "etcd" else None,
    }

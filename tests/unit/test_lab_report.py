"""The lab's report.txt / report.json from given inputs (podroute.lab.report): what it
says, and when the lab passes (every node's sessions and every router session up, every
pod pair reachable)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from podroute.lab.model import Lab, Node, Pod
from podroute.lab.report import describe_routing, render, to_json

REPORT_KEYS = ["passed", "timings", "pods", "nodes", "encapsulation", "encap_mode", "subnets", "fib_routes",
               "router_sessions", "topology", "peer", "matrix", "sessions", "datastore", "etcd_endpoint"]


def make_lab(tmp_path: Path, topology: str = "rr", routers: bool = True) -> Lab:
    lab = Lab("t", str(tmp_path), topology=topology, encapsulation="vxlan", encap_mode="CrossSubnet", subnets=2)
    lab.nodes = [Node("n1", "prl-t-n1", "198.18.0.11", "198.19.1.0/26", str(tmp_path / "n1"), pid=11),
                 Node("n2", "prl-t-n2", "198.18.1.12", "198.19.2.0/26", str(tmp_path / "n2"), pid=12, subnet=1)]
    lab.pods = [Pod("n1p1", "n1", "prl-t-n1p1", "c1", "198.19.1.1", 10.0),
                Pod("n1p2", "n1", "prl-t-n1p2", "c2", "198.19.1.2", 30.0),
                Pod("n2p1", "n2", "prl-t-n2p1", "c3", "198.19.2.1", 20.0)]
    if routers:
        lab.routers = [{"name": "rr", "ns": "prl-t-rr", "impl": "bird", "pid": 5}]
    lab.timings = {"fabric_s": 0.25, "established_s": 2.5, "join_converge_s": 0.0425, "join_total_s": 2.75,
                   "pods_s": 1.5, "total_s": 8.04}
    return lab


def status(peers: list[str], routes: int = 1, workloads: int = 2) -> dict[str, Any]:
    return {"bgp": {"peers": [{"address": "198.18.0.1", "state": s, "since": 1.0} for s in peers],
                    "routes": [{}] * routes},
            "fib": {"desired_by_owner": {"bgp": routes, "blocks": 1, "workloads": workloads}},
            "workloads": workloads}


def all_ok(lab: Lab) -> dict[tuple[str, str], bool]:
    return {(s.name, d.name): True for s in lab.pods for d in lab.pods}


FIB = {"n1": ["198.19.2.0/26 via 198.18.1.12 dev vxlan.podroute onlink", "blackhole 198.19.1.0/26"],
       "n2": ["198.19.1.0/26 via 198.18.0.11 dev vxlan.podroute onlink"]}
UP = {"rr:n1": True, "rr:n2": True}


def test_a_healthy_lab_passes_and_says_what_it_measured(tmp_path: Path) -> None:
    lab = make_lab(tmp_path)
    statuses = {"n1": status(["established"]), "n2": status(["established"], workloads=1)}
    text, passed = render(lab, statuses, all_ok(lab), UP, FIB)
    assert passed
    lines = text.splitlines()
    assert lines[0] == ("podroute lab 't': 2 nodes, 3 pods, bird route reflector 198.18.0.1 (AS 64512); "
                        "underlay 198.18.0.0/24, 198.18.1.0/24, pool 198.19.0.0/16, encapsulation vxlan CrossSubnet")
    assert lines[1] == ("lab up took 8.0 s: namespaces 0.25 s, first 1 agents established 2.50 s, pods 1.50 s")
    assert lines[2] == ("new node join: n2's block reached every other FIB 42 ms after its BGP session came up "
                        "(2.75 s after its agent started)")
    assert lines[3] == ("CNI ADD (runtime-style, through the installed conflist: podroute + portmap, wall): "
                        "p50 20.0 ms, max 30.0 ms over 3 pods")
    assert "| n1   | 198.18.0.11 | 198.19.1.0/26 | 1/1 Established | 1              | " \
           "1 remote, 1 blackhole, 2 workload | 2    |" in lines
    assert "  n1: 198.19.2.0/26 via 198.18.1.12 dev vxlan.podroute onlink" in lines
    assert "  n2: 198.19.1.0/26 via 198.18.0.11 dev vxlan.podroute onlink" in lines
    assert "Router sessions: 2/2 Established (rr:n1=up, rr:n2=up)" in lines
    start = lines.index("Ping matrix (row pings column; ok = reply, FAIL = no reply, . = same pod)")
    assert [line.rstrip() for line in lines[start + 1:start + 5]] == [
        "      n1p1  n1p2  n2p1",
        "n1p1  .     ok    ok",
        "n1p2  ok    .     ok",
        "n2p1  ok    ok    .",
    ]
    assert lines[-2] == "cross-node pod pairs reachable: 4/4; same-node: 2/2; BGP sessions all Established"
    assert lines[-1] == "RESULT: PASS"


def test_one_unreachable_cross_node_pair_fails_the_lab(tmp_path: Path) -> None:
    lab = make_lab(tmp_path)
    matrix = all_ok(lab)
    matrix[("n2p1", "n1p2")] = False
    text, passed = render(lab, {"n1": status(["established"]), "n2": status(["established"])}, matrix, UP, FIB)
    assert not passed
    assert "n2p1  ok    FAIL  ." in [line.rstrip() for line in text.splitlines()]
    assert "cross-node pod pairs reachable: 3/4; same-node: 2/2; BGP sessions all Established" in text
    assert text.endswith("RESULT: FAIL")


def test_one_unreachable_same_node_pair_fails_the_lab(tmp_path: Path) -> None:
    lab = make_lab(tmp_path)
    matrix = all_ok(lab)
    matrix[("n1p1", "n1p2")] = False
    text, passed = render(lab, {"n1": status(["established"]), "n2": status(["established"])}, matrix, UP, FIB)
    assert not passed and "same-node: 1/2" in text


@pytest.mark.parametrize("statuses", [
    {"n1": status(["established"]), "n2": status(["established", "active"])},   # one peer down
    {"n1": status(["established"]), "n2": status([])},                          # no peers at all
    {"n1": status(["established"])},                                            # agent not answering
])
def test_a_node_without_all_sessions_up_fails_the_lab(tmp_path: Path, statuses: dict[str, Any]) -> None:
    lab = make_lab(tmp_path)
    text, passed = render(lab, statuses, all_ok(lab), UP, FIB)
    assert not passed
    assert "BGP sessions NOT all Established" in text and text.endswith("RESULT: FAIL")


def test_a_router_session_down_fails_the_lab(tmp_path: Path) -> None:
    lab = make_lab(tmp_path)
    ok = {"n1": status(["established"]), "n2": status(["established"])}
    text, passed = render(lab, ok, all_ok(lab), {"rr:n1": True, "rr:n2": False}, FIB)
    assert not passed and "Router sessions: 1/2 Established (rr:n1=up, rr:n2=DOWN)" in text
    # A lab with routers whose sessions could not be read at all fails too.
    assert not render(lab, ok, all_ok(lab), {}, FIB)[1]


def test_without_routers_there_is_no_router_line(tmp_path: Path) -> None:
    lab = make_lab(tmp_path, topology="mesh", routers=False)
    text, passed = render(lab, {"n1": status(["established"]), "n2": status(["established"])}, all_ok(lab), {}, FIB)
    assert passed and "Router sessions" not in text
    assert "node-to-node full mesh (AS 64512)" in text.splitlines()[0]


@pytest.mark.parametrize("topology, phrase", [
    ("rr", "bird route reflector 198.18.0.1 (AS 64512)"),
    ("rr2", "two bird route reflectors 198.18.0.1, 198.18.0.2 (AS 64512)"),
    ("tor", "bird ToR 198.18.0.1 (AS 65000), eBGP, one AS per node"),
    ("mesh", "node-to-node full mesh (AS 64512)"),
    ("podroute-rr", "n1 is a podroute route reflector (AS 64512)"),
])
def test_routing_phrase_per_topology(tmp_path: Path, topology: str, phrase: str) -> None:
    assert describe_routing(make_lab(tmp_path, topology=topology)) == phrase


def test_native_routing_and_no_cni_timings(tmp_path: Path) -> None:
    lab = make_lab(tmp_path)
    lab.encapsulation = "none"
    for p in lab.pods:
        p.add_ms = None
    text, _ = render(lab, {}, all_ok(lab), UP, FIB)
    assert text.splitlines()[0].endswith("encapsulation none (native routing)")
    assert "CNI ADD" not in text


def test_json_has_every_key_the_e2e_tests_and_bench_read(tmp_path: Path) -> None:
    lab = make_lab(tmp_path)
    statuses = {"n1": status(["established"]), "n2": {}}
    matrix = all_ok(lab)
    matrix[("n1p1", "n2p1")] = False
    doc = json.loads(json.dumps(to_json(lab, False, statuses, matrix, UP, FIB)))
    assert list(doc) == REPORT_KEYS
    assert doc["passed"] is False
    assert doc["timings"]["join_converge_s"] == 0.0425 and doc["timings"]["join_total_s"] == 2.75
    assert doc["pods"][0] == {"name": "n1p1", "node": "n1", "ns": "prl-t-n1p1", "container_id": "c1",
                              "ip": "198.19.1.1", "add_ms": 10.0}
    assert doc["nodes"][1]["ip"] == "198.18.1.12" and doc["nodes"][1]["subnet"] == 1
    assert (doc["encapsulation"], doc["encap_mode"], doc["subnets"], doc["topology"], doc["peer"]) == \
        ("vxlan", "CrossSubnet", 2, "rr", "bird")
    assert doc["fib_routes"] == FIB
    assert doc["router_sessions"] == UP
    assert {"src": "n1p1", "dst": "n2p1", "ok": False} in doc["matrix"] and len(doc["matrix"]) == 9
    assert doc["sessions"] == {"n1": [{"address": "198.18.0.1", "state": "established"}], "n2": []}


def test_json_lists_a_node_with_no_routes_read_as_empty(tmp_path: Path) -> None:
    lab = make_lab(tmp_path)
    doc = to_json(lab, True, {}, all_ok(lab), UP, {"n1": FIB["n1"]})
    assert doc["fib_routes"] == {"n1": FIB["n1"], "n2": []}

"""The lab's recorded state, address plan, node configs and join timing, without namespaces
(podroute.lab.model, podroute.lab.agents, podroute.lab.probes)."""
from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
import yaml

from podroute.lab import agents, model
from podroute.lab.model import Lab, Node, Pod
from podroute.lab.netns import LabError
from podroute.lab.probes import converge_time
from podroute.config import load
from podroute.datastore import load_cluster


def nodes(tmp_path: Path, topology: str, subnets: int = 1) -> Lab:
    lab = Lab("t", str(tmp_path), topology=topology, subnets=subnets, encapsulation="ipip", encap_mode="CrossSubnet")
    for i in (1, 2, 3):
        s = (i - 1) % subnets
        asn = model.TOR_ASN + i if topology == "tor" else model.ASN
        lab.nodes.append(Node(f"n{i}", f"prl-t-n{i}", str(model.node_ip(i, s)), str(model.node_block(i)),
                              str(tmp_path / f"n{i}"), subnet=s, asn=asn))
    return lab


def test_address_plan() -> None:
    assert model.subnet_net(3) == ipaddress.IPv4Network("198.18.3.0/24")
    assert model.router_ip(3) == ipaddress.IPv4Address("198.18.3.1")
    assert model.node_ip(5, 1) == ipaddress.IPv4Address("198.18.1.15")
    assert model.node_block(7) == ipaddress.IPv4Network("198.19.7.0/26")
    assert model.node_block(7).subnet_of(model.POOL)
    assert model.RR_IP == model.router_ip(0)


def test_lab_json_round_trip_and_old_files(tmp_path: Path) -> None:
    lab = nodes(tmp_path, "tor", subnets=2)
    lab.pods.append(Pod("n1p1", "n1", "prl-t-n1p1", "c" * 16, "198.19.1.1", 12.5))
    lab.routers.append({"name": "rr", "pid": 9})
    lab.timings["fabric_s"] = 0.5
    lab.save()
    assert Lab.load(tmp_path) == lab
    assert not (tmp_path / "lab.json.tmp").exists()
    # A lab.json from before the optional fields existed loads with their defaults.
    raw = json.loads((tmp_path / "lab.json").read_text())
    for key in ("routers", "timings", "encapsulation", "encap_mode", "subnets", "topology", "peer",
                "router_restart_time"):
        del raw[key]
    (tmp_path / "lab.json").write_text(json.dumps(raw))
    old = Lab.load(tmp_path)
    assert old is not None and (old.topology, old.peer, old.encapsulation, old.router_restart_time) == \
        ("rr", "bird", "none", 120)
    (tmp_path / "lab.json").write_text("{not json")
    assert Lab.load(tmp_path) is None
    assert Lab.load(tmp_path / "missing") is None


def test_wait_returns_when_true_and_names_what_timed_out() -> None:
    calls = iter([False, False, True])
    assert model.wait("x", lambda: next(calls), 5, 0.001) >= 0
    with pytest.raises(LabError, match="waiting for the thing"):
        model.wait("the thing", lambda: False, 0.01, 0.001)


@pytest.mark.parametrize("topology, want", [
    ("rr", [{"address": "198.18.0.1", "asn": 64512, "holdTime": 30}]),
    ("rr2", [{"address": "198.18.0.1", "asn": 64512, "holdTime": 30},
             {"address": "198.18.0.2", "asn": 64512, "holdTime": 30}]),
    ("tor", [{"address": "198.18.0.1", "asn": 65000, "holdTime": 30}]),
    ("mesh", []),
    ("podroute-rr", []),
])
def test_node_peers_per_topology(tmp_path: Path, topology: str, want: list) -> None:
    lab = nodes(tmp_path, topology)
    assert agents.node_peers(lab, lab.nodes[0]) == want


def test_node_peers_use_the_router_on_the_nodes_subnet(tmp_path: Path) -> None:
    lab = nodes(tmp_path, "rr", subnets=2)
    assert agents.node_peers(lab, lab.nodes[1])[0]["address"] == "198.18.1.1"


@pytest.mark.parametrize("topology", ["rr", "rr2", "tor", "mesh", "podroute-rr"])
def test_node_config_is_a_valid_agent_config(tmp_path: Path, topology: str) -> None:
    lab = nodes(tmp_path, topology)
    Path(lab.nodes[1].dir).mkdir()
    path = agents.node_config(lab, lab.nodes[1])
    doc = yaml.safe_load(path.read_text())
    assert doc == agents.node_config_doc(lab, lab.nodes[1])
    assert doc["ipPools"] == [{"cidr": "198.19.0.0/16", "blockSize": 26, "ipipMode": "CrossSubnet",
                               "vxlanMode": "Never"}]
    assert ("clusterFile" in doc) == (topology in ("mesh", "podroute-rr"))
    cfg = load(path)  # the agent's own loader accepts what the lab writes
    assert str(cfg.node_ip) == lab.nodes[1].ip


def test_cluster_file_for_mesh_and_podroute_rr(tmp_path: Path) -> None:
    mesh = nodes(tmp_path, "mesh")
    doc = agents.cluster_doc(mesh, mesh.nodes[:2])
    assert doc["bgp"] == {"nodeToNodeMesh": True, "asn": 64512}
    assert [n["name"] for n in doc["nodes"]] == ["t-n1", "t-n2"]
    assert not any("routeReflectorClusterID" in n for n in doc["nodes"])
    rr = nodes(tmp_path, "podroute-rr")
    doc = agents.cluster_doc(rr, rr.nodes)
    assert doc["bgp"]["nodeToNodeMesh"] is False
    assert [n.get("routeReflectorClusterID") for n in doc["nodes"]] == ["198.18.0.11", None, None]
    agents.write_cluster(rr, rr.nodes)
    assert yaml.safe_load((tmp_path / "cluster.yaml").read_text()) == doc
    assert len(load_cluster(tmp_path / "cluster.yaml").nodes) == 3  # the agents' loader accepts it


def test_join_timing() -> None:
    t = converge_time(t_converged=110.5, t_started=108.0, session_since=110.25)
    assert (t.total_s, t.converge_s) == (2.5, 0.25)
    # No session time reported: the figure falls back to the time since the agent started.
    assert converge_time(110.5, 108.0, 0).converge_s == 2.5
    # A session time after convergence (clock granularity) never gives a negative figure.
    assert converge_time(110.5, 108.0, 111.0).converge_s == 0.0

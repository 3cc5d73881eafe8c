"""End to end on a real kube-apiserver (issue 18, must-show 1): ``podroute lab up --nodes 4
--datastore kubernetes`` with real agents running as the shipped role, a real BIRD reflector,
etcd and kube-apiserver in a lab namespace, a full ping matrix; the machine's ``kubectl`` then
shows what podroute wrote (Node annotations, IPAMBlocks) next to what the lab wrote (pool, peer,
kubelet-style Nodes). A node added at run time gets its Node as kubelet would create it and
claims a fifth block; removed, its Node is deleted (``kubectl delete node``) and every other
FIB drops its block. ``lab down`` stops kube-apiserver by PID.
"""
from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
import yaml

from labutil import lab as lab_up, podroute
from podroute.lab import kube, probes
from podroute.lab.model import POOL, Lab
from waiting import wait

pytestmark = pytest.mark.e2e


def kubectl_json(lab: Lab, *what: str) -> dict:
    return json.loads(kube.kubectl(lab, "get", *what, "-o", "json").stdout)


def test_four_node_lab_on_kubernetes(tmp_path: Path) -> None:
    with lab_up(tmp_path, "--nodes", "4", "--pods", "1", "--datastore", "kubernetes") as (name, state, rep):
        lab = Lab.load(state / name)
        assert lab is not None and rep["passed"] is True and rep["datastore"] == "kubernetes"
        assert all(m["ok"] for m in rep["matrix"]) and len(rep["matrix"]) == 4 * 4   # every pod pair
        assert rep["router_sessions"] == {f"rr:n{i}": True for i in range(1, 5)}
        blocks = {lab.node_name(n): n.block for n in lab.nodes}
        assert len(set(blocks.values())) == 4 and all(ipaddress.IPv4Network(b).subnet_of(POOL) for b in blocks.values())
        for n in lab.nodes:   # only a kubeconfig: the Node, its labels and its block come from the API server
            doc = yaml.safe_load((Path(n.dir) / "node.yaml").read_text())
            agent_kc = str(kube.kubeconfig(lab, "agent"))
            assert doc["datastore"] == {"type": "kubernetes", "kubernetes": {"kubeconfig": agent_kc}}
            assert "podCIDRs" not in doc and "labels" not in doc and probes.own_blocks(n.ns) == [n.block]
            kc = yaml.safe_load(kube.kubeconfig(lab, "agent").read_text())
            assert kc["users"][0]["name"] == "podroute-agent"          # the role's group, not an admin

        # what `kubectl get nodes,ippools,bgppeers,ipamblocks` shows
        table = kube.kubectl(lab, "get", "nodes,ippools,bgppeers,ipamblocks").stdout
        rows = [line.split()[:3] for line in table.splitlines() if line.strip()]
        for row in [*([f"node/{n}", "Unknown", "<none>"] for n in blocks),        # no kubelet behind them
                    ["ippool.podroute.io/198-19-0-0-16", "198.19.0.0/16", "26"],
                    ["bgppeer.podroute.io/rr", "198.18.0.1", "64512"],
                    *([f"ipamblock.podroute.io/{cidr.replace('.', '-').replace('/', '-')}", cidr, f"host:{n}"]
                      for n, cidr in blocks.items())]:
            assert row in rows, f"{row!r} not in:\n{table}"
        nodes = {i["metadata"]["name"]: i for i in kubectl_json(lab, "nodes")["items"]}
        assert set(nodes) == set(blocks)
        for n in lab.nodes:
            meta = nodes[lab.node_name(n)]["metadata"]
            assert meta["labels"]["topology.kubernetes.io/zone"] == "zone-0"                 # kubelet's
            assert meta["annotations"]["podroute.io/IPv4Address"] == n.ip                    # the agent's
            assert meta["annotations"]["podroute.io/ASNumber"] == "64512"
        held = {i["spec"]["cidr"]: i["spec"]["affinity"] for i in kubectl_json(lab, "ipamblocks")["items"]}
        assert held == {cidr: f"host:{n}" for n, cidr in blocks.items()}
        st = podroute("lab", "status", "--name", name, "--state-dir", str(state))
        assert st.returncode == 0 and "datastore: kubernetes, kube-apiserver: https://198.18.0.3:6443" in st.stdout
        assert f"ip netns exec {lab.prefix}etcd kubectl --kubeconfig {kube.kubeconfig(lab)} get" in st.stdout

        # a node joins: its Node registered as kubelet would, a fifth IPAMBlock claimed by its agent
        add = podroute("lab", "node", "add", "--lab", name, "--state-dir", str(state), timeout=180)
        assert add.returncode == 0, add.stdout + add.stderr
        lab = Lab.load(state / name)
        n5 = lab.nodes[-1]
        assert n5.name == "n5" and n5.block and n5.block not in blocks.values()
        assert len(kubectl_json(lab, "ipamblocks")["items"]) == 5
        # ... and leaves: drained, its Node deleted, its block gone from every FIB
        rm = podroute("lab", "node", "remove", "n5", "--lab", name, "--state-dir", str(state), timeout=120)
        assert rm.returncode == 0 and f"deleted nodes/{name}-n5" in rm.stdout, rm.stdout + rm.stderr
        lab = Lab.load(state / name)
        assert f"{name}-n5" not in {i["metadata"]["name"] for i in kubectl_json(lab, "nodes")["items"]}
        for n in lab.nodes:
            wait(lambda n=n: not probes.fib_has(n.ns, n5.block), 15, f"{n.name} to drop n5's block")
        pid = lab.kube["pid"]
        assert pid and Path(f"/proc/{pid}").exists()
    assert not Path(f"/proc/{pid}/status").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


@pytest.mark.parametrize("topology", ["mesh", "podroute-rr"])
def test_node_to_node_topologies_on_kubernetes(tmp_path: Path, topology: str) -> None:
    """The nodes peer among themselves from the Nodes: in a mesh the joining node's Node comes
    with it (a Node registered early left the others waiting on a session to no agent), and
    n1, a podroute route reflector by its config, reflects from its first topology on."""
    with lab_up(tmp_path, "--nodes", "3", "--pods", "1", "--datastore", "kubernetes", "--topology", topology) \
            as (name, state, rep):
        assert rep["passed"] is True and all(m["ok"] for m in rep["matrix"]) and len(rep["matrix"]) == 9
        lab = Lab.load(state / name)
        assert lab is not None
        ann = kubectl_json(lab, "node", f"{name}-n1")["metadata"]["annotations"]
        assert ("podroute.io/RouteReflectorClusterID" in ann) == (topology == "podroute-rr")

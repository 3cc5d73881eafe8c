"""Each lab node's podroute agent: its node.yaml, the cluster file, starting it, asking it.

A node's agent is a real ``podroute node run --config <node dir>/node.yaml`` started in
the node's namespace in its own session (output appended to ``<node dir>/agent.log``),
after ``podroute cni install`` as the systemd unit's ``ExecStartPre`` runs it
(podroute.lab.pods.install). Its status comes from its status socket
(``<node dir>/run/agent.sock``, podroute.statusd). Stopping, killing and restarting
agents of a running lab are in podroute.lab.control.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from podroute import statusd
from podroute.lab import monitoring, netns, pods
from podroute.lab.model import ASN, CONTROL_PLANE_DATASTORES, POOL, RR2_IP, RR_IP, TOR_ASN, Lab, Node, router_ip
from podroute.lab.netns import LabError
from podroute.lab.options import CLUSTER_FILE_TOPOLOGIES

PEER_HOLD_TIME_S = 30


def node_peers(lab: Lab, node: Node) -> list[dict[str, Any]]:
    """The ``peers`` of ``node``'s config (node.yaml spelling): its reflector(s) or ToR;
    empty for cluster-file topologies, whose peers come from the cluster file, and on the
    etcd datastore, whose BGPPeers the lab writes (podroute.lab.etcd)."""
    if lab.topology in CLUSTER_FILE_TOPOLOGIES or lab.datastore in CONTROL_PLANE_DATASTORES:
        return []
    if lab.topology == "rr2":
        return [{"address": str(RR_IP), "asn": ASN, "holdTime": PEER_HOLD_TIME_S},
                {"address": str(RR2_IP), "asn": ASN, "holdTime": PEER_HOLD_TIME_S}]
    asn = TOR_ASN if lab.topology == "tor" else ASN
    return [{"address": str(router_ip(node.subnet)), "asn": asn, "holdTime": PEER_HOLD_TIME_S}]


def cluster_doc(lab: Lab, members: list[Node]) -> dict[str, Any]:
    """The cluster-file datastore document listing ``members`` (mesh: every node peers with
    every other; podroute-rr: the lab's first node is the route reflector, RFC 4456)."""
    nodes = []
    for n in members:
        entry: dict[str, Any] = {"name": lab.node_name(n), "ip": n.ip, "asn": n.asn, "podCIDRs": [n.block]}
        if lab.topology == "podroute-rr" and n is lab.nodes[0]:
            entry["routeReflectorClusterID"] = n.ip
        nodes.append(entry)
    return {"bgp": {"nodeToNodeMesh": lab.topology == "mesh", "asn": ASN}, "nodes": nodes}


def write_cluster(lab: Lab, members: list[Node]) -> None:
    """Write ``<root>/cluster.yaml`` (:func:`cluster_doc`) atomically: the agents watch it."""
    tmp = lab.path / "cluster.yaml.tmp"
    tmp.write_text(yaml.safe_dump(cluster_doc(lab, members), sort_keys=False))
    os.replace(tmp, lab.path / "cluster.yaml")


def node_config_doc(lab: Lab, node: Node) -> dict[str, Any]:
    """``node``'s node.yaml as a document (the lab's encapsulation goes into the pool's
    ``ipipMode``/``vxlanMode``, Calico IPPool spelling; a lab with monitoring adds the
    ``metrics:`` listener on the node's underlay address). On the etcd datastore it has a
    ``datastore``/``ipam`` section instead of ``podCIDRs``, ``ipPools`` and ``peers``: the
    node claims its blocks, and pools, peers and the other nodes come from etcd."""
    if lab.datastore in CONTROL_PLANE_DATASTORES:
        return etcd_node_config_doc(lab, node)
    ndir = Path(node.dir)
    cfg: dict[str, Any] = {
        "nodeName": lab.node_name(node),
        "nodeIP": node.ip,
        "asn": node.asn,
        "podCIDRs": [node.block],
        "ipPools": [{"cidr": str(POOL), "blockSize": 26,
                     "ipipMode": lab.encap_mode if lab.encapsulation == "ipip" else "Never",
                     "vxlanMode": lab.encap_mode if lab.encapsulation == "vxlan" else "Never"}],
        "mtu": "auto",
        "peers": node_peers(lab, node),
        "resyncInterval": 30,
        "paths": {"stateDir": str(ndir / "state"), "runDir": str(ndir / "run")},
    }
    if lab.topology in CLUSTER_FILE_TOPOLOGIES:
        cfg["clusterFile"] = str(lab.path / "cluster.yaml")
    if lab.monitoring:
        cfg["metrics"] = monitoring.node_metrics(node)
    return cfg


def etcd_node_config_doc(lab: Lab, node: Node) -> dict[str, Any]:
    """node.yaml of a node of an etcd lab (the contract's ``datastore: {type: etcd}`` shape), or
    of a kubernetes lab (``datastore: {type: kubernetes}`` with the agent's kubeconfig: the Node
    object, its labels and address are kubelet's, podroute.lab.kube)."""
    from podroute.lab.etcd import PREFIX  # lazy: a file lab does not load the etcd client
    ndir = Path(node.dir)
    store: dict[str, Any] = {"type": "etcd", "etcd": {"endpoints": [lab.etcd_endpoint], "prefix": PREFIX},
                             "leaseTTL": node.lease_ttl or lab.lease_ttl}
    if lab.datastore == "kubernetes":
        from podroute.lab.kube import kubeconfig
        store = {"type": "kubernetes", "kubernetes": {"kubeconfig": str(kubeconfig(lab, "agent"))}}
    rr = {"routeReflectorClusterID": node.ip} if lab.topology == "podroute-rr" and node is lab.nodes[0] else {}
    metrics = {"metrics": monitoring.node_metrics(node)} if lab.monitoring else {}
    return {
        "nodeName": lab.node_name(node),
        "nodeIP": node.ip,
        "asn": node.asn,
        **rr,
        "datastore": store,
        "ipam": {"releaseGracePeriod": lab.release_grace},
        "mtu": "auto",
        "resyncInterval": 30,
        "paths": {"stateDir": str(ndir / "state"), "runDir": str(ndir / "run")},
        **metrics,
    }


def node_config(lab: Lab, node: Node) -> Path:
    """Write ``<node dir>/node.yaml`` (:func:`node_config_doc`) and return its path."""
    path = Path(node.dir) / "node.yaml"
    path.write_text(yaml.safe_dump(node_config_doc(lab, node), sort_keys=False))
    return path


def spawn(lab: Lab, node: Node, config: Path) -> int:
    """Start ``podroute node run --config config`` in ``node``'s namespace, record its PID
    in lab.json and return it."""
    with open(Path(node.dir) / "agent.log", "ab") as log:
        proc = subprocess.Popen(["ip", "netns", "exec", node.ns, sys.executable, "-m", "podroute.cli", "node",
                                 "run", "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    node.pid = proc.pid
    lab.save()
    return proc.pid


def start(lab: Lab, node: Node, install_cni: bool = True) -> None:
    """Write the node's config, install its CNI plugin and conflist (the unit's
    ``ExecStartPre``; ``install_cni=False`` when the caller just did), then start its agent."""
    cfg = node_config(lab, node)
    if install_cni:
        pods.install(Path(node.dir), cfg)
    spawn(lab, node, cfg)


def status(node: Node) -> dict[str, Any] | None:
    """The agent's ``status`` document, or None when its socket does not answer within 2 s."""
    try:
        return statusd.query(Path(node.dir) / "run" / "agent.sock", timeout=2)
    except statusd.AgentUnreachable:
        return None


def alive(node: Node) -> bool:
    return bool(node.pid) and netns._alive(node.pid or -1)


def check(node: Node) -> None:
    """Raise LabError with the end of agent.log when ``node``'s agent has exited."""
    if not alive(node):
        tail = (Path(node.dir) / "agent.log").read_text(errors="replace")[-1500:]
        raise LabError(f"agent of {node.name} exited; last log lines:\n{tail}")


def established(node: Node) -> bool:
    """True when the agent answers and all its BGP peers (at least one) are established.
    Raises LabError (:func:`check`) when the agent has exited."""
    check(node)
    st = status(node)
    return bool(st) and all(p["state"] == "established" for p in st["bgp"]["peers"]) and bool(st["bgp"]["peers"])

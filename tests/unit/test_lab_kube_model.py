"""The kubernetes lab's pure parts, without namespaces or an API server: its options and tools,
its node configs (a kubeconfig and nothing a Node owns), the kubelet-style Node objects, the
API server's command line, lab.json round trip and what ``lab status`` prints."""
from __future__ import annotations

from pathlib import Path

import yaml

from podroute.config import parse
from podroute.datastore.model import labels
from podroute.lab import agents, kube, model
from podroute.lab.model import Lab, Node
from podroute.lab.options import LabOptions, required_tools


def kube_lab(tmp_path: Path, topology: str = "rr", subnets: int = 2) -> Lab:
    lab = Lab("t", str(tmp_path), topology=topology, subnets=subnets, datastore="kubernetes", release_grace=3)
    for i in (1, 2, 3):
        s = (i - 1) % subnets
        lab.nodes.append(Node(f"n{i}", f"prl-t-n{i}", str(model.node_ip(i, s)), "", str(tmp_path / f"n{i}"),
                              subnet=s, index=i))
    return lab


def test_kubernetes_is_a_lab_datastore_with_its_tools() -> None:
    LabOptions(name="l", nodes=3, datastore="kubernetes").validate()
    assert {"etcd", "kubectl", "openssl"} <= set(required_tools("bird", datastore="kubernetes"))
    assert "kubectl" not in required_tools("bird", datastore="etcd")


def test_a_kubernetes_node_config_is_a_kubeconfig_and_loads(tmp_path: Path) -> None:
    lab = kube_lab(tmp_path)
    doc = agents.node_config_doc(lab, lab.nodes[1])
    assert doc["datastore"] == {"type": "kubernetes",
                                "kubernetes": {"kubeconfig": str(tmp_path / "kube" / "agent.kubeconfig")}}
    assert not {"podCIDRs", "ipPools", "peers", "labels"} & set(doc)
    assert doc["ipam"] == {"releaseGracePeriod": 3} and doc["nodeName"] == "t-n2"
    (kube.kube_dir(lab) / "certs").mkdir(parents=True)
    (kube.kube_dir(lab) / "certs" / "apiserver.crt").write_text("")   # what kube-apiserver writes at start
    kube._write_kubeconfigs(lab, {"admin": "a" * 32, "agent": "b" * 32})
    cfg = parse(doc, "node.yaml")               # the node config loader accepts it, kubeconfig included
    assert cfg.datastore.type == "kubernetes" and cfg.datastore.claims_blocks and cfg.pod_cidrs == ()
    kc = yaml.safe_load(kube.kubeconfig(lab, "agent").read_text())
    assert kc["clusters"][0]["cluster"]["server"] == "https://198.18.0.3:6443"
    assert kc["users"] == [{"name": "podroute-agent", "user": {"token": "b" * 32}}]
    assert (kube.kubeconfig(lab, "agent").stat().st_mode & 0o777) == 0o600


def test_nodes_are_registered_as_kubelet_would(tmp_path: Path) -> None:
    lab = kube_lab(tmp_path)
    n = kube.kubelet_node(lab, lab.nodes[1])
    assert (n.name, str(n.address), n.asn) == ("t-n2", "198.18.1.12", None)   # podroute annotates the ASN
    assert n.labels == labels({"kubernetes.io/hostname": "t-n2", "kubernetes.io/os": "linux",
                               "topology.kubernetes.io/zone": "zone-1"})


def test_the_api_server_listens_on_the_lab_underlay_with_rbac(tmp_path: Path) -> None:
    argv = kube.argv(kube_lab(tmp_path))
    assert "--bind-address=198.18.0.3" in argv and "--secure-port=6443" in argv
    assert "--authorization-mode=RBAC" in argv and "--etcd-servers=http://198.18.0.3:2379" in argv


def test_lab_json_keeps_the_api_server_and_status_says_how_to_use_kubectl(tmp_path: Path) -> None:
    lab = kube_lab(tmp_path)
    lab.kube.update({"pid": 4242, "url": kube.url(), "dir": str(tmp_path / "kube"), "ns": "prl-t-etcd"})
    lab.save()
    again = Lab.load(tmp_path)
    assert again is not None and again.kube == lab.kube and again.datastore == "kubernetes"
    lines = kube.usage(again)
    assert lines[0].startswith("kube-apiserver: https://198.18.0.3:6443 in prl-t-etcd (pid 4242)")
    assert lines[1] == (f"  ip netns exec prl-t-etcd kubectl --kubeconfig {tmp_path / 'kube' / 'admin.kubeconfig'} "
                        "get nodes,ippools,bgppeers,ipamblocks")

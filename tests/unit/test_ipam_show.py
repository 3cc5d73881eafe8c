"""``podroute ipam show``: pools, blocks, nodes and utilisation from the file datastore and
this node's local IPAM state."""
from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

from cni.ipam import IPAM
from podroute import cli
from podroute.config import IPPool, NodeConfig, Paths
from podroute.ipamshow import collect, render

N = IPv4Network
CLUSTER = """bgp: {asn: 64512}
nodes:
  - {name: n1, ip: 198.18.0.11, podCIDRs: [198.19.1.0/26, 198.19.1.64/26]}
  - {name: n2, ip: 198.18.0.12, podCIDRs: [198.19.2.0/26]}
"""


def cfg(tmp_path, cluster=True) -> NodeConfig:
    f = tmp_path / "cluster.yaml"
    f.write_text(CLUSTER)
    return NodeConfig(node_name="n1", node_ip=IPv4Address("198.18.0.11"),
                      pod_cidrs=(N("198.19.1.0/26"), N("198.19.1.64/26")),
                      ip_pools=(IPPool(N("198.19.0.0/16"), 26, "Never", "Never"),),
                      paths=Paths(tmp_path / "state", tmp_path / "run"), cluster_file=f if cluster else None)


def test_blocks_nodes_and_local_utilisation(tmp_path):
    c = cfg(tmp_path)
    ipam = IPAM(c.paths.state_dir / "ipam", blocks=c.pod_cidrs)
    for i in range(3):
        ipam.allocate(f"net.c{i}.eth0")
    data = collect(c)
    assert [(b["cidr"], b["node"], b["used"]) for b in data["blocks"]] == [
        ("198.19.1.0/26", "n1", 3), ("198.19.1.64/26", "n1", 0), ("198.19.2.0/26", "n2", None)]
    assert data["pools"] == [{"cidr": "198.19.0.0/16", "blockSize": 26, "disabled": False, "size": 65536,
                              "blocks": 3, "used": 3}]
    table = render(data).splitlines()
    assert table[1].split()[:3] == ["IP", "Pool", "198.19.0.0/16"]
    assert table[2].split() == ["Block", "198.19.1.0/26", "n1", "64", "3", "(4%)", "confirmed"]
    assert table[4].split() == ["Block", "198.19.2.0/26", "n2", "64", "-", "confirmed"]


def test_without_a_cluster_file_or_ipam_state(tmp_path):
    data = collect(cfg(tmp_path, cluster=False))
    assert [(b["cidr"], b["node"], b["used"]) for b in data["blocks"]] == [
        ("198.19.1.0/26", "n1", None), ("198.19.1.64/26", "n1", None)]


def test_cli_ipam_show_json(tmp_path, capsys):
    c = tmp_path / "node.yaml"
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    c.write_text(f"""nodeName: n1
nodeIP: 198.18.0.11
podCIDRs: [198.19.1.0/26, 198.19.1.64/26]
ipPools: [{{cidr: 198.19.0.0/16}}]
clusterFile: {tmp_path / 'cluster.yaml'}
paths: {{stateDir: {tmp_path / 'state'}, runDir: {tmp_path / 'run'}}}
""")
    assert cli.main(["ipam", "show", "--config", str(c), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [b["node"] for b in out["blocks"]] == ["n1", "n1", "n2"]


def test_allocations_list_the_pod_recorded_from_cni_args(tmp_path, capsys):
    """Issue 18: each allocation keeps K8S_POD_NAMESPACE/K8S_POD_NAME (the CNI ADD's attrs) and
    `ipam show --allocations` lists them; an address without pod names shows '-'."""
    c = cfg(tmp_path)
    ipam = IPAM(c.paths.state_dir / "ipam", blocks=c.pod_cidrs)
    ipam.allocate("podroute.c1.eth0", {"pod_namespace": "default", "pod_name": "web-0", "container_id": "c1",
                                       "ifname": "eth0", "network": "podroute"})
    ipam.allocate("podroute.c2.eth0", {"pod_namespace": None, "pod_name": None, "container_id": "c2",
                                       "ifname": "eth0", "network": "podroute"})
    data = collect(c)
    assert [(a["ip"], a["pod_namespace"], a["pod_name"], a["container_id"]) for a in data["allocations"]] == [
        ("198.19.1.0", "default", "web-0", "c1"), ("198.19.1.1", None, None, "c2")]
    lines = render(data, allocations=True).splitlines()
    assert any(ln.split()[:3] == ["198.19.1.0", "default/web-0", "c1"] for ln in lines)
    assert any(ln.split()[:3] == ["198.19.1.1", "-", "c2"] for ln in lines)
    assert "default/web-0" not in render(data)  # the table alone stays as calicoctl's

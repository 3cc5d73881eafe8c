"""The etcd lab's pure parts, without namespaces or etcd: its options, what it writes into
etcd per topology (podroute.lab.etcd.resources), its node configs, lab.json round trip,
node names for ``lab node add`` and the datastore key counts of ``lab status``."""
from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from podroute.config import load
from podroute.datastore.model import BGPConfiguration, BGPPeer, IPPool, key_of
from podroute.datastore.model import Node as DNode
from podroute.lab import agents, etcd, membership, model
from podroute.lab.model import Lab, Node
from podroute.lab.netns import LabError
from podroute.lab.options import LabOptions, required_tools


def etcd_lab(tmp_path: Path, topology: str = "rr", subnets: int = 1, encapsulation: str = "none") -> Lab:
    lab = Lab("t", str(tmp_path), topology=topology, subnets=subnets, encapsulation=encapsulation,
              datastore="etcd", lease_ttl=7, release_grace=3)
    for i in (1, 2, 3):
        s = (i - 1) % subnets
        asn = model.TOR_ASN + i if topology == "tor" else model.ASN
        lab.nodes.append(Node(f"n{i}", f"prl-t-n{i}", str(model.node_ip(i, s)), "", str(tmp_path / f"n{i}"),
                              subnet=s, asn=asn, index=i))
    lab.last_index = 3
    return lab


@pytest.mark.parametrize("opts, message", [
    (LabOptions(name="l", nodes=3, datastore="consul"), "--datastore consul: need one of file, etcd, kubernetes"),
    (LabOptions(name="l", nodes=3, datastore="etcd", lease_ttl=1), "--lease-ttl 1: need 2..86400 seconds"),
    (LabOptions(name="l", nodes=3, datastore="etcd", release_grace=-1), "--release-grace -1: need 0..86400"),
])
def test_bad_etcd_options_are_named(opts: LabOptions, message: str) -> None:
    with pytest.raises(LabError, match=message.replace(".", r"\.")):
        opts.validate()


@pytest.mark.parametrize("topology", ["rr", "rr2", "tor", "mesh", "podroute-rr"])
def test_etcd_topologies_are_accepted(topology: str) -> None:
    LabOptions(name="l", nodes=3, datastore="etcd", topology=topology, lease_ttl=2, release_grace=0).validate()


def test_an_etcd_lab_needs_etcd_and_etcdctl() -> None:
    assert {"etcd", "etcdctl"} <= set(required_tools("bird", datastore="etcd"))
    assert "etcd" not in required_tools("bird", datastore="file")


def test_resources_for_a_reflector_lab(tmp_path: Path) -> None:
    lab = etcd_lab(tmp_path, "rr", encapsulation="vxlan")
    res = etcd.resources(lab)
    assert res[0] == IPPool("198-19-0-0-16", model.POOL, 26, ipip_mode="Never", vxlan_mode="Always")
    assert BGPConfiguration(node_to_node_mesh_enabled=False, as_number=model.ASN) in res
    # one subnet: the reflector is a global peer (no per-node peer to write when a node joins)
    peers = [r for r in res if isinstance(r, BGPPeer)]
    assert peers == [BGPPeer("rr", model.RR_IP, model.ASN, hold_time=30)]
    assert etcd.node_peers(lab, lab.nodes[0]) == []


def test_resources_for_a_mesh_lab_have_the_mesh_on_and_no_peers(tmp_path: Path) -> None:
    res = etcd.resources(etcd_lab(tmp_path, "mesh"))
    assert BGPConfiguration(node_to_node_mesh_enabled=True, as_number=model.ASN) in res
    assert not [r for r in res if isinstance(r, BGPPeer)]


def test_a_tor_or_multi_subnet_lab_gives_each_node_the_router_on_its_subnet(tmp_path: Path) -> None:
    lab = etcd_lab(tmp_path, "tor", subnets=2)
    peers = [r for r in etcd.resources(lab) if isinstance(r, BGPPeer)]
    assert [(p.node, str(p.peer_ip), p.as_number) for p in peers] == [
        ("t-n1", "198.18.0.1", model.TOR_ASN), ("t-n2", "198.18.1.1", model.TOR_ASN),
        ("t-n3", "198.18.0.1", model.TOR_ASN)]
    n1 = DNode("t-n1", ipaddress.IPv4Address("198.18.0.11"))
    assert [p.applies_to(n1) for p in peers] == [True, False, False]
    rr = etcd_lab(tmp_path, "rr", subnets=2)
    assert [str(p.peer_ip) for p in etcd.node_peers(rr, rr.nodes[1])] == ["198.18.1.1"]
    # every key fits the etcd key layout (the store refuses others with InvalidData)
    from podroute.datastore.etcdstore import EtcdDatastore
    store = EtcdDatastore([lab.etcd_endpoint])   # no I/O until first use
    assert [store.etcd_key(key_of(r)) for r in etcd.resources(lab)][0].startswith("/podroute/")


def test_etcd_node_config_claims_instead_of_listing_blocks(tmp_path: Path) -> None:
    lab = etcd_lab(tmp_path, "mesh")
    lab.nodes[2].lease_ttl = 2
    doc = agents.node_config_doc(lab, lab.nodes[1])
    assert doc["datastore"] == {"type": "etcd", "etcd": {"endpoints": ["http://198.18.0.3:2379"],
                                                         "prefix": "/podroute/"}, "leaseTTL": 7}
    assert doc["ipam"] == {"releaseGracePeriod": 3}
    assert not {"podCIDRs", "clusterFile", "ipPools"} & set(doc)
    assert "peers" not in doc or doc["peers"] == []
    assert agents.node_config_doc(lab, lab.nodes[2])["datastore"]["leaseTTL"] == 2
    Path(lab.nodes[1].dir).mkdir()
    cfg = load(agents.node_config(lab, lab.nodes[1]))  # the agent's own loader accepts what the lab writes
    assert cfg.datastore.type == "etcd" and cfg.pod_cidrs == ()
    assert agents.node_peers(lab, lab.nodes[0]) == []
    assert "routeReflectorClusterID" not in doc


def test_podroute_rr_on_etcd_makes_the_first_node_a_reflector(tmp_path: Path) -> None:
    lab = etcd_lab(tmp_path, "podroute-rr")
    assert agents.node_config_doc(lab, lab.nodes[0])["routeReflectorClusterID"] == lab.nodes[0].ip
    assert "routeReflectorClusterID" not in agents.node_config_doc(lab, lab.nodes[1])
    cfg = [r for r in etcd.resources(lab) if isinstance(r, BGPConfiguration)]
    assert cfg == [BGPConfiguration(node_to_node_mesh_enabled=False, as_number=model.ASN)]


def test_etcd_lab_json_round_trip(tmp_path: Path) -> None:
    lab = etcd_lab(tmp_path)
    lab.etcd = {"ns": "prl-t-etcd", "pid": 12}
    lab.nodes[0].block = "198.19.7.0/26"
    lab.save()
    assert Lab.load(tmp_path) == lab
    raw = json.loads((tmp_path / "lab.json").read_text())
    for key in ("datastore", "etcd", "lease_ttl", "release_grace", "last_index"):
        del raw[key]
    for n in raw["nodes"]:
        del n["index"], n["lease_ttl"]
    (tmp_path / "lab.json").write_text(json.dumps(raw))
    old = Lab.load(tmp_path)
    assert old is not None and (old.datastore, old.etcd, old.last_index) == ("file", {}, 3)
    assert [n.index for n in old.nodes] == [1, 2, 3]   # derived from n<i>


def test_etcd_endpoint_is_on_the_underlay_not_a_router_address() -> None:
    lab = Lab("t", "/nonexistent")
    assert lab.etcd_endpoint == "http://198.18.0.3:2379"
    assert model.ETCD_IP in model.subnet_net(0)
    assert model.ETCD_IP not in (model.RR_IP, model.RR2_IP, *(model.node_ip(i, 0) for i in range(1, 201)))


@pytest.mark.parametrize("name", ["n1", "web", "a1234567"])
def test_new_node_names(tmp_path: Path, name: str) -> None:
    lab = etcd_lab(tmp_path)
    if name == "n1":
        with pytest.raises(LabError, match="already has a node n1"):
            membership.check_new_name(lab, name)
    else:
        membership.check_new_name(lab, name)


@pytest.mark.parametrize("name", ["", "Web", "1n", "a-b", "etcd", "rr", "fab", "abcdefghi"])
def test_bad_node_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(LabError, match="a node name is 1-8"):
        membership.check_new_name(etcd_lab(tmp_path), name)


def test_key_counts_group_by_collection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lab = etcd_lab(tmp_path)
    monkeypatch.setattr(etcd, "keys", lambda _lab: ["/podroute/nodes/t-n1", "/podroute/nodes/t-n2",
                                                      "/podroute/ipam/blocks/198.19.1.0-26",
                                                      "/podroute/bgpconfig/default"])
    assert etcd.key_counts(lab) == {"nodes": 2, "ipam/blocks": 1, "bgpconfig": 1}
    monkeypatch.setattr(etcd, "keys", lambda _lab: None)
    assert etcd.key_counts(lab) is None


def test_registration_time_comes_from_the_agents_log(tmp_path: Path) -> None:
    from podroute.lab import probes
    node = Node("n1", "prl-t-n1", "198.18.0.11", "", str(tmp_path))
    assert probes.registered_at(node) is None            # no log yet
    (tmp_path / "agent.log").write_text(
        'ts=2026-11-30T08:00:00.250Z level=info logger=podroute.clusterwatch msg="node registered" node=t-n1\n'
        'ts=2026-11-30T08:00:05.000Z level=info logger=podroute.agent msg="agent stopping"\n'
        'ts=2026-11-30T08:01:00.125Z level=info logger=podroute.clusterwatch msg="node registered" node=t-n1\n'
        'ts=2026-11-30T08:01:01.000Z level=info logger=bgp msg="session up"\n')
    from datetime import datetime, timezone
    want = datetime(2026, 11, 30, 8, 1, 0, 125000, tzinfo=timezone.utc).timestamp()
    assert probes.registered_at(node) == want               # the latest run's line
    t = probes.converge_time(t_converged=want + 0.5, t_started=want - 2, session_since=want + 0.25,
                             t_registered=want)
    assert (t.total_s, t.converge_s, t.registered_s) == (2.5, 0.25, 0.5)
    assert probes.converge_time(1.0, 0.0, 0).registered_s is None


def test_pod_container_ids_are_distinct_past_nine_pods(tmp_path: Path) -> None:
    # padding "<lab><node>pod<j>" with '0' gave pod 1 and pod 10 one ID (the 10th ADD then
    # failed: "already attached with different netns")
    from cni import validate
    from podroute.lab import pods
    lab = Lab("eae1e42", str(tmp_path))
    node = Node("n1", "prl-eae1e42-n1", "198.18.0.11", "", str(tmp_path / "n1"), index=1)
    ids = [pods.container_id(lab, node, j) for j in range(1, 101)]
    assert len(set(ids)) == 100
    for cid in ids:
        validate.container_id(cid)

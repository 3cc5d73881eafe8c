import ipaddress

import pytest

from podroute.datastore import BGPPeer, IPPool, expected_next_hops, file_resources, parse_cluster, peers_for
from podroute.schema import ConfigError

A = ipaddress.IPv4Address


def cluster(**bgp):
    return {
        "bgp": {"nodeToNodeMesh": True, **bgp},
        "nodes": [
            {"name": "n1", "ip": "198.18.0.11", "podCIDRs": ["198.19.1.0/26"]},
            {"name": "n2", "ip": "198.18.0.12", "podCIDRs": ["198.19.2.0/26"]},
            {"name": "n3", "ip": "198.18.0.13", "podCIDRs": ["198.19.3.0/26"]},
            {"name": "n4", "ip": "198.18.0.14", "podCIDRs": ["198.19.4.0/26"]},
        ],
    }


def test_full_mesh_peers_every_other_node_and_higher_ip_is_passive():
    c = parse_cluster(cluster())
    specs = peers_for("n2", c)
    assert [(str(s.peer.address), s.source, s.peer.passive) for s in specs] == [
        ("198.18.0.11", "mesh", True),     # n2 > n1: n2 waits for n1 to dial
        ("198.18.0.13", "mesh", False),
        ("198.18.0.14", "mesh", False),
    ]
    # exactly one side of every pair dials
    for a in c.nodes:
        for b in c.nodes:
            if a.name < b.name:
                pa = next(s for s in peers_for(a.name, c) if s.peer.address == b.ip).peer.passive
                pb = next(s for s in peers_for(b.name, c) if s.peer.address == a.ip).peer.passive
                assert pa != pb


def test_route_reflector_topology_with_mesh_off():
    raw = cluster(nodeToNodeMesh=False)
    raw["nodes"][0]["routeReflectorClusterID"] = "198.18.0.11"
    c = parse_cluster(raw)
    rr = peers_for("n1", c)
    assert [(str(s.peer.address), s.source, s.rr_client) for s in rr] == [
        ("198.18.0.12", "rr-client", True), ("198.18.0.13", "rr-client", True), ("198.18.0.14", "rr-client", True)]
    client = peers_for("n3", c)
    assert [(str(s.peer.address), s.source, s.rr_client) for s in client] == [("198.18.0.11", "route-reflector", False)]


def test_global_and_node_peers_and_precedence():
    raw = cluster(nodeToNodeMesh=False, peers=[{"address": "198.18.0.1", "asn": 65000}])
    raw["nodes"][1]["peers"] = [{"address": "198.18.0.254", "asn": 65002}, {"address": "198.18.0.1", "asn": 65009}]
    c = parse_cluster(raw)
    got = {str(s.peer.address): (s.source, s.peer.asn) for s in peers_for("n2", c)}
    assert got == {"198.18.0.1": ("node", 65009), "198.18.0.254": ("node", 65002)}
    assert {str(s.peer.address) for s in peers_for("n1", c)} == {"198.18.0.1"}


def test_expected_next_hops_maps_blocks_to_owner():
    c = parse_cluster(cluster())
    assert expected_next_hops(c)[ipaddress.IPv4Network("198.19.3.0/26")] == A("198.18.0.13")


@pytest.mark.parametrize("mutate,message", [
    (lambda r: r["nodes"][1].update(ip="198.18.0.11"), "nodes[1].ip: 198.18.0.11 is listed twice (also nodes[0])"),
    (lambda r: r["nodes"][2].update(name="n1"), "nodes[2].name: 'n1' is listed twice (also nodes[0])"),
    (lambda r: r["nodes"][3].update(asn=0), "nodes[3].asn: 0 is out of range 1..4294967295"),
    (lambda r: r["nodes"][3].update(podCIDRs=["198.19.1.0/27"]), "198.19.1.0/27 overlaps 198.19.1.0/26"),
    (lambda r: r["bgp"].update(nodeToNodeMesh="on"), "bgp.nodeToNodeMesh: expected true or false"),
])
def test_cluster_file_errors_name_the_key(mutate, message):
    raw = cluster()
    mutate(raw)
    with pytest.raises(ConfigError) as ei:
        parse_cluster(raw, "cluster.yaml")
    assert str(ei.value).startswith("cluster.yaml: ") and message in str(ei.value)


def test_file_labels_selector_peers_pools_and_password_file_references(tmp_path):
    secret = tmp_path / "md5"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    raw = cluster(peers=[{"address": "198.18.0.254", "asn": 65000, "nodeSelector": {"rack": "r1"},
                          "passwordFile": str(secret)}])
    raw["nodes"][0]["labels"] = {"rack": "r1"}
    raw["ipPools"] = [{"cidr": "198.19.0.0/16", "blockSize": 26}]
    items = file_resources(raw)
    (peer,) = [r for r in items.values() if isinstance(r, BGPPeer)]
    assert peer.password_file == secret and "s3cret" not in repr(items)      # the model holds the reference only
    assert [r.cidr for r in items.values() if isinstance(r, IPPool)] == [ipaddress.IPv4Network("198.19.0.0/16")]
    c = parse_cluster(raw)
    assert [(str(p.address), p.password) for p in c.node("n1").peers] == [("198.18.0.254", "s3cret")]
    assert c.node("n2").peers == () and c.global_peers == ()
    assert [str(s.peer.address) for s in peers_for("n1", c) if s.source == "node"] == ["198.18.0.254"]


def test_file_refuses_an_inline_password():
    raw = cluster(peers=[{"address": "198.18.0.254", "asn": 65000, "password": "x"}])
    with pytest.raises(ConfigError, match=r"bgp\.peers\[0\]\.password: a cluster file is shared by every node"):
        parse_cluster(raw)

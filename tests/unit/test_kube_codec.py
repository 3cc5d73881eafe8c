"""podroute.kube.codec: Kubernetes objects <-> the model, without a server: Nodes as kubelet
registers them (InternalIP, the address annotation overriding it, podroute's annotations,
spec.podCIDR with usePodCIDR), every CRD-backed resource round-tripping, Calico selectors, and
bad values turning into InvalidData that names the key and the field."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from podroute.datastore import BGPConfiguration, BGPPeer, IPAMBlock, IPPool, InvalidData, Node
from podroute.datastore.model import BLOCK_RELEASING
from podroute.kube.codec import (ADDRESS, ASN, BGPCONFIGS, BGPPEERS, IPAMBLOCKS, IPPOOLS, NODES, custom_object, decode,
                                 format_selector, node_annotations, node_pod_cidr_key, parse_selector)


def node_obj(name="n1", internal="198.18.0.11", annotations=None, labels=None, pod_cidr=None):
    obj = {"metadata": {"name": name, "resourceVersion": "7", "labels": labels or {},
                        "annotations": annotations or {}},
           "status": {"addresses": [{"type": "Hostname", "address": name},
                                    {"type": "InternalIP", "address": "fd00::1"},
                                    {"type": "InternalIP", "address": internal}]}}
    if pod_cidr:
        obj["spec"] = {"podCIDR": pod_cidr}
    return obj


def test_a_node_is_its_ipv4_internal_ip_and_labels():
    (key, node), = decode(NODES, node_obj(labels={"rack": "a"}))
    assert key == "nodes/n1"
    assert node == Node("n1", IPv4Address("198.18.0.11"), labels=(("rack", "a"),))


def test_podroute_annotations_round_trip_and_the_address_annotation_overrides():
    want = Node("n1", IPv4Address("198.18.0.21"), 65001, IPv4Address("198.18.0.21"), (),
                IPv4Address("198.19.0.1"), IPv4Address("198.19.0.2"))
    ann = {k: v for k, v in node_annotations(want).items() if v is not None}
    ann[ADDRESS] = "198.18.0.21/24"        # Calico writes address/prefix
    (_, node), = decode(NODES, node_obj(annotations=ann))
    assert node == want
    assert ann["podroute.io/VXLANTunnelMACAddr"].count(":") == 5


def test_use_pod_cidr_gives_the_node_a_confirmed_block():
    obj = node_obj(pod_cidr="198.19.4.0/24")
    assert len(decode(NODES, obj)) == 1
    (_, node), (bkey, block) = decode(NODES, obj, use_pod_cidr=True)
    assert (bkey, block) == ("ipamblocks/198-19-4-0-24", IPAMBlock(IPv4Network("198.19.4.0/24"), "n1"))
    assert node_pod_cidr_key(obj) == bkey and node_pod_cidr_key(node_obj()) is None


@pytest.mark.parametrize("obj, words", [
    (node_obj(annotations={ASN: "sixty"}), [ASN, "sixty"]),
    (node_obj(annotations={ASN: "4294967296"}), [ASN]),
    (node_obj(annotations={ADDRESS: "198.18.0.300"}), [ADDRESS]),
    ({"metadata": {"name": "n1", "resourceVersion": "1"}, "status": {"addresses": []}}, ["InternalIP"]),
    (node_obj(pod_cidr="198.19.4.1/24"), ["spec.podCIDR"]),
])
def test_a_bad_node_is_invalid_data_naming_the_key_and_the_field(obj, words):
    (key, bad), = decode(NODES, obj, use_pod_cidr=True)
    assert isinstance(bad, InvalidData) and bad.key == key == "nodes/n1"
    assert all(w in bad.reason for w in words), bad.reason


@pytest.mark.parametrize("resource", [
    IPPool("default", IPv4Network("198.19.0.0/16"), 26, "CrossSubnet", "Never", disabled=True),
    BGPConfiguration(False, 64600, (IPv4Network("198.18.128.0/24"),), ("64600:100",)),
    BGPPeer("tor-a", IPv4Address("198.18.0.1"), 65000, node_selector=(("rack", "a"), ("zone", "z1")),
            password_file=Path("/etc/podroute/tor.key"), hold_time=30, passive=True, port=1179,
            source_address=IPv4Address("198.18.0.11"), multihop_ttl=2, max_prefixes=100,
            max_prefixes_action="teardown"),
    BGPPeer("n1-rr", IPv4Address("198.18.0.2"), 64512, node="n1"),
    BGPPeer("everyone", IPv4Address("198.18.0.3"), 64512, node_selector=()),
    IPAMBlock(IPv4Network("198.19.1.0/26"), "n1", BLOCK_RELEASING),
    IPAMBlock(IPv4Network("198.19.1.64/26"), None),
])
def test_custom_resources_round_trip(resource):
    kind, name, obj = custom_object(resource, 12)
    obj["metadata"]["resourceVersion"] = "12"
    (key, back), = decode(kind, obj)
    assert back == resource and key == f"{kind.plural}/{name}"


def test_only_the_default_bgp_configuration_is_read():
    _, _, obj = custom_object(BGPConfiguration())
    obj["metadata"]["name"] = "node.n1"
    assert decode(BGPCONFIGS, obj) == [("bgpconfigurations/node.n1", None)]


@pytest.mark.parametrize("kind, name, spec, words", [
    (IPAMBLOCKS, "198-19-1-0-26", {"cidr": "198.19.1.64/26"}, ["name must be 198-19-1-64-26"]),
    (IPAMBLOCKS, "198-19-1-0-26", {"cidr": "198.19.1.0/26", "affinity": "n1"}, ["spec.affinity"]),
    (IPAMBLOCKS, "198-19-1-0-26", {"cidr": "198.19.1.0/26", "state": "pending"}, ["spec.state"]),
    (BGPPEERS, "p", {"peerIP": "198.18.0.1"}, ["asn"]),
])
def test_bad_custom_resources_are_invalid_data_naming_the_field(kind, name, spec, words):
    (key, bad), = decode(kind, {"metadata": {"name": name, "resourceVersion": "3"}, "spec": spec})
    assert isinstance(bad, InvalidData) and bad.key == f"{kind.plural}/{name}"
    assert all(w in bad.reason for w in words), bad.reason


def test_peer_rules_the_schema_also_states():
    def reason(kind, spec):
        (_, bad), = decode(kind, {"metadata": {"name": "x", "resourceVersion": "1"}, "spec": spec})
        assert isinstance(bad, InvalidData)
        return bad.reason

    peer = {"peerIP": "198.18.0.1", "asNumber": 65000}
    assert "mutually exclusive" in reason(BGPPEERS, {**peer, "node": "n1", "nodeSelector": "a == 'b'"})
    assert "RFC 4271" in reason(BGPPEERS, {**peer, "holdTime": 2})
    assert "absolute" in reason(BGPPEERS, {**peer, "passwordFile": "tor.key"})
    assert "password" in reason(BGPPEERS, {**peer, "password": "secret"})      # no inline secrets
    assert "mutually exclusive" in reason(IPPOOLS, {"cidr": "198.19.0.0/16", "ipipMode": "Always",
                                                    "vxlanMode": "Always"})


def test_selectors_are_calicos_equality_terms():
    assert parse_selector("rack == 'a'") == (("rack", "a"),)
    assert parse_selector(' zone=="z1" && topology.kubernetes.io/zone == \'b\' ') == (
        ("topology.kubernetes.io/zone", "b"), ("zone", "z1"))
    assert parse_selector("all()") == ()
    for sel in [(("rack", "a"),), (), (("a", "1"), ("b", "x y"))]:
        assert parse_selector(format_selector(sel)) == sel
    for bad in ["rack != 'a'", "has(rack)", "rack == a", "rack == 'a' || rack == 'b'", "a == 'x' && a == 'y'"]:
        with pytest.raises(ValueError):
            parse_selector(bad)


def test_transport_failures_map_onto_the_seams_errors():
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import NewConnectionError, ProtocolError

    from podroute.datastore import Conflict, Unavailable
    from podroute.kube.rest import Forbidden, map_error

    def api(status, message=""):
        e = ApiException(status=status, reason="r")
        e.body = '{"kind": "Status", "message": "%s"}' % message
        return e

    assert isinstance(map_error(ProtocolError("reset"), "watch", NODES, "nodes"), Unavailable)
    assert isinstance(map_error(NewConnectionError(None, "refused"), "list", NODES, "nodes"), Unavailable)
    assert isinstance(map_error(ValueError("Expecting value"), "get", NODES, "nodes/n1"), Unavailable)
    assert isinstance(map_error(api(503), "list", NODES, "nodes"), Unavailable)
    assert isinstance(map_error(api(429), "list", NODES, "nodes"), Unavailable)
    f = map_error(api(403, "nodes is forbidden"), "list", NODES, "nodes")
    assert isinstance(f, Forbidden) and (f.verb, f.resource) == ("list", "nodes")
    f = map_error(api(403), "patch", NODES, "nodes/n1", "status")
    assert f.resource == "nodes/status"
    assert isinstance(map_error(api(401), "list", IPPOOLS, "ippools"), Forbidden)
    assert "apply the CustomResourceDefinitions" in str(map_error(api(404), "list", IPPOOLS, "ippools"))
    c = map_error(api(409, "already exists"), "create", IPAMBLOCKS, "ipamblocks/x")
    assert isinstance(c, Conflict) and c.key == "ipamblocks/x"
    bad = map_error(api(422, "spec.cidr: Invalid value"), "create", IPPOOLS, "ippools/p")
    assert isinstance(bad, InvalidData) and bad.key == "ippools/p" and "spec.cidr" in bad.reason
    with pytest.raises(KeyError):                       # a bug is not turned into an outage
        map_error(KeyError("x"), "get", NODES, "nodes/n1")

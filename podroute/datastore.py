"""The file datastore: one cluster file shared by every node, and the BGP topology it implies.

Calico keeps nodes, BGP peers and the BGP configuration in its datastore; podroute's file
datastore holds the same concepts in one YAML file (``clusterFile`` in the node config)::

    bgp:
      nodeToNodeMesh: true          # Calico's default: every node peers with every other node
      asn: 64512                    # default AS for nodes without their own
      peers:                        # global peers: every node peers with these
        - {address: 198.18.0.1, asn: 64512}
    nodes:
      - name: n1
        ip: 198.18.0.11
        asn: 64512                  # optional: per-node AS (AS-per-rack / AS-per-node designs)
        podCIDRs: [198.19.1.0/26]   # the node's IPAM blocks (block affinity)
        routeReflectorClusterID: 198.18.0.11   # optional: this node is a route reflector
        peers: [{address: 198.18.0.254, asn: 65000}]   # optional: peers of this node only

Topology rules (:func:`peers_for`), mirroring Calico's BGP model:
- node-to-node mesh on: each node peers with every other node. Only one side of a pair
  dials: the node with the higher IP is passive, as Calico does it.
- a node with ``routeReflectorClusterID`` is a route reflector: it peers with every other
  node, non-reflector nodes as RR clients (RFC 4456); with the mesh off, the other nodes
  peer only with the reflectors.
- global peers apply to all nodes, node peers to one node.

Errors: :func:`load_cluster` raises :class:`podroute.schema.ConfigError` naming the file
and key path.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from podroute.config import ASN_RANGE, DEFAULT_ASN, Peer, _node_name, _peer
from podroute.configfile import load_yaml
from podroute.schema import (ConfigError, Section, boolean, integer, ipv4_address, ipv4_network, join,
                             list_of, no_overlaps)

MAX_CLUSTER_BYTES = 4 << 20  # ~50,000 nodes; the pure-Python YAML loader takes seconds per MiB


@dataclass(frozen=True)
class ClusterNode:
    name: str
    ip: ipaddress.IPv4Address
    asn: int
    pod_cidrs: tuple[ipaddress.IPv4Network, ...] = ()
    rr_cluster_id: ipaddress.IPv4Address | None = None
    peers: tuple[Peer, ...] = ()


@dataclass(frozen=True)
class Cluster:
    nodes: tuple[ClusterNode, ...]
    mesh: bool = True
    asn: int = DEFAULT_ASN
    global_peers: tuple[Peer, ...] = ()

    def node(self, name: str) -> ClusterNode | None:
        return next((n for n in self.nodes if n.name == name), None)


@dataclass(frozen=True)
class PeerSpec:
    """A BGP session this node should have, with why it exists (``source``)."""
    peer: Peer
    source: str                       # "mesh", "route-reflector", "rr-client", "global", "node"
    node: str | None = None           # the peer's node name when it is a podroute node
    rr_client: bool = False           # we reflect to it (we are its route reflector)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


def _node(default_asn: int):
    def read(value: Any, path: str) -> ClusterNode:
        s = Section(value, path)
        name = s.get("name", _node_name)
        ip = s.get("ip", ipv4_address)
        asn = s.get("asn", integer(*ASN_RANGE), default_asn)
        cidrs = s.get("podCIDRs", list_of(ipv4_network), ())
        rr = s.get("routeReflectorClusterID", ipv4_address, None)
        peers = s.get("peers", list_of(_peer), ())
        s.finish()
        return ClusterNode(name, ip, asn, cidrs, rr, peers)
    return read


def parse_cluster(raw: Any, source: str = "<memory>") -> Cluster:
    try:
        s = Section(raw, "")
        b = s.section("bgp")
        mesh = b.get("nodeToNodeMesh", boolean, True)
        asn = b.get("asn", integer(*ASN_RANGE), DEFAULT_ASN)
        global_peers = b.get("peers", list_of(_peer), ())
        b.finish()
        nodes = s.get("nodes", list_of(_node(asn)), ())
        s.finish()
        names: dict[str, int] = {}
        ips: dict[ipaddress.IPv4Address, int] = {}
        for i, n in enumerate(nodes):
            if n.name in names:
                raise ConfigError(join(join("nodes", i), "name"), f"{n.name!r} is listed twice (also nodes[{names[n.name]}])")
            if n.ip in ips:
                raise ConfigError(join(join("nodes", i), "ip"), f"{n.ip} is listed twice (also nodes[{ips[n.ip]}])")
            names[n.name], ips[n.ip] = i, i
        no_overlaps((c for n in nodes for c in n.pod_cidrs), "nodes[*].podCIDRs")
        return Cluster(nodes, mesh, asn, global_peers)
    except ConfigError as e:
        raise e.with_file(source) from None


def load_cluster(path: str | Path) -> Cluster:
    """Read and validate a cluster file (at most :data:`MAX_CLUSTER_BYTES`, UTF-8 YAML, see
    :mod:`podroute.configfile`). Raises ConfigError (one-line ``str``) for any content."""
    return parse_cluster(load_yaml(path, MAX_CLUSTER_BYTES), str(path))


def peers_for(me: str, cluster: Cluster, own_peers: tuple[Peer, ...] = ()) -> tuple[PeerSpec, ...]:
    """The BGP sessions node ``me`` should have, deduplicated by peer address.

    Precedence when two rules name the same address: node peers > global peers >
    route-reflector relations > mesh. Raises KeyError if ``me`` is not in the cluster.
    """
    self_node = cluster.node(me)
    if self_node is None:
        raise KeyError(me)
    out: dict[ipaddress.IPv4Address, PeerSpec] = {}
    i_am_rr = self_node.rr_cluster_id is not None
    for other in cluster.nodes:
        if other.name == me:
            continue
        # Calico: the node with the higher IP waits for the lower one to dial.
        passive = int(self_node.ip) > int(other.ip)
        peer = Peer(other.ip, other.asn, passive=passive)
        other_is_rr = other.rr_cluster_id is not None
        if i_am_rr:
            out[other.ip] = PeerSpec(peer, "rr-client" if not other_is_rr else "route-reflector", other.name,
                                     rr_client=not other_is_rr)
        elif other_is_rr:
            out[other.ip] = PeerSpec(peer, "route-reflector", other.name)
        elif cluster.mesh:
            out[other.ip] = PeerSpec(peer, "mesh", other.name)
    for p in cluster.global_peers:
        out[p.address] = PeerSpec(p, "global")
    for p in (*self_node.peers, *own_peers):
        out[p.address] = PeerSpec(p, "node")
    out.pop(self_node.ip, None)
    return tuple(sorted(out.values(), key=lambda s: int(s.peer.address)))


def expected_next_hops(cluster: Cluster) -> dict[ipaddress.IPv4Network, ipaddress.IPv4Address]:
    """Block → owning node IP: a route for a block via any other next hop is suspect."""
    return {c: n.ip for n in cluster.nodes for c in n.pod_cidrs}

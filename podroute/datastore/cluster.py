"""The cluster file format, and the BGP topology a set of resources implies.

Calico keeps nodes, BGP peers and the BGP configuration in its datastore; podroute's file
datastore holds the same concepts in one YAML file (``clusterFile`` in the node config)::

    bgp:
      nodeToNodeMesh: true          # Calico's default: every node peers with every other node
      asn: 64512                    # default AS for nodes without their own
      peers:                        # global peers: every node peers with these ...
        - {address: 198.18.0.1, asn: 64512}
        - {address: 198.18.0.254, asn: 65000, nodeSelector: {rack: r1}}  # ... or those labelled so
    nodes:
      - name: n1
        ip: 198.18.0.11
        asn: 64512                  # optional: per-node AS (AS-per-rack / AS-per-node designs)
        podCIDRs: [198.19.1.0/26]   # the node's IPAM blocks (block affinity)
        routeReflectorClusterID: 198.18.0.11   # optional: this node is a route reflector
        labels: {rack: r1}          # optional: node labels
        peers: [{address: 198.18.0.254, asn: 65000}]   # optional: peers of this node only
    ipPools:                        # optional: the pools (node config ipPools spelling)
      - {cidr: 198.19.0.0/16, blockSize: 26}

Peers in the file reference a ``passwordFile`` (0600, read on each node); an inline
``password`` is refused, since the file is shared. The file maps onto the model
(:mod:`podroute.datastore.model`) by :func:`file_resources`: each node's ``podCIDRs`` become
confirmed IPAM blocks affine to it.

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
from typing import Any, Mapping

from podroute.config import ASN_RANGE, DEFAULT_ASN, Peer, _node_name, _password_file, _peer
from podroute.config import _pool as config_pool
from podroute.configfile import load_yaml
from podroute.schema import (ConfigError, Section, boolean, integer, ipv4_address, ipv4_network, join,
                             list_of, no_overlaps)
from podroute.datastore.model import (BLOCK_CONFIRMED, BGPConfiguration, BGPPeer, IPAMBlock, IPPool, Labels, Node,
                                      Resource, cidr_name, key_of, labels)

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


def _file_peer(name: str, node: str | None):
    def read(value: Any, path: str) -> BGPPeer:
        if isinstance(value, dict) and "password" in value:
            raise ConfigError(join(path, "password"), "a cluster file is shared by every node: reference a 0600 "
                                                      "passwordFile instead of writing the secret")
        selector = None
        if node is None and isinstance(value, dict) and "nodeSelector" in value:
            selector = _labels(value["nodeSelector"], join(path, "nodeSelector"))
            value = {k: v for k, v in value.items() if k != "nodeSelector"}
        p = _peer(value, path)   # checks the passwordFile (a regular 0600 file) here too
        pf = value.get("passwordFile") if isinstance(value, dict) else None
        return BGPPeer(f"{name}-{p.address}", p.address, p.asn, node=node, node_selector=selector,
                       password_file=Path(pf) if pf is not None else None, max_prefixes=p.max_prefixes,
                       hold_time=p.hold_time, passive=p.passive, port=p.port, source_address=p.source_address,
                       multihop_ttl=p.multihop_ttl, max_prefixes_action=p.max_prefixes_action)
    return read


def _pool(value: Any, path: str) -> IPPool:
    p = config_pool(value, path)
    return IPPool(cidr_name(p.cidr), p.cidr, p.block_size, p.ipip_mode, p.vxlan_mode)


def file_resources(raw: Any, source: str = "<memory>") -> dict[str, Resource]:
    """The cluster file as model resources by key (nodes, their podCIDRs as confirmed
    blocks, global peers, node peers, ``ipPools``, the BGP configuration). Raises ConfigError
    naming ``source`` and the key path."""
    try:
        s = Section(raw, "")
        b = s.section("bgp")
        mesh = b.get("nodeToNodeMesh", boolean, True)
        asn = b.get("asn", integer(*ASN_RANGE), DEFAULT_ASN)
        global_peers = b.get("peers", list_of(_file_peer("global", None)), ())
        b.finish()
        raw_nodes = s.get("nodes", list_of(lambda v, p: (v, p)), ())
        pools = s.get("ipPools", list_of(_pool), ())
        s.finish()
        out: dict[str, Resource] = {}
        names: dict[str, int] = {}
        ips: dict[ipaddress.IPv4Address, int] = {}
        blocks: list[IPAMBlock] = []
        for i, (value, path) in enumerate(raw_nodes):
            n = Section(value, path)
            name = n.get("name", _node_name)
            ip = n.get("ip", ipv4_address)
            node_asn = n.get("asn", integer(*ASN_RANGE), None)
            cidrs = n.get("podCIDRs", list_of(ipv4_network), ())
            rr = n.get("routeReflectorClusterID", ipv4_address, None)
            node_labels = n.get("labels", _labels, ())
            peers = n.get("peers", list_of(_file_peer(name, name)), ())
            n.finish()
            if name in names:
                raise ConfigError(join(path, "name"), f"{name!r} is listed twice (also nodes[{names[name]}])")
            if ip in ips:
                raise ConfigError(join(path, "ip"), f"{ip} is listed twice (also nodes[{ips[ip]}])")
            names[name], ips[ip] = i, i
            node = Node(name, ip, node_asn, rr, node_labels)
            out[key_of(node)] = node
            blocks.extend(IPAMBlock(c, name) for c in cidrs)
            out.update((key_of(p), p) for p in peers)
        no_overlaps((b.cidr for b in blocks), "nodes[*].podCIDRs")
        out.update((key_of(b), b) for b in blocks)
        out.update((key_of(p), p) for p in global_peers)
        out.update((key_of(p), p) for p in pools)
        cfg = BGPConfiguration(mesh, asn)
        out[key_of(cfg)] = cfg
        return out
    except ConfigError as e:
        raise e.with_file(source) from None


def _labels(value: Any, path: str) -> Labels:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError(path, "expected a mapping of label names to string values")
    return labels(value)


def _config_peer(p: BGPPeer, key: str) -> Peer:
    secret = _password_file(str(p.password_file), join(key, "passwordFile")) if p.password_file else None
    return Peer(p.peer_ip, p.as_number, p.hold_time, p.passive, p.port, secret, p.source_address,
                p.multihop_ttl, p.max_prefixes, p.max_prefixes_action)


def cluster_from_resources(items: Mapping[str, Resource]) -> Cluster:
    """The BGP topology view of a set of resources (blocking: reads peers' password files).
    Raises ConfigError naming the resource key for a rule the set breaks (two nodes with one
    address, overlapping blocks, an unreadable password file)."""
    cfg = next((r for r in items.values() if isinstance(r, BGPConfiguration)), BGPConfiguration())
    nodes = sorted((r for r in items.values() if isinstance(r, Node)), key=lambda n: n.name)
    peers = sorted(((k, r) for k, r in items.items() if isinstance(r, BGPPeer)), key=lambda kp: kp[0])
    blocks = sorted((r for r in items.values() if isinstance(r, IPAMBlock) and r.state == BLOCK_CONFIRMED),
                    key=lambda b: (int(b.cidr.network_address), b.cidr.prefixlen))
    by_ip: dict[ipaddress.IPv4Address, str] = {}
    for n in nodes:
        if n.address in by_ip:
            raise ConfigError(key_of(n), f"address {n.address} is also node {by_ip[n.address]}'s")
        by_ip[n.address] = n.name
    no_overlaps((b.cidr for b in blocks), "ipamblocks")
    global_peers = tuple(_config_peer(p, k) for k, p in peers if p.node is None and p.node_selector is None)
    cluster_nodes = []
    for n in nodes:
        own = tuple(_config_peer(p, k) for k, p in peers
                    if (p.node is not None or p.node_selector is not None) and p.applies_to(n))
        cidrs = tuple(b.cidr for b in blocks if b.affinity == n.name)
        cluster_nodes.append(ClusterNode(n.name, n.address, n.asn if n.asn is not None else cfg.as_number,
                                         cidrs, n.rr_cluster_id, own))
    return Cluster(tuple(cluster_nodes), cfg.node_to_node_mesh_enabled, cfg.as_number, global_peers)


def parse_cluster(raw: Any, source: str = "<memory>") -> Cluster:
    """The cluster file's topology (:func:`file_resources` then :func:`cluster_from_resources`)."""
    items = file_resources(raw, source)
    try:
        return cluster_from_resources(items)
    except ConfigError as e:
        raise e.with_file(source) from None


def load_file_resources(path: str | Path) -> dict[str, Resource]:
    """Read and validate a cluster file into resources (blocking; see :func:`load_cluster`)."""
    return file_resources(load_yaml(path, MAX_CLUSTER_BYTES), str(path))


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

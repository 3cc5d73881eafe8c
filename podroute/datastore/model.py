"""The cluster model every datastore stores: Calico's resources as frozen dataclasses.

Names and meanings follow Calico's v3 resources (projectcalico.org): :class:`Node`,
:class:`BGPConfiguration`, :class:`BGPPeer`, :class:`IPPool` and :class:`IPAMBlock` (Calico
splits block and affinity into IPAMBlock + BlockAffinity; here the affinity is a field of
the block, which is what a claim compares on). Each resource has one datastore key,
:func:`key_of`, relative to the datastore's prefix (``nodes/n1``, ``ipamblocks/198-19-1-0-26``);
CIDRs in keys are spelled as Calico names its objects (``.`` and ``/`` replaced by ``-``).
This module is the one owner of that mapping: the collections (:data:`PREFIXES`, named as
Calico's resource plurals), :func:`key_of`, :func:`block_key` and :func:`cidr_name` /
:func:`parse_cidr_name`. The etcd store puts its prefix in front
(:class:`podroute.etcd.keys.KeyLayout`); the Kubernetes store maps the same collections onto
its resources.

A stored resource is a :class:`Stored`: the value plus the revision it was last written at
(etcd ModRevision, Kubernetes resourceVersion as an opaque int) that compare-and-swap
writes compare on.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Union

DEFAULT_BLOCK_SIZE = 26          # Calico's IPv4 default
BLOCK_CONFIRMED = "confirmed"    # the affine node owns the block
BLOCK_RELEASING = "releasing"    # marked for release (Calico's pendingDeletion), readers skip it
BLOCK_STATES = (BLOCK_CONFIRMED, BLOCK_RELEASING)

Labels = tuple[tuple[str, str], ...]   # sorted (key, value) pairs: hashable, order-free

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def check_name(name: str, what: str = "name") -> str:
    """``name`` if it is a valid object name: a DNS-1123 subdomain (lower-case alphanumerics,
    '-' and '.', at most 253 characters), as Kubernetes and Calico name objects; ValueError
    naming it otherwise."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"bad {what} {name!r}: want a DNS-1123 subdomain "
                         "(lower-case a-z, 0-9, '-', '.'; at most 253 characters)")
    return name


def labels(mapping: Mapping[str, str] | None = None) -> Labels:
    """A :data:`Labels` value from a mapping."""
    return tuple(sorted((mapping or {}).items()))


def cidr_name(cidr: ipaddress.IPv4Network) -> str:
    """Calico's object name for a CIDR: ``198.19.1.0/26`` -> ``198-19-1-0-26``."""
    return str(cidr).replace(".", "-").replace("/", "-")


def parse_cidr_name(name: str) -> ipaddress.IPv4Network:
    """Inverse of :func:`cidr_name`; ValueError naming ``name`` when it is not one (strict:
    host bits must be zero)."""
    parts = name.split("-")
    if len(parts) != 5 or not all(p.isdigit() and len(p) <= 3 for p in parts):
        raise ValueError(f"bad block name {name!r}: want <a>-<b>-<c>-<d>-<prefix length>, e.g. 198-19-1-0-26")
    try:
        return ipaddress.IPv4Network(f"{'.'.join(parts[:4])}/{parts[4]}", strict=True)
    except ValueError as e:
        raise ValueError(f"bad block name {name!r}: {e}") from None


@dataclass(frozen=True)
class Node:
    """A node (Calico Node + its BGP spec). ``asn`` None means BGPConfiguration's default AS;
    ``rr_cluster_id`` set makes the node a route reflector (RFC 4456); tunnel addresses are
    the node's tunl0 / vxlan.calico addresses when it has them."""
    name: str
    address: ipaddress.IPv4Address
    asn: int | None = None
    rr_cluster_id: ipaddress.IPv4Address | None = None
    labels: Labels = ()
    ipip_tunnel_address: ipaddress.IPv4Address | None = None
    vxlan_tunnel_address: ipaddress.IPv4Address | None = None


@dataclass(frozen=True)
class BGPConfiguration:
    """The cluster-wide BGP settings (Calico's ``default`` BGPConfiguration)."""
    node_to_node_mesh_enabled: bool = True
    as_number: int = 64512
    service_cluster_ips: tuple[ipaddress.IPv4Network, ...] = ()
    communities: tuple[str, ...] = ()      # "asn:value" (RFC 1997) tagged on service routes


@dataclass(frozen=True)
class BGPPeer:
    """A BGP peer (Calico BGPPeer). Applies to ``node`` when set, else to the nodes whose
    labels hold every pair of ``node_selector`` when set, else to all nodes. ``password_file``
    names a 0600 file holding the TCP MD5 key (RFC 2385): the model never carries the secret.
    ``hold_time`` in seconds (RFC 4271 §4.2). ``passive``, ``port``, ``source_address``,
    ``multihop_ttl`` and ``max_prefixes_action`` are podroute's session options (the node
    config's peer keys)."""
    name: str
    peer_ip: ipaddress.IPv4Address
    as_number: int
    node: str | None = None
    node_selector: Labels | None = None
    password_file: Path | None = None
    max_prefixes: int | None = None
    hold_time: int = 90
    passive: bool = False
    port: int = 179
    source_address: ipaddress.IPv4Address | None = None
    multihop_ttl: int | None = None
    max_prefixes_action: str = "reject"

    def applies_to(self, node: Node) -> bool:
        if self.node is not None:
            return node.name == self.node
        if self.node_selector is not None:
            return set(self.node_selector) <= set(node.labels)
        return True


@dataclass(frozen=True)
class IPPool:
    """A pool (Calico IPPool): blocks of ``/block_size`` are carved from ``cidr``; a disabled
    pool hands out no new blocks."""
    name: str
    cidr: ipaddress.IPv4Network
    block_size: int = DEFAULT_BLOCK_SIZE
    ipip_mode: str = "Never"
    vxlan_mode: str = "Never"
    disabled: bool = False


@dataclass(frozen=True)
class IPAMBlock:
    """An IPAM block affine to ``affinity`` (a node name; Calico writes ``host:<node>``), in
    ``state`` (:data:`BLOCK_STATES`)."""
    cidr: ipaddress.IPv4Network
    affinity: str | None
    state: str = BLOCK_CONFIRMED


Resource = Union[Node, BGPConfiguration, BGPPeer, IPPool, IPAMBlock]

NODES = "nodes/"
BGPCONFIGURATIONS = "bgpconfigurations/"
BGPPEERS = "bgppeers/"
IPPOOLS = "ippools/"
IPAMBLOCKS = "ipamblocks/"
DEFAULT_BGPCONFIGURATION = "default"     # the cluster-wide one (Calico's name)
PREFIXES = {Node: NODES, BGPConfiguration: BGPCONFIGURATIONS, BGPPeer: BGPPEERS, IPPool: IPPOOLS,
            IPAMBlock: IPAMBLOCKS}


def key_of(resource: Resource) -> str:
    """The resource's key below the datastore prefix."""
    if isinstance(resource, Node):
        return NODES + resource.name
    if isinstance(resource, BGPConfiguration):
        return BGPCONFIGURATIONS + DEFAULT_BGPCONFIGURATION
    if isinstance(resource, BGPPeer):
        return BGPPEERS + resource.name
    if isinstance(resource, IPPool):
        return IPPOOLS + resource.name
    return block_key(resource.cidr)


def block_key(cidr: ipaddress.IPv4Network) -> str:
    return IPAMBLOCKS + cidr_name(cidr)


@dataclass(frozen=True)
class Stored:
    """A resource as stored: ``revision`` is the revision of its last write (etcd ModRevision;
    Kubernetes resourceVersion), what compare-and-swap writes compare on; ``created`` the
    revision that created the key (etcd CreateRevision), 0 when the store does not say (it
    orders which of two contradicting values came first: :mod:`podroute.datastore.screen`)."""
    key: str
    value: Resource
    revision: int
    created: int = 0

"""Kubernetes objects <-> podroute's model (:mod:`podroute.datastore.model`), both ways.

Objects are the API's JSON as dicts (the client's ``_preload_content=False`` + ``json``), so a
list of 1,000 Nodes is not turned into generated model classes first.

- **Node** (core/v1, as kubelet registers it): the address is the ``podroute.io/IPv4Address``
  annotation when set (Calico's ``projectcalico.org/IPv4Address``: an address, optionally with a
  prefix length), else the first IPv4 ``InternalIP`` in ``status.addresses``. The labels are the
  Node's labels. podroute's own per-node data are annotations, as Calico keeps them
  (``libcalico-go/lib/backend/k8s/resources/node.go``): :data:`ASN`, :data:`RR_CLUSTER_ID`,
  :data:`IPIP_TUNNEL_ADDR`, :data:`VXLAN_TUNNEL_ADDR` and :data:`VXLAN_MAC` (written for
  ``kubectl`` readers; podroute derives the MAC from the node name, :func:`ipip.vxlan.vtep_mac`).
  With ``use_pod_cidr``, ``spec.podCIDR`` (kube-controller-manager's ``--allocate-node-cidrs``)
  is also the node's IPAM block, as flannel and kube-router take it.
- **CRDs** of group ``podroute.io``, version ``v1`` (``configs/crds/``), Calico's field names:
  IPPool ``{cidr, blockSize, ipipMode, vxlanMode, disabled}``, BGPPeer ``{peerIP, asNumber, node,
  nodeSelector, holdTime, passive, port, passwordFile, sourceAddress, multihopTTL, maxPrefixes,
  maxPrefixesAction}``, BGPConfiguration ``default`` ``{nodeToNodeMeshEnabled, asNumber,
  serviceClusterIPs: [{cidr}], communities}``, IPAMBlock ``{cidr, affinity: host:<node>, state}``.

Decoding never raises: a value podroute cannot use is an :class:`InvalidData` naming the key
(``nodes/n1``, ``bgppeers/tor-a``) and what is wrong. The API server's schema already rejects
most nonsense; this is the second line (older CRDs, Node annotations, rules CEL cannot state).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ipip.vxlan import vtep_mac
from podroute.config import ASN_RANGE, DEFAULT_ASN, _peer
from podroute.config import _pool as config_pool
from podroute.config import _community
from podroute.datastore.api import InvalidData
from podroute.datastore.model import (BLOCK_CONFIRMED, BLOCK_STATES, BGPConfiguration, BGPPeer, IPAMBlock, IPPool,
                                      Labels, Node, Resource, cidr_name, key_of, labels)
from podroute.schema import ConfigError

GROUP, VERSION = "podroute.io", "v1"
ANNOTATION_PREFIX = "podroute.io/"
ADDRESS = ANNOTATION_PREFIX + "IPv4Address"
ASN = ANNOTATION_PREFIX + "ASNumber"
RR_CLUSTER_ID = ANNOTATION_PREFIX + "RouteReflectorClusterID"
IPIP_TUNNEL_ADDR = ANNOTATION_PREFIX + "IPv4IPIPTunnelAddr"
VXLAN_TUNNEL_ADDR = ANNOTATION_PREFIX + "IPv4VXLANTunnelAddr"
VXLAN_MAC = ANNOTATION_PREFIX + "VXLANTunnelMACAddr"
AFFINITY_PREFIX = "host:"       # Calico's IPAMBlock affinity spelling


@dataclass(frozen=True)
class Kind:
    """One collection podroute reads: its REST path, its key prefix in the model and its kind."""
    plural: str
    path: str                   # the collection's REST path, e.g. /apis/podroute.io/v1/ippools
    kind: str
    api_version: str


NODES = Kind("nodes", "/api/v1/nodes", "Node", "v1")
IPPOOLS = Kind("ippools", f"/apis/{GROUP}/{VERSION}/ippools", "IPPool", f"{GROUP}/{VERSION}")
BGPPEERS = Kind("bgppeers", f"/apis/{GROUP}/{VERSION}/bgppeers", "BGPPeer", f"{GROUP}/{VERSION}")
BGPCONFIGS = Kind("bgpconfigurations", f"/apis/{GROUP}/{VERSION}/bgpconfigurations", "BGPConfiguration",
                  f"{GROUP}/{VERSION}")
IPAMBLOCKS = Kind("ipamblocks", f"/apis/{GROUP}/{VERSION}/ipamblocks", "IPAMBlock", f"{GROUP}/{VERSION}")
KINDS = (NODES, IPPOOLS, BGPPEERS, BGPCONFIGS, IPAMBLOCKS)
BY_PLURAL = {k.plural: k for k in KINDS}

Decoded = tuple[str, Resource | InvalidData | None]   # (key, value); None: not podroute's (skipped)


def resource_version(obj: dict[str, Any]) -> int:
    """``metadata.resourceVersion`` as an int: podroute needs an etcd-backed API server, whose
    resourceVersions are etcd revisions in decimal. Raises ValueError otherwise."""
    return int(obj["metadata"]["resourceVersion"])


def key_for(kind: Kind, name: str) -> str:
    return f"{kind.plural}/{name}"


def split_key(key: str) -> tuple[Kind, str]:
    """``ippools/default`` -> (IPPOOLS, "default"). Raises KeyError for another prefix."""
    plural, _, name = key.partition("/")
    if not name:
        raise KeyError(key)
    return BY_PLURAL[plural], name


# --- decoding -----------------------------------------------------------------------------------
class _Bad(Exception):
    pass


def _ipv4(text: Any, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except (ValueError, TypeError):
        raise _Bad(f"{what}: {str(text)[:60]!r} is not an IPv4 address") from None


def _net(text: Any, what: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(text, strict=True)
    except (ValueError, TypeError):
        raise _Bad(f"{what}: {str(text)[:60]!r} is not an IPv4 network") from None


def _spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise _Bad("spec: missing or not an object")
    return spec


def decode_node(obj: dict[str, Any], use_pod_cidr: bool = False) -> list[Decoded]:
    """A Node as the model's Node (and, with ``use_pod_cidr``, its ``spec.podCIDR`` as a
    confirmed IPAMBlock affine to it, keyed as claimed blocks are)."""
    meta = obj.get("metadata") or {}
    name = meta.get("name", "?")
    key = f"nodes/{name}"
    try:
        ann = meta.get("annotations") or {}
        if ADDRESS in ann:
            address = _ipv4(str(ann[ADDRESS]).split("/", 1)[0], f"annotation {ADDRESS}")
        else:
            internal = [a.get("address") for a in (obj.get("status") or {}).get("addresses") or ()
                        if a.get("type") == "InternalIP" and "." in str(a.get("address"))]
            if not internal:
                raise _Bad(f"no IPv4 InternalIP in status.addresses and no {ADDRESS} annotation")
            address = _ipv4(internal[0], "status.addresses InternalIP")
        asn = None
        if ASN in ann:
            text = str(ann[ASN])
            if not text.isdigit() or not ASN_RANGE[0] <= int(text) <= ASN_RANGE[1]:
                raise _Bad(f"annotation {ASN}: {text[:20]!r} is not an AS number {ASN_RANGE[0]}..{ASN_RANGE[1]}")
            asn = int(text)
        node = Node(name, address, asn,
                    _ipv4(ann[RR_CLUSTER_ID], f"annotation {RR_CLUSTER_ID}") if RR_CLUSTER_ID in ann else None,
                    labels(meta.get("labels")),
                    _ipv4(ann[IPIP_TUNNEL_ADDR], f"annotation {IPIP_TUNNEL_ADDR}") if IPIP_TUNNEL_ADDR in ann else None,
                    _ipv4(ann[VXLAN_TUNNEL_ADDR], f"annotation {VXLAN_TUNNEL_ADDR}")
                    if VXLAN_TUNNEL_ADDR in ann else None)
        out: list[Decoded] = [(key, node)]
        pod_cidr = (obj.get("spec") or {}).get("podCIDR")
        if use_pod_cidr and pod_cidr:
            block = IPAMBlock(_net(pod_cidr, "spec.podCIDR"), name)
            out.append((key_of(block), block))
        return out
    except _Bad as e:
        return [(key, InvalidData(key, str(e)))]


def node_pod_cidr_key(obj: dict[str, Any]) -> str | None:
    """The block key a Node's ``spec.podCIDR`` stands for (None when unset or malformed)."""
    try:
        return key_of(IPAMBlock(ipaddress.IPv4Network((obj.get("spec") or {}).get("podCIDR")), None))
    except (ValueError, TypeError):
        return None


def _from_config(read: Callable[[Any, str], Any], value: Any, path: str) -> Any:
    try:
        return read(value, path)
    except ConfigError as e:
        raise _Bad(str(e)) from None


_SELECTOR_TERM = re.compile(r"""\s*([A-Za-z0-9][-A-Za-z0-9_./]*)\s*==\s*(?:'([^']*)'|"([^"]*)")\s*""")


def parse_selector(text: str) -> Labels:
    """Calico's selector syntax restricted to what the model holds: ``all()`` (no terms) or
    equality terms joined by ``&&`` (``rack == 'a' && zone == "z1"``). Raises ValueError."""
    if text.strip() == "all()":
        return ()
    pairs: dict[str, str] = {}
    for term in text.split("&&"):
        m = _SELECTOR_TERM.fullmatch(term)
        if m is None:
            raise ValueError(f"{term.strip()[:60]!r} is not a term `label == 'value'` (only == and && are supported)")
        if pairs.get(m.group(1), m.group(2) or m.group(3) or "") != (m.group(2) or m.group(3) or ""):
            raise ValueError(f"{m.group(1)} is required to have two values: nothing can match")
        pairs[m.group(1)] = m.group(2) if m.group(2) is not None else m.group(3)
    return labels(pairs)


def format_selector(selector: Labels) -> str:
    return " && ".join(f"{k} == '{v}'" for k, v in selector) if selector else "all()"


def _peer_of(name: str, spec: dict[str, Any]) -> BGPPeer:
    if "password" in spec:
        raise _Bad("spec.password: every node reads the resource; reference a 0600 passwordFile instead")
    rest = {k: v for k, v in spec.items() if k not in ("peerIP", "asNumber", "node", "nodeSelector", "passwordFile")}
    # config's reader checks everything but the password file, which is read on each node when
    # the topology is derived (podroute.datastore.cluster): not every node has every peer's file.
    p = _from_config(_peer, {"address": spec.get("peerIP"), "asn": spec.get("asNumber"), **rest}, "spec")
    pf = spec.get("passwordFile")
    if pf is not None and (not isinstance(pf, str) or not pf.startswith("/") or "\0" in pf):
        raise _Bad("spec.passwordFile: must be an absolute path")
    node = spec.get("node")
    if node is not None and not isinstance(node, str):
        raise _Bad("spec.node: must be a node name")
    selector = None
    if spec.get("nodeSelector") is not None:
        if node is not None:
            raise _Bad("spec: node and nodeSelector are mutually exclusive")
        try:
            selector = parse_selector(str(spec["nodeSelector"]))
        except ValueError as e:
            raise _Bad(f"spec.nodeSelector: {e}") from None
    return BGPPeer(name, p.address, p.asn, node=node, node_selector=selector,
                   password_file=Path(pf) if pf is not None else None, max_prefixes=p.max_prefixes,
                   hold_time=p.hold_time, passive=p.passive, port=p.port, source_address=p.source_address,
                   multihop_ttl=p.multihop_ttl, max_prefixes_action=p.max_prefixes_action)


def _pool_of(name: str, spec: dict[str, Any]) -> IPPool:
    disabled = spec.get("disabled", False)
    if not isinstance(disabled, bool):
        raise _Bad("spec.disabled: must be true or false")
    p = _from_config(config_pool, {k: v for k, v in spec.items() if k != "disabled"}, "spec")
    return IPPool(name, p.cidr, p.block_size, p.ipip_mode, p.vxlan_mode, disabled)


def _config_of(spec: dict[str, Any]) -> BGPConfiguration:
    mesh = spec.get("nodeToNodeMeshEnabled", True)
    if not isinstance(mesh, bool):
        raise _Bad("spec.nodeToNodeMeshEnabled: must be true or false")
    asn = spec.get("asNumber", DEFAULT_ASN)
    if isinstance(asn, bool) or not isinstance(asn, int) or not ASN_RANGE[0] <= asn <= ASN_RANGE[1]:
        raise _Bad(f"spec.asNumber: {str(asn)[:20]!r} is not an AS number")
    services = tuple(_net((s or {}).get("cidr") if isinstance(s, dict) else None, f"spec.serviceClusterIPs[{i}].cidr")
                     for i, s in enumerate(spec.get("serviceClusterIPs") or ()))
    communities = tuple(_from_config(_community, c, f"spec.communities[{i}]")
                        for i, c in enumerate(spec.get("communities") or ()))
    return BGPConfiguration(mesh, asn, services, communities)


def _block_of(name: str, spec: dict[str, Any]) -> IPAMBlock:
    cidr = _net(spec.get("cidr"), "spec.cidr")
    if cidr_name(cidr) != name:
        raise _Bad(f"the name must be {cidr_name(cidr)} for spec.cidr {cidr}")
    affinity = spec.get("affinity")
    if affinity is not None:
        if not isinstance(affinity, str) or not affinity.startswith(AFFINITY_PREFIX) or affinity == AFFINITY_PREFIX:
            raise _Bad(f"spec.affinity: {str(affinity)[:60]!r} is not host:<node name>")
        affinity = affinity[len(AFFINITY_PREFIX):]
    state = spec.get("state", BLOCK_CONFIRMED)
    if state not in BLOCK_STATES:
        raise _Bad(f"spec.state: {str(state)[:20]!r} is not one of {', '.join(BLOCK_STATES)}")
    return IPAMBlock(cidr, affinity, state)


def decode(kind: Kind, obj: dict[str, Any], use_pod_cidr: bool = False) -> list[Decoded]:
    """One object of ``kind`` as model values by key (usually one; a Node with ``use_pod_cidr``
    and a podCIDR gives two; a BGPConfiguration other than ``default`` gives ``(key, None)``)."""
    if kind is NODES:
        return decode_node(obj, use_pod_cidr)
    name = (obj.get("metadata") or {}).get("name", "?")
    key = key_for(kind, name)
    try:
        if kind is BGPCONFIGS:
            return [(key, _config_of(obj.get("spec") or {}) if name == "default" else None)]
        spec = _spec(obj)
        if kind is IPPOOLS:
            return [(key, _pool_of(name, spec))]
        if kind is BGPPEERS:
            return [(key, _peer_of(name, spec))]
        return [(key, _block_of(name, spec))]
    except _Bad as e:
        return [(key, InvalidData(key, str(e)))]


# --- encoding (what podroute writes) --------------------------------------------------------------
def node_annotations(node: Node) -> dict[str, str | None]:
    """podroute's annotations for ``node`` as a JSON merge patch (None removes one), without
    :data:`ADDRESS` (the caller decides whether the address is an override)."""
    return {ASN: None if node.asn is None else str(node.asn),
            RR_CLUSTER_ID: None if node.rr_cluster_id is None else str(node.rr_cluster_id),
            IPIP_TUNNEL_ADDR: None if node.ipip_tunnel_address is None else str(node.ipip_tunnel_address),
            VXLAN_TUNNEL_ADDR: None if node.vxlan_tunnel_address is None else str(node.vxlan_tunnel_address),
            VXLAN_MAC: None if node.vxlan_tunnel_address is None else vtep_mac(node.name)}


def encode_spec(resource: Resource) -> tuple[Kind, str, dict[str, Any]]:
    """A CRD-backed resource as (kind, object name, spec). Raises TypeError for a Node."""
    if isinstance(resource, IPPool):
        return IPPOOLS, resource.name, {"cidr": str(resource.cidr), "blockSize": resource.block_size,
                                        "ipipMode": resource.ipip_mode, "vxlanMode": resource.vxlan_mode,
                                        "disabled": resource.disabled}
    if isinstance(resource, BGPConfiguration):
        spec: dict[str, Any] = {"nodeToNodeMeshEnabled": resource.node_to_node_mesh_enabled,
                                "asNumber": resource.as_number}
        if resource.service_cluster_ips:
            spec["serviceClusterIPs"] = [{"cidr": str(c)} for c in resource.service_cluster_ips]
        if resource.communities:
            spec["communities"] = list(resource.communities)
        return BGPCONFIGS, "default", spec
    if isinstance(resource, BGPPeer):
        p = resource
        spec = {"peerIP": str(p.peer_ip), "asNumber": p.as_number, "holdTime": p.hold_time, "passive": p.passive,
                "port": p.port, "maxPrefixesAction": p.max_prefixes_action}
        optional = {"node": p.node, "passwordFile": None if p.password_file is None else str(p.password_file),
                    "nodeSelector": None if p.node_selector is None else format_selector(p.node_selector),
                    "sourceAddress": None if p.source_address is None else str(p.source_address),
                    "multihopTTL": p.multihop_ttl, "maxPrefixes": p.max_prefixes}
        spec.update((k, v) for k, v in optional.items() if v is not None)
        return BGPPEERS, p.name, spec
    if isinstance(resource, IPAMBlock):
        spec = {"cidr": str(resource.cidr), "state": resource.state}
        if resource.affinity is not None:
            spec["affinity"] = AFFINITY_PREFIX + resource.affinity
        return IPAMBLOCKS, cidr_name(resource.cidr), spec
    raise TypeError(f"{type(resource).__name__} is not a custom resource")


def custom_object(resource: Resource, resource_version: int | None = None) -> tuple[Kind, str, dict[str, Any]]:
    """The whole object for a create (or a replace at ``resource_version``)."""
    kind, name, spec = encode_spec(resource)
    meta: dict[str, Any] = {"name": name}
    if resource_version is not None:
        meta["resourceVersion"] = str(resource_version)
    return kind, name, {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": meta, "spec": spec}

"""The stored form of each model resource: one JSON object per key, as the etcd datastore
writes it (and ``etcdctl get --prefix /podroute/`` shows it).

Field names follow Calico's v3 resource specs (camelCase: ``asNumber``, ``blockSize``,
``ipipMode``, ``nodeToNodeMeshEnabled``, ``peerIP``; a block's ``affinity`` is ``host:<node>``
as Calico writes it). Every object carries ``kind`` (the model class name).

:func:`decode` is strict, because what it returns drives routes and BGP sessions: the value
must be UTF-8 JSON, an object of the kind the key's collection holds, with every required
field, no unknown field, values of the right type and range (the node config's rules,
:mod:`podroute.schema`), and its name must be the key's (a block at
``ipamblocks/198-19-1-0-26`` must be 198.19.1.0/26). Anything else raises
:class:`podroute.datastore.api.InvalidData` naming the key and the field.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from podroute.config import ASN_RANGE, ENCAP_MODES, _community
from podroute.datastore.api import InvalidData
from podroute.datastore.model import (BLOCK_STATES, DEFAULT_BLOCK_SIZE, PREFIXES, BGPConfiguration, BGPPeer,
                                      IPAMBlock, IPPool, Labels, Node, Resource, check_name, key_of, labels)
from podroute.schema import (ConfigError, Section, boolean, choice, integer, ipv4_address, ipv4_network, join,
                             list_of, string)

AFFINITY_PREFIX = "host:"        # Calico's block affinity spelling
MAX_VALUE_BYTES = 64 << 10       # a resource is a few hundred bytes; more is not ours


def _opt(v: Any) -> Any:
    return None if v is None else str(v)


def _labels_out(value: Labels | None) -> dict[str, str] | None:
    return None if value is None else dict(value)


def to_json(resource: Resource) -> dict[str, Any]:
    """The JSON object of ``resource`` (see the module docstring)."""
    r = resource
    if isinstance(r, Node):
        return {"kind": "Node", "name": r.name, "address": str(r.address), "asNumber": r.asn,
                "routeReflectorClusterID": _opt(r.rr_cluster_id), "labels": dict(r.labels),
                "ipipTunnelAddress": _opt(r.ipip_tunnel_address), "vxlanTunnelAddress": _opt(r.vxlan_tunnel_address)}
    if isinstance(r, BGPConfiguration):
        return {"kind": "BGPConfiguration", "nodeToNodeMeshEnabled": r.node_to_node_mesh_enabled,
                "asNumber": r.as_number, "serviceClusterIPs": [str(c) for c in r.service_cluster_ips],
                "communities": list(r.communities)}
    if isinstance(r, BGPPeer):
        return {"kind": "BGPPeer", "name": r.name, "peerIP": str(r.peer_ip), "asNumber": r.as_number,
                "node": r.node, "nodeSelector": _labels_out(r.node_selector), "passwordFile": _opt(r.password_file),
                "maxPrefixes": r.max_prefixes, "holdTime": r.hold_time, "passive": r.passive, "port": r.port,
                "sourceAddress": _opt(r.source_address), "multihopTTL": r.multihop_ttl,
                "maxPrefixesAction": r.max_prefixes_action}
    if isinstance(r, IPPool):
        return {"kind": "IPPool", "name": r.name, "cidr": str(r.cidr), "blockSize": r.block_size,
                "ipipMode": r.ipip_mode, "vxlanMode": r.vxlan_mode, "disabled": r.disabled}
    if isinstance(r, IPAMBlock):
        return {"kind": "IPAMBlock", "cidr": str(r.cidr),
                "affinity": None if r.affinity is None else AFFINITY_PREFIX + r.affinity, "state": r.state}
    raise TypeError(f"not a podroute resource: {type(r).__name__}")


def encode(resource: Resource) -> bytes:
    """``resource`` as compact, key-sorted UTF-8 JSON."""
    return json.dumps(to_json(resource), sort_keys=True, separators=(",", ":")).encode()


def _label_map(value: Any, path: str) -> Labels:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError(path, "expected a mapping of label names to string values")
    return labels(value)


def _name(value: Any, path: str) -> str:
    try:
        return check_name(string(value, path))
    except ValueError as e:
        raise ConfigError(path, str(e)) from None


def _affinity(value: Any, path: str) -> str:
    s = string(value, path)
    if not s.startswith(AFFINITY_PREFIX):
        raise ConfigError(path, f"{s!r} is not {AFFINITY_PREFIX}<node>")
    return _name(s[len(AFFINITY_PREFIX):], path)


def _node(s: Section) -> Node:
    return Node(s.get("name", _name), s.get("address", ipv4_address), s.get("asNumber", integer(*ASN_RANGE), None),
                s.get("routeReflectorClusterID", ipv4_address, None), s.get("labels", _label_map, ()),
                s.get("ipipTunnelAddress", ipv4_address, None), s.get("vxlanTunnelAddress", ipv4_address, None))


def _bgpconfig(s: Section) -> BGPConfiguration:
    return BGPConfiguration(s.get("nodeToNodeMeshEnabled", boolean, True), s.get("asNumber", integer(*ASN_RANGE)),
                            s.get("serviceClusterIPs", list_of(ipv4_network), ()),
                            s.get("communities", list_of(_community), ()))


def _path(value: Any, path: str) -> Path:
    p = Path(string(value, path))
    if not p.is_absolute() or "\0" in str(p):
        raise ConfigError(path, f"{str(p)!r} is not an absolute path")
    return p


def _hold_time(value: Any, path: str) -> int:
    hold = integer(0, 65535)(value, path)
    if 0 < hold < 3:   # RFC 4271 §4.2, as the node config's peers
        raise ConfigError(path, f"{hold} is invalid: must be 0 or 3..65535 (RFC 4271 §4.2)")
    return hold


def _bgppeer(s: Section) -> BGPPeer:
    return BGPPeer(s.get("name", _name), s.get("peerIP", ipv4_address), s.get("asNumber", integer(*ASN_RANGE)),
                   s.get("node", _name, None), s.get("nodeSelector", _label_map, None),
                   s.get("passwordFile", _path, None), s.get("maxPrefixes", integer(1, 10_000_000), None),
                   s.get("holdTime", _hold_time, 90), s.get("passive", boolean, False),
                   s.get("port", integer(1, 65535), 179), s.get("sourceAddress", ipv4_address, None),
                   s.get("multihopTTL", integer(1, 255), None),
                   s.get("maxPrefixesAction", choice("reject", "teardown"), "reject"))


def _ippool(s: Section) -> IPPool:
    cidr = s.get("cidr", ipv4_network)
    pool = IPPool(s.get("name", _name), cidr, s.get("blockSize", integer(cidr.prefixlen, 32), DEFAULT_BLOCK_SIZE),
                  s.get("ipipMode", choice(*ENCAP_MODES), "Never"), s.get("vxlanMode", choice(*ENCAP_MODES), "Never"),
                  s.get("disabled", boolean, False))
    if pool.ipip_mode != "Never" and pool.vxlan_mode != "Never":
        raise ConfigError(join(s.path, "ipipMode"), f"ipipMode {pool.ipip_mode} and vxlanMode {pool.vxlan_mode} "
                                                    "are mutually exclusive (Calico refuses such a pool)")
    return pool


def _ipamblock(s: Section) -> IPAMBlock:
    return IPAMBlock(s.get("cidr", ipv4_network), s.get("affinity", _affinity, None),
                     s.get("state", choice(*BLOCK_STATES)))


_READERS: dict[type, Callable[[Section], Resource]] = {
    Node: _node, BGPConfiguration: _bgpconfig, BGPPeer: _bgppeer, IPPool: _ippool, IPAMBlock: _ipamblock}


KINDS: dict[str, type] = {cls.__name__: cls for cls in _READERS}


def parse(raw: Any, path: str = "", kind: type | None = None) -> Resource:
    """The resource in JSON object ``raw`` (``kind`` names its class; when ``kind`` is given it
    must be that). Raises ConfigError naming ``path`` and the field."""
    s = Section(raw, path)
    got = s.get("kind", string)
    cls = KINDS.get(got)
    if cls is None or (kind is not None and cls is not kind):
        want = kind.__name__ if kind is not None else "one of " + ", ".join(KINDS)
        raise ConfigError(join(path, "kind"), f"{got[:40]!r} found where {want} belongs")
    resource = _READERS[cls](s)
    s.finish()
    return resource


def decode(key: str, value: bytes) -> Resource:
    """The resource stored at model key ``key`` (``nodes/n1``). Raises InvalidData(key, why)."""
    kind = next((cls for cls, prefix in PREFIXES.items() if key.startswith(prefix)), None)
    if kind is None:
        raise InvalidData(key, "not a key of any podroute collection")
    if len(value) > MAX_VALUE_BYTES:
        raise InvalidData(key, f"value of {len(value)} bytes is larger than {MAX_VALUE_BYTES}")
    try:
        raw = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidData(key, f"value is not UTF-8 JSON ({str(e)[:80]})") from None
    try:
        resource = parse(raw, "", kind)
    except ConfigError as e:
        raise InvalidData(key, str(e)) from None
    if key_of(resource) != key:
        raise InvalidData(key, f"holds {key_of(resource)} (the name in the value must match the key)")
    return resource

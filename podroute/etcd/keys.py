"""podroute's etcd key layout (documented in podroute/etcd/__init__.py): the one owner of key strings.

Every key is ``<prefix><collection>/<name>``. Names are Kubernetes-style object names (DNS-1123
subdomains: lower-case alphanumerics, '-' and '.', at most 253 characters), as Calico's resource names
are; an IPAM block's name is its CIDR with '/' replaced by '-' (flannel's subnet keys,
``10.5.67.0-24``). IPv6 keeps its ':' (legal in an etcd key; Calico's Kubernetes names replace it only
because Kubernetes names cannot hold it), so a name parses back to one CIDR unambiguously.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

DEFAULT_PREFIX = "/podroute/"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")

NODES = "nodes/"
BLOCKS = "ipam/blocks/"
POOLS = "pools/"
BGPPEERS = "bgppeers/"
BGPCONFIG = "bgpconfig/"
DEFAULT_BGPCONFIG = "default"


def check_name(name: str, what: str = "name") -> str:
    """``name`` if it is a valid object name (see module docstring); ValueError naming it otherwise."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"bad {what} {name!r}: want a DNS-1123 subdomain "
                         "(lower-case a-z, 0-9, '-', '.'; at most 253 characters)")
    return name


def block_name(cidr: IPv4Network | IPv6Network) -> str:
    """``10.244.1.0/26`` -> ``10.244.1.0-26``; ``fd00::/122`` -> ``fd00::-122``."""
    if not isinstance(cidr, (IPv4Network, IPv6Network)):
        raise TypeError(f"block CIDR must be an ipaddress network, not {type(cidr).__name__}")
    return f"{cidr.network_address}-{cidr.prefixlen}"


def parse_block_name(name: str) -> IPv4Network | IPv6Network:
    """Inverse of :func:`block_name`; ValueError naming ``name`` when it is not one (strict: host bits
    must be zero)."""
    addr, sep, plen = name.rpartition("-")
    if not sep or not plen.isdigit():
        raise ValueError(f"bad IPAM block name {name!r}: want <address>-<prefix length>")
    try:
        return ipaddress.ip_network(f"{addr}/{plen}", strict=True)
    except ValueError as e:
        raise ValueError(f"bad IPAM block name {name!r}: {e}") from None


@dataclass(frozen=True)
class KeyLayout:
    """Key strings under ``prefix`` (default ``/podroute/``; must start and end with '/', no '//')."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        p = self.prefix
        if not (isinstance(p, str) and p.startswith("/") and p.endswith("/") and "//" not in p
                and p.isprintable()):
            raise ValueError(f"bad etcd key prefix {p!r}: want an absolute path ending in '/', e.g. '/podroute/'")

    def collection(self, kind: str) -> str:
        """The prefix of one collection, e.g. ``collection(NODES)`` -> ``/podroute/nodes/``."""
        if kind not in (NODES, BLOCKS, POOLS, BGPPEERS, BGPCONFIG):
            raise ValueError(f"unknown podroute etcd collection {kind!r}")
        return self.prefix + kind

    def node(self, name: str) -> str:
        return self.prefix + NODES + check_name(name, "node name")

    def block(self, cidr: IPv4Network | IPv6Network) -> str:
        return self.prefix + BLOCKS + block_name(cidr)

    def pool(self, name: str) -> str:
        return self.prefix + POOLS + check_name(name, "IP pool name")

    def bgppeer(self, name: str) -> str:
        return self.prefix + BGPPEERS + check_name(name, "BGP peer name")

    def bgpconfig(self, name: str = DEFAULT_BGPCONFIG) -> str:
        """``default`` is cluster-wide; ``node.<name>`` is one node's, as Calico names them."""
        return self.prefix + BGPCONFIG + check_name(name, "BGP configuration name")

    def split(self, key: str) -> tuple[str, str]:
        """``/podroute/nodes/n1`` -> ``("nodes/", "n1")``; ValueError naming the key when it is not
        ``<prefix><known collection><name>``."""
        if key.startswith(self.prefix):
            rest = key[len(self.prefix):]
            for kind in (NODES, BLOCKS, POOLS, BGPPEERS, BGPCONFIG):
                if rest.startswith(kind) and rest[len(kind):] and "/" not in rest[len(kind):]:
                    return kind, rest[len(kind):]
        raise ValueError(f"etcd key {key!r} is not in podroute's layout under {self.prefix!r}")

"""podroute's etcd key layout (documented in podroute/etcd/__init__.py): absolute etcd keys.

Every key is ``<prefix><collection><name>``. The collections, the names and the relative key of
each resource belong to the cluster model (:mod:`podroute.datastore.model`: ``key_of``,
``block_key``, ``cidr_name``), which every datastore shares; this module only puts the prefix in
front, checks names, and takes keys apart again. Names are Kubernetes-style object names (DNS-1123
subdomains: lower-case alphanumerics, '-' and '.', at most 253 characters), as Calico's resource
names are; an IPAM block's name is its CIDR spelled as Calico names its IPAMBlock objects
(``198.19.1.0/26`` -> ``198-19-1-0-26``).
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network

from podroute.datastore.model import (BGPCONFIGURATIONS, BGPPEERS, DEFAULT_BGPCONFIGURATION, IPAMBLOCKS, IPPOOLS,
                                      NODES, _NAME, block_key, check_name, cidr_name,
                                      parse_cidr_name)

DEFAULT_PREFIX = "/podroute/"

# The model's collections under their etcd-layer names (one owner: the model).
BLOCKS = IPAMBLOCKS
POOLS = IPPOOLS
BGPCONFIG = BGPCONFIGURATIONS
DEFAULT_BGPCONFIG = DEFAULT_BGPCONFIGURATION
COLLECTIONS = (NODES, BLOCKS, POOLS, BGPPEERS, BGPCONFIG)
block_name = cidr_name
parse_block_name = parse_cidr_name

__all__ = ["BGPCONFIG", "BGPPEERS", "BLOCKS", "COLLECTIONS", "DEFAULT_BGPCONFIG", "DEFAULT_PREFIX", "KeyLayout",
           "NODES", "POOLS", "block_name", "check_name", "parse_block_name"]


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
        if kind not in COLLECTIONS:
            raise ValueError(f"unknown podroute etcd collection {kind!r}")
        return self.prefix + kind

    def key(self, relative: str) -> str:
        """The etcd key of a model key (``key_of(resource)``); ValueError when ``relative`` is not
        ``<collection><valid name>``."""
        self.split(self.prefix + relative)
        return self.prefix + relative

    def relative(self, key: str) -> str:
        """The model key of etcd key ``key`` (inverse of :meth:`key`); ValueError naming it."""
        kind, name = self.split(key)
        return kind + name

    def node(self, name: str) -> str:
        return self.prefix + NODES + check_name(name, "node name")

    def block(self, cidr: IPv4Network) -> str:
        return self.prefix + block_key(cidr)

    def pool(self, name: str) -> str:
        return self.prefix + POOLS + check_name(name, "IP pool name")

    def bgppeer(self, name: str) -> str:
        return self.prefix + BGPPEERS + check_name(name, "BGP peer name")

    def bgpconfig(self, name: str = DEFAULT_BGPCONFIG) -> str:
        """``default`` is cluster-wide (the only one the model has today)."""
        return self.prefix + BGPCONFIG + check_name(name, "BGP configuration name")

    def split(self, key: str) -> tuple[str, str]:
        """``/podroute/nodes/n1`` -> ``("nodes/", "n1")``; ValueError naming the key when it is not
        ``<prefix><known collection><valid name>``."""
        if key.startswith(self.prefix):
            rest = key[len(self.prefix):]
            for kind in COLLECTIONS:
                name = rest[len(kind):]
                if rest.startswith(kind) and _NAME.match(name):
                    return kind, name
        raise ValueError(f"etcd key {key!r} is not in podroute's layout under {self.prefix!r}")

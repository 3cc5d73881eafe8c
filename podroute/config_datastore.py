"""The node config's cluster datastore and IPAM sections (``datastore:``, ``ipam:``, and the
node's ``labels``), read by :mod:`podroute.config`, whose docstring shows the keys.

Defaults follow Calico: ``ipam.maxBlocksPerHost`` 0 = no limit (IPAMConfig), a release grace
period before an empty block or a departed node's blocks go back to the pool (Calico's IPAM GC
waits two syncs), and a registration lease like flannel's subnet leases. Errors are
:class:`podroute.schema.ConfigError` naming the key path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from podroute.schema import ConfigError, Section, choice, integer, join, list_of, number, show, string

DATASTORE_TYPES = ("file", "etcd")
CLAIMING_DATASTORES = ("etcd",)      # stores in which nodes claim their own blocks and register
DEFAULT_ETCD_PREFIX = "/podroute/"
DEFAULT_LEASE_TTL_S = 30.0   # a node that stops renewing is gone for the others after this long
DEFAULT_MAX_BLOCKS_PER_HOST = 0      # Calico IPAMConfig: 0 = no limit
DEFAULT_RELEASE_GRACE_S = 60.0


@dataclass(frozen=True)
class EtcdConfig:
    """Where the etcd v3 datastore is: client URLs and the key prefix."""
    endpoints: tuple[str, ...] = ()
    prefix: str = DEFAULT_ETCD_PREFIX


@dataclass(frozen=True)
class DatastoreConfig:
    """The cluster datastore (``datastore:``). ``lease_ttl`` in seconds."""
    type: str = "file"
    etcd: EtcdConfig = EtcdConfig()
    lease_ttl: float = DEFAULT_LEASE_TTL_S

    @property
    def claims_blocks(self) -> bool:
        """Nodes claim their IPAM blocks in this store and register under a lease."""
        return self.type in CLAIMING_DATASTORES


@dataclass(frozen=True)
class IpamConfig:
    """Block affinity policy (``ipam:``). ``max_blocks_per_host`` 0 = no limit; ``release_grace``
    in seconds."""
    max_blocks_per_host: int = DEFAULT_MAX_BLOCKS_PER_HOST
    release_grace: float = DEFAULT_RELEASE_GRACE_S


def _endpoint(value: Any, path: str) -> str:
    # The etcd layer owns what an endpoint and a prefix may be (http only: aetcd has no TLS).
    # Imported here, not at the top: only an etcd config pays for loading aetcd and gRPC.
    from podroute.datastore.etcdstore import parse_endpoint

    text = string(value, path)
    try:
        parse_endpoint(text)
    except ValueError as e:
        raise ConfigError(path, str(e)) from None
    return text.rstrip("/")


def _prefix(value: Any, path: str) -> str:
    from podroute.etcd.keys import KeyLayout

    text = string(value, path)
    if len(text) > 255:
        raise ConfigError(path, f"{show(text)} is not a key prefix: at most 255 characters")
    try:
        KeyLayout(text)
    except ValueError as e:
        raise ConfigError(path, str(e)) from None
    return text


def parse_labels(value: Any, path: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ConfigError(path, "expected a mapping of label names to string values")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ConfigError(join(path, str(k)), f"expected a string label value, got {show(v)}")
    return tuple(sorted(value.items()))


def parse_datastore(s: Section) -> DatastoreConfig:
    d = s.section("datastore")
    kind = d.get("type", choice(*DATASTORE_TYPES), "file")
    e = d.section("etcd")
    if kind != "etcd" and e.raw:
        raise ConfigError("datastore.etcd", f"is set but datastore.type is {kind}; set type: etcd or remove it")
    etcd = EtcdConfig()
    if kind == "etcd":
        etcd = EtcdConfig(e.get("endpoints", list_of(_endpoint, min_items=1)),
                          e.get("prefix", _prefix, DEFAULT_ETCD_PREFIX))
    e.finish()
    ttl = d.get("leaseTTL", number(2, 86400), DEFAULT_LEASE_TTL_S)
    d.finish()
    return DatastoreConfig(kind, etcd, ttl)


def parse_ipam(s: Section) -> IpamConfig:
    i = s.section("ipam")
    cfg = IpamConfig(i.get("maxBlocksPerHost", integer(0, 1 << 20), DEFAULT_MAX_BLOCKS_PER_HOST),
                     i.get("releaseGracePeriod", number(0, 86400), DEFAULT_RELEASE_GRACE_S))
    i.finish()
    return cfg

"""The node config's cluster datastore and IPAM sections (``datastore:``, ``ipam:``, and the
node's ``labels``), read by :mod:`podroute.config`, whose docstring shows the keys.

``datastore.type: kubernetes`` (:class:`KubernetesConfig`): ``kubernetes.kubeconfig`` is a
kubeconfig file (checked at load with the ``kubernetes`` client's own loader, so a bad one is
named here and not at the first request); absent, the agent uses the in-cluster service
account (``KUBERNETES_SERVICE_HOST`` and the mounted token, as calico-node does).
``kubernetes.usePodCIDR`` (Calico's and flannel's name) takes the node's one block from its
Node's ``spec.podCIDR`` (kube-controller-manager's ``--allocate-node-cidrs``) instead of
claiming blocks; ``podCIDRs`` is refused with it.

Defaults follow Calico: ``ipam.maxBlocksPerHost`` 0 = no limit (IPAMConfig), a release grace
period before an empty block or a departed node's blocks go back to the pool (Calico's IPAM GC
waits two syncs), and a registration lease like flannel's subnet leases. Errors are
:class:`podroute.schema.ConfigError` naming the key path.
"""
from __future__ import annotations

from dataclasses import dataclass
import os
import socket
from pathlib import Path
from typing import Any, Callable

from podroute.schema import (ConfigError, Section, boolean, choice, clip, integer, join, list_of, number, show,
                             string)

DATASTORE_TYPES = ("file", "etcd", "kubernetes")
# stores in which nodes register themselves and take their blocks and pools from the store
REGISTERING_DATASTORES = ("etcd", "kubernetes")
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
class KubernetesConfig:
    """Where the kubernetes datastore is: a kubeconfig (None: the in-cluster service account),
    and whether a node's block is its Node's ``spec.podCIDR`` (``usePodCIDR``)."""
    kubeconfig: Path | None = None
    use_pod_cidr: bool = False


@dataclass(frozen=True)
class DatastoreConfig:
    """The cluster datastore (``datastore:``). ``lease_ttl`` in seconds (etcd's registration
    lease; Kubernetes has none: Node lifecycle removes Nodes)."""
    type: str = "file"
    etcd: EtcdConfig = EtcdConfig()
    lease_ttl: float = DEFAULT_LEASE_TTL_S
    kubernetes: KubernetesConfig = KubernetesConfig()

    @property
    def from_datastore(self) -> bool:
        """The node registers itself in this store and takes its blocks and pools from it
        (etcd, kubernetes): ``podCIDRs`` and ``ipPools`` are optional."""
        return self.type in REGISTERING_DATASTORES

    @property
    def claims_blocks(self) -> bool:
        """Nodes claim their IPAM blocks in this store (etcd; kubernetes unless usePodCIDR)."""
        return self.from_datastore and not (self.type == "kubernetes" and self.kubernetes.use_pod_cidr)


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


def _kubeconfig(value: Any, path: str) -> Path:
    text = string(value, path)
    if "\0" in text:
        raise ConfigError(path, f"{show(text)} is not a usable path (NUL character)")
    p = Path(text)
    if not p.is_file():
        raise ConfigError(path, f"{show(text)} is not a file: want a kubeconfig (absent: the in-cluster "
                                "service account)")
    # The client's own loader: what it refuses now would be refused at the first request.
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException
    try:
        config.load_kube_config(config_file=text, client_configuration=client.Configuration(),
                                persist_config=False)
    except (ConfigException, OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise ConfigError(path, f"{show(text)} is not a usable kubeconfig: {clip(str(e), 200)}") from None
    return p


def default_node_name(check: Callable[[Any, str], str]) -> str:
    """A kubernetes node's name when its config has none, as calico-node finds it: the
    ``NODENAME`` environment variable (a DaemonSet sets it from the downward API's
    spec.nodeName), else the host name up to its first dot, lower-cased; ``check`` (the
    config's nodeName reader) raises ConfigError naming where it came from."""
    env = os.environ.get("NODENAME")
    if env:
        return check(env, "nodeName (from the NODENAME environment variable)")
    return check(socket.gethostname().split(".", 1)[0].lower(), "nodeName (from the host name)")


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
    k = d.section("kubernetes")
    if kind != "kubernetes" and k.raw:
        raise ConfigError("datastore.kubernetes", f"is set but datastore.type is {kind}; set type: kubernetes "
                                                  "or remove it")
    kube = KubernetesConfig()
    if kind == "kubernetes":
        kube = KubernetesConfig(k.get("kubeconfig", _kubeconfig, None), k.get("usePodCIDR", boolean, False))
    k.finish()
    ttl = d.get("leaseTTL", number(2, 86400), DEFAULT_LEASE_TTL_S)
    d.finish()
    return DatastoreConfig(kind, etcd, ttl, kube)


def parse_ipam(s: Section) -> IpamConfig:
    i = s.section("ipam")
    cfg = IpamConfig(i.get("maxBlocksPerHost", integer(0, 1 << 20), DEFAULT_MAX_BLOCKS_PER_HOST),
                     i.get("releaseGracePeriod", number(0, 86400), DEFAULT_RELEASE_GRACE_S))
    i.finish()
    return cfg

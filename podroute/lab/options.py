"""What ``podroute lab up`` accepts, checked before anything is created.

:meth:`LabOptions.validate` is pure (the option values only); :func:`check_host` looks
at this machine (root, the tools on PATH). Both raise LabError with a message naming the
option as the CLI spells it (``--nodes 1: need 2..200 nodes``); ``lab up`` prints it and
exits 2.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from podroute.lab import frr, monitoring
from podroute.lab.model import DATASTORES
from podroute.lab.netns import LabError

ENCAPSULATIONS = ("none", "ipip", "vxlan")
ENCAP_MODES = ("Always", "CrossSubnet")
TOPOLOGIES = ("rr", "rr2", "tor", "mesh", "podroute-rr")
ROUTER_IMPLS = ("bird", "frr")
MAX_SUBNETS = 8
MAX_NODES = 200
MAX_PODS_PER_NODE = 20
MAX_NAME_LEN = 12
# Topologies whose nodes peer among themselves from the cluster file (no external router).
CLUSTER_FILE_TOPOLOGIES = ("mesh", "podroute-rr")
MIN_LEASE_TTL_S = 2           # the node config's datastore.leaseTTL range (podroute.config_datastore)
MAX_LEASE_TTL_S = 86400
MAX_RELEASE_GRACE_S = 86400


def validate_name(name: str) -> None:
    """A lab name is 1..12 letters, digits or '-'. Raises LabError otherwise."""
    if not name.replace("-", "").isalnum() or len(name) > MAX_NAME_LEN:
        raise LabError(f"lab name {name!r} must be 1-12 letters, digits or '-'")


def validate_encapsulation(encapsulation: str, encap_mode: str) -> None:
    """``encapsulation`` in none|ipip|vxlan and ``encap_mode`` in Always|CrossSubnet
    (Calico IPPool ``ipipMode``/``vxlanMode`` values). Raises LabError otherwise."""
    if encapsulation not in ENCAPSULATIONS:
        raise LabError(f"--encapsulation {encapsulation}: need one of {', '.join(ENCAPSULATIONS)}")
    if encap_mode not in ENCAP_MODES:
        raise LabError(f"--encap-mode {encap_mode}: need Always or CrossSubnet")


@dataclass(frozen=True)
class LabOptions:
    """The shape of one lab: ``podroute lab up``'s options (same names, same defaults)."""
    name: str
    nodes: int
    peer: str = "bird"
    pods_per_node: int = 2
    encapsulation: str = "none"
    encap_mode: str = "Always"
    subnets: int = 1
    topology: str = "rr"
    router_restart_time: int = 120   # s, the graceful-restart time the external routers advertise (RFC 4724)
    monitoring: bool = False         # a Prometheus scraping every agent (podroute.lab.monitoring)
    datastore: str = "file"
    lease_ttl: int = 30              # s, etcd labs: the nodes' datastore.leaseTTL
    release_grace: int = 60          # s, etcd labs: the nodes' ipam.releaseGracePeriod

    def validate(self) -> None:
        """Raise LabError for the first option out of range, in the order the CLI lists them."""
        validate_name(self.name)
        validate_encapsulation(self.encapsulation, self.encap_mode)
        if not 1 <= self.subnets <= min(self.nodes, MAX_SUBNETS):
            raise LabError(f"--subnets {self.subnets}: need 1..{min(self.nodes, MAX_SUBNETS)}")
        if self.topology not in TOPOLOGIES:
            raise LabError(f"--topology {self.topology}: need one of {', '.join(TOPOLOGIES)}")
        if self.peer not in ROUTER_IMPLS:
            raise LabError(f"--peer {self.peer}: need one of {', '.join(ROUTER_IMPLS)}")
        if self.topology == "rr2" and self.subnets != 1:
            raise LabError("--topology rr2 needs --subnets 1")
        if not 2 <= self.nodes <= MAX_NODES:
            raise LabError(f"--nodes {self.nodes}: need 2..{MAX_NODES} nodes")
        if not 1 <= self.pods_per_node <= MAX_PODS_PER_NODE:
            raise LabError(f"--pods {self.pods_per_node}: need 1..{MAX_PODS_PER_NODE} pods per node")
        if self.datastore not in DATASTORES:
            raise LabError(f"--datastore {self.datastore}: need one of {', '.join(DATASTORES)}")
        if not MIN_LEASE_TTL_S <= self.lease_ttl <= MAX_LEASE_TTL_S:
            raise LabError(f"--lease-ttl {self.lease_ttl}: need {MIN_LEASE_TTL_S}..{MAX_LEASE_TTL_S} seconds")
        if not 0 <= self.release_grace <= MAX_RELEASE_GRACE_S:
            raise LabError(f"--release-grace {self.release_grace}: need 0..{MAX_RELEASE_GRACE_S} seconds")


def required_tools(peer: str, with_monitoring: bool = False, datastore: str = "file") -> tuple[str, ...]:
    """The executables a lab with external routers of kind ``peer`` runs (with
    ``with_monitoring``, Debian's prometheus and its promtool; on the etcd ``datastore``, etcd
    and etcdctl; on kubernetes, etcd, kubectl and openssl: kube-apiserver is checked where
    scripts/setup links it, podroute.lab.kube)."""
    return ("ip", "ping", *(("bird", "birdc") if peer == "bird" else (frr.BGPD, "vtysh")),
            *((monitoring.PROMETHEUS, monitoring.PROMTOOL) if with_monitoring else ()),
            *(("etcd", "etcdctl") if datastore == "etcd" else ()),
            *(("etcd", "kubectl", "openssl") if datastore == "kubernetes" else ()))


def check_host(peer: str, with_monitoring: bool = False, datastore: str = "file") -> None:
    """Raise LabError unless we are root and every tool of :func:`required_tools` is found."""
    if os.geteuid() != 0:
        raise LabError("the lab creates network namespaces and needs root")
    for tool in required_tools(peer, with_monitoring, datastore):
        if not shutil.which(tool):
            raise LabError(f"{tool} not found: run scripts/setup first")

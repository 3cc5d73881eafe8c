"""The lab's address plan and its recorded state (``<state-dir>/<name>/lab.json``).

Address plan (all from 198.18.0.0/15; nothing is added to the root namespace):
underlay subnet ``s`` is 198.18.<s>.0/24 with the lab router at .1; the route reflector
is 198.18.0.1 (AS 64512), the second reflector of ``rr2`` labs 198.18.0.2; node ``i``
sits in subnet (i-1) mod K at 198.18.<s>.(10+i) and owns IPAM block 198.19.<i>.0/26 of
pool 198.19.0.0/16; under a ToR (AS 65000) node ``i`` has AS 65000+i. The lab's Prometheus
(``--monitoring``) is 198.18.0.254 on subnet 0. A lab on the etcd datastore (``--datastore
etcd``) runs etcd at 198.18.0.3 (:data:`ETCD_IP`, subnet 0) and its nodes claim their blocks
from the pool themselves, so a node's block is known only once its agent has claimed it
(``Node.block`` is "" until then). A lab on the kubernetes datastore runs kube-apiserver next
to that etcd, at https://198.18.0.3:6443 (podroute.lab.kube).

:class:`Lab` is mutable on purpose: the lab's steps append what they create and call
:meth:`Lab.save` after each, so ``lab down`` can remove a half-built lab. Addresses are
kept as strings because lab.json, report.json and the e2e tests use that spelling.
"""
from __future__ import annotations

import ipaddress
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from podroute.lab.netns import LabError

RR_IP = ipaddress.IPv4Address("198.18.0.1")
RR2_IP = ipaddress.IPv4Address("198.18.0.2")
MON_IP = ipaddress.IPv4Address("198.18.0.254")   # above the highest node address (.210)
ETCD_IP = ipaddress.IPv4Address("198.18.0.3")   # below the first node (.11); .2 is rr2's
ETCD_CLIENT_PORT = 2379                           # etcd's IANA-registered client port
DATASTORES = ("file", "etcd", "kubernetes")
CONTROL_PLANE_DATASTORES = ("etcd", "kubernetes")   # the lab runs etcd (and kube-apiserver) at ETCD_IP
POOL = ipaddress.IPv4Network("198.19.0.0/16")
ASN = 64512
TOR_ASN = 65000
# PODROUTE_LAB_TIMEOUT_SCALE multiplies every lab timeout (an emulated VM is ~10x slower).
TIMEOUT_SCALE = max(1.0, float(os.environ.get("PODROUTE_LAB_TIMEOUT_SCALE", "1") or 1))


def subnet_net(s: int) -> ipaddress.IPv4Network:
    """Underlay subnet ``s`` (0-based): 198.18.<s>.0/24."""
    return ipaddress.IPv4Network(f"198.18.{s}.0/24")


def router_ip(s: int) -> ipaddress.IPv4Address:
    """The lab router's address on underlay subnet ``s`` (its .1)."""
    return subnet_net(s).network_address + 1


def node_ip(i: int, subnet: int) -> ipaddress.IPv4Address:
    """Node ``i`` (1-based) on underlay subnet ``subnet``: .(10+i)."""
    return subnet_net(subnet).network_address + 10 + i


def node_block(i: int) -> ipaddress.IPv4Network:
    """Node ``i``'s IPAM block: 198.19.<i>.0/26."""
    return ipaddress.IPv4Network(f"198.19.{i}.0/26")


@dataclass
class Node:
    name: str
    ns: str
    ip: str
    block: str
    dir: str
    pid: int | None = None
    subnet: int = 0
    asn: int = ASN
    index: int = 0                 # i of node_ip(i): its address and fabric port n<i>
    lease_ttl: int | None = None   # etcd labs: this node's leaseTTL when not the lab's


@dataclass
class Pod:
    name: str
    node: str
    ns: str
    container_id: str
    ip: str | None = None
    add_ms: float | None = None


@dataclass
class Lab:
    name: str
    root: str
    nodes: list[Node] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    routers: list[dict[str, Any]] = field(default_factory=list)   # name, ns, impl, pid, dir, ctl, role, asn, router_id
    timings: dict[str, float] = field(default_factory=dict)
    encapsulation: str = "none"
    encap_mode: str = "Always"
    subnets: int = 1
    topology: str = "rr"
    peer: str = "bird"
    router_restart_time: int = 120
    monitoring: dict[str, Any] = field(default_factory=dict)   # the lab's Prometheus (podroute.lab.monitoring)
    datastore: str = "file"
    etcd: dict[str, Any] = field(default_factory=dict)   # ns, ip, endpoint, pid, dir (etcd labs)
    lease_ttl: int = 30            # s, the nodes' leaseTTL (etcd labs)
    release_grace: int = 60        # s, the nodes' ipam.releaseGracePeriod (etcd labs)
    last_index: int = 0            # highest node index handed out (never reused: etcd may still hold it)
    kube: dict[str, Any] = field(default_factory=dict)   # pid, url, dir, ns (kubernetes labs: podroute.lab.kube)

    @property
    def prefix(self) -> str:
        return f"prl-{self.name}-"

    @property
    def path(self) -> Path:
        return Path(self.root)

    def save(self) -> None:
        """Write lab.json atomically (rename over the old one)."""
        tmp = self.path / "lab.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, self.path / "lab.json")

    @classmethod
    def load(cls, root: Path) -> "Lab | None":
        """The lab recorded under ``root``, or None when there is no readable lab.json."""
        try:
            raw = json.loads((root / "lab.json").read_text())
        except (OSError, ValueError):
            return None
        nodes = [Node(**n) for n in raw["nodes"]]
        for n, r in zip(nodes, raw["nodes"]):  # a lab.json written before nodes recorded their index
            if "index" not in r and n.name[1:].isdigit():
                n.index = int(n.name[1:])
        return cls(raw["name"], raw["root"], nodes, [Pod(**p) for p in raw["pods"]],
                   raw["namespaces"], raw.get("routers", []), raw.get("timings", {}),
                   raw.get("encapsulation", "none"), raw.get("encap_mode", "Always"), raw.get("subnets", 1),
                   raw.get("topology", "rr"), raw.get("peer", "bird"), raw.get("router_restart_time", 120),
                   raw.get("monitoring", {}), raw.get("datastore", "file"), raw.get("etcd", {}),
                   raw.get("lease_ttl", 30), raw.get("release_grace", 60), raw.get("last_index", len(raw["nodes"])),
                   raw.get("kube", {}))

    @property
    def etcd_endpoint(self) -> str:
        """The lab etcd's client URL (reachable from every lab namespace, not from the root one)."""
        return f"http://{ETCD_IP}:{ETCD_CLIENT_PORT}"

    def node_name(self, node: "Node") -> str:
        """The node's name in podroute (its nodeName and datastore key): ``<lab>-<node>``."""
        return f"{self.name}-{node.name}"

    def add_namespace(self, ns: str) -> None:
        """Record ``ns`` (just created) so that ``lab down`` removes it even if the next step fails."""
        self.namespaces.append(ns)
        self.save()


def say(msg: str) -> None:
    print(msg, flush=True)


def wait(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.05) -> float:
    """Poll ``check`` every ``interval`` s until true; return the seconds it took.

    ``timeout`` (s) is multiplied by :data:`TIMEOUT_SCALE`. Raises LabError naming ``what``
    when it runs out; exceptions from ``check`` propagate.
    """
    timeout *= TIMEOUT_SCALE
    t0 = time.monotonic()
    while True:
        if check():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)

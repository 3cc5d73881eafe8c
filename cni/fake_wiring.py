"""In-memory :class:`cni.wiring.Wiring` with fault injection, for unit tests.

State: ``netns`` (set of existing netns paths; ``add_netns`` makes one), ``not_netns``
(paths that exist but are no network namespace, as a file left after its bind mount went
away; ``add_plain_file`` makes one), ``pod_links``
(``{(netns, ifname): _PodLink}``), ``host_links`` (``{host_ifname: _HostLink}``),
``routes`` (``{(ip, host_ifname, proto)}``). ``fail_at("configure_pod_side")`` makes the
next call of that operation raise (a WiringError unless ``exc`` is given); ``calls``
records every call by name.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface

from .errors import HOST_NS, CNIError, InterfaceExists, NetnsNotFound, NotANetns, WiringError
from .wiring import GATEWAY, HostVethState, PodIfaceState

_macs = itertools.count(1)


def _mac() -> str:
    n = next(_macs)
    return "02:00:00:%02x:%02x:%02x" % ((n >> 16) & 255, (n >> 8) & 255, n & 255)


@dataclass
class _HostLink:
    peer: tuple[str, str]
    mtu: int
    mac: str = field(default_factory=_mac)
    up: bool = False
    proxy_arp: int = 0
    forwarding: int = 0
    retired: bool = False


@dataclass
class _PodLink:
    host: str
    mtu: int
    mac: str = field(default_factory=_mac)
    up: bool = False
    addresses: list[IPv4Interface] = field(default_factory=list)
    gateway_route: bool = False
    default_via: IPv4Address | None = None


class FakeWiring:
    def __init__(self) -> None:
        self.netns: set[str] = set()
        self.not_netns: set[str] = set()
        self.host_links: dict[str, _HostLink] = {}
        self.pod_links: dict[tuple[str, str], _PodLink] = {}
        self.routes: set[tuple[IPv4Address, str, int]] = set()
        self.calls: list[str] = []
        self._faults: dict[str, list[BaseException]] = {}

    # -- test helpers -----------------------------------------------------------------------

    def add_netns(self, path: str) -> str:
        self.netns.add(path)
        return path

    def add_plain_file(self, path: str) -> str:
        self.not_netns.add(path)
        return path

    def remove_netns(self, path: str) -> None:
        """Like the runtime deleting the netns: the pod ends die, and with them the pairs."""
        self.netns.discard(path)
        for key in [k for k in self.pod_links if k[0] == path]:
            self._destroy_pair(self.pod_links[key].host)

    def fail_at(self, op: str, exc: BaseException | None = None, times: int = 1) -> None:
        """Make the next ``times`` calls of ``op`` raise ``exc`` (default WiringError)."""
        for _ in range(times):
            self._faults.setdefault(op, []).append(exc or WiringError(f"injected failure in {op}"))

    def _enter(self, op: str) -> None:
        self.calls.append(op)
        q = self._faults.get(op)
        if q:
            raise q.pop(0)

    def _need_ns(self, netns: str) -> None:
        if netns in self.not_netns:
            raise NotANetns(netns, "not a namespace file (filesystem type 0x1021994)")
        if netns not in self.netns:
            raise NetnsNotFound(netns)

    def _destroy_pair(self, host_ifname: str) -> None:
        link = self.host_links.pop(host_ifname, None)
        if link is None:
            return
        self.pod_links.pop(link.peer, None)
        # the kernel drops routes through a deleted device
        self.routes = {r for r in self.routes if r[1] != host_ifname}

    # -- Wiring -----------------------------------------------------------------------------

    def create_veth_in_netns(self, host_ifname: str, netns: str, pod_ifname: str,
                             mtu: int) -> None:
        self._enter("create_veth_in_netns")
        self._need_ns(netns)
        if host_ifname in self.host_links:
            raise InterfaceExists(host_ifname, HOST_NS)
        if (netns, pod_ifname) in self.pod_links:
            raise InterfaceExists(pod_ifname, netns)
        self.host_links[host_ifname] = _HostLink(peer=(netns, pod_ifname), mtu=mtu)
        self.pod_links[(netns, pod_ifname)] = _PodLink(host=host_ifname, mtu=mtu)

    def configure_pod_side(self, netns: str, pod_ifname: str, ip: IPv4Address, mtu: int) -> str:
        self._enter("configure_pod_side")
        self._need_ns(netns)
        link = self.pod_links.get((netns, pod_ifname))
        if link is None:
            raise WiringError(f"interface {pod_ifname} not found in {netns}")
        link.mtu = mtu
        iface = IPv4Interface(f"{ip}/32")
        if iface not in link.addresses:
            link.addresses.append(iface)
        link.up = True
        link.gateway_route = True
        link.default_via = GATEWAY
        return link.mac

    def configure_host_side(self, host_ifname: str) -> str:
        self._enter("configure_host_side")
        link = self.host_links.get(host_ifname)
        if link is None:
            raise WiringError(f"host interface {host_ifname} not found")
        link.proxy_arp = 1
        link.forwarding = 1
        link.up = True
        return link.mac

    def add_host_route(self, ip: IPv4Address, host_ifname: str, proto: int) -> None:
        self._enter("add_host_route")
        if host_ifname not in self.host_links:
            raise WiringError(f"cannot add route {ip}/32: host interface {host_ifname} not found")
        self.routes = {r for r in self.routes if r[0] != ip}  # replace semantics
        self.routes.add((IPv4Address(ip), host_ifname, proto))

    def delete_host_route(self, ip: IPv4Address, host_ifname: str, proto: int) -> bool:
        self._enter("delete_host_route")
        key = (IPv4Address(ip), host_ifname, proto)
        if key in self.routes:
            self.routes.discard(key)
            return True
        return False

    def delete_host_veth(self, host_ifname: str) -> bool:
        self._enter("delete_host_veth")
        if host_ifname not in self.host_links:
            return False
        self._destroy_pair(host_ifname)
        return True

    def delete_pod_iface(self, netns: str, pod_ifname: str) -> bool:
        self._enter("delete_pod_iface")
        link = self.pod_links.get((netns, pod_ifname))
        if netns not in self.netns or link is None:
            return False
        self._destroy_pair(link.host)
        return True

    def retire_host_veth(self, host_ifname: str) -> bool:
        self._enter("retire_host_veth")
        link = self.host_links.get(host_ifname)
        if link is None:
            return False
        link.up = False
        link.retired = True
        return True

    def reap_retired(self) -> bool:
        self._enter("reap_retired")
        names = [n for n, link in self.host_links.items() if link.retired]
        for n in names:
            self._destroy_pair(n)
        return bool(names)

    def host_veth(self, host_ifname: str) -> HostVethState | None:
        self._enter("host_veth")
        link = self.host_links.get(host_ifname)
        if link is None:
            return None
        return HostVethState(host_ifname, link.mac, link.mtu, link.up, link.proxy_arp,
                             link.forwarding, link.retired)

    def host_route_exists(self, ip: IPv4Address, host_ifname: str, proto: int) -> bool:
        self._enter("host_route_exists")
        return (IPv4Address(ip), host_ifname, proto) in self.routes

    def pod_iface(self, netns: str, pod_ifname: str) -> PodIfaceState | None:
        self._enter("pod_iface")
        self._need_ns(netns)
        link = self.pod_links.get((netns, pod_ifname))
        if link is None:
            return None
        return PodIfaceState(pod_ifname, link.mac, link.mtu, link.up, tuple(link.addresses),
                             link.gateway_route, link.default_via)

    def list_host_veths(self, prefix: str) -> dict[str, bool]:
        self._enter("list_host_veths")
        return {n: link.retired for n, link in self.host_links.items() if n.startswith(prefix)}


__all__ = ["FakeWiring", "CNIError"]

"""The pod-wiring dataplane seam (Protocol) and the state shapes it reports.

Operations mirror Calico's workload wiring (calico-cni ``dataplane/linux``) and the
reference ``ptp`` plugin, without a bridge:

* pod side: ``lo`` up, ``<ip>/32`` on CNI_IFNAME, MTU, up, ``169.254.1.1 dev <if> scope
  link``, ``default via 169.254.1.1 dev <if>``, both at metric = the pod interface's
  ifindex, so several attachments in one netns each keep their routes (the first one
  created, lowest index, carries the traffic) and removing one leaves the others';
* host side: ``proxy_arp=1``, ``neigh/<veth>/proxy_delay=0``, ``forwarding=1``, up;
  route ``<ip>/32 dev <veth> scope link proto <proto>``.

"host" is the namespace the agent runs in; ``netns`` is always a CNI_NETNS *path*
(``/var/run/netns/x`` or ``/proc/<pid>/ns/net``) and is never created by the seam.
Every implementation raises only :class:`cni.errors.CNIError` subclasses
(:class:`~cni.errors.NetnsNotFound`, :class:`~cni.errors.NotANetns` for a path that is no
network namespace or is the host's own, :class:`~cni.errors.InterfaceExists`,
:class:`~cni.errors.WiringError`).
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from typing import Protocol

GATEWAY = IPv4Address("169.254.1.1")  # Calico's link-local next hop answered by proxy ARP


@dataclass(frozen=True)
class HostVethState:
    """The host end as seen for CHECK: ``mtu`` in bytes, sysctl values as ints; ``retired``:
    taken down by a DEL and waiting for :meth:`Wiring.reap_retired`."""

    ifname: str
    mac: str
    mtu: int
    up: bool
    proxy_arp: int
    forwarding: int
    retired: bool = False


@dataclass(frozen=True)
class PodIfaceState:
    """The pod end as seen for CHECK. ``gateway_route``: ``169.254.1.1 dev <if> scope
    link`` present; ``default_via``: next hop of the default route via this interface."""

    ifname: str
    mac: str
    mtu: int
    up: bool
    addresses: tuple[IPv4Interface, ...]
    gateway_route: bool
    default_via: IPv4Address | None


class Wiring(Protocol):
    """Dataplane operations used by :class:`cni.plugin.CNIPlugin`. All are synchronous
    (the plugin runs them in a worker thread)."""

    def create_veth_in_netns(self, host_ifname: str, netns: str, pod_ifname: str,
                             mtu: int) -> None:
        """Create veth ``host_ifname`` with its peer created directly inside ``netns`` as
        ``pod_ifname``, both with ``mtu``. Atomic: on failure nothing exists.
        Raises NetnsNotFound, InterfaceExists (either name taken), WiringError."""

    def configure_pod_side(self, netns: str, pod_ifname: str, ip: IPv4Address,
                           mtu: int) -> str:
        """lo up, ``ip/32``, MTU, up, gateway + default routes. Returns the pod MAC."""

    def configure_host_side(self, host_ifname: str) -> str:
        """sysctls (proxy_arp=1, proxy_delay=0, forwarding=1) and up. Returns the host MAC."""

    def add_host_route(self, ip: IPv4Address, host_ifname: str, proto: int) -> None:
        """``ip/32 dev host_ifname scope link proto proto`` (replace semantics)."""

    def delete_host_route(self, ip: IPv4Address, host_ifname: str, proto: int) -> bool:
        """Delete that route; False if it was not there."""

    def delete_host_veth(self, host_ifname: str) -> bool:
        """Delete the veth pair by its host name; False if it was not there."""

    def delete_pod_iface(self, netns: str, pod_ifname: str) -> bool:
        """Delete the pod end (and thus the pair); False if netns or link is missing or the
        path is no network namespace (DEL: gone). Raises NotANetns if ``netns`` is the host's
        own namespace (its CNI_IFNAME may be the node's uplink)."""

    def retire_host_veth(self, host_ifname: str) -> bool:
        """Take the host end down and mark it for :meth:`reap_retired` (the pod is detached
        at once; the deletion is batched). False if it was not there."""

    def reap_retired(self) -> bool:
        """Delete every retired veth pair now; False if there was none."""

    def host_veth(self, host_ifname: str) -> HostVethState | None:
        """State of the host end, None if missing."""

    def host_route_exists(self, ip: IPv4Address, host_ifname: str, proto: int) -> bool:
        """True if ``ip/32 dev host_ifname scope link proto proto`` is in the main table."""

    def pod_iface(self, netns: str, pod_ifname: str) -> PodIfaceState | None:
        """State of the pod end, None if missing. Raises NetnsNotFound."""

    def list_host_veths(self, prefix: str) -> dict[str, bool]:
        """Every host veth whose name starts with ``prefix`` -> True if it is retired (see
        :meth:`retire_host_veth`). For the restart reconciler (:mod:`cni.reconcile`)."""

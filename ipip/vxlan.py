"""The VXLAN (RFC 7348) device, its static FDB and neighbour entries.

Mirrors Calico Felix's ``vxlan_mgr.go``: one device (Calico: ``vxlan.calico``; ours
``vxlan.podroute``) with VNI 4096, UDP port 4789, ``local <node ip>`` and learning
off; MTU underlay-50; the node's VTEP address (from its block, ``/32``). For each
remote node's VTEP: a permanent FDB entry ``<remote mac> dst <remote node ip>`` and a
permanent neighbour ``<remote vtep ip> lladdr <remote mac>``; entries for VTEPs no
longer desired are removed. Routes ``<block> via <vtep ip> dev vxlan.podroute onlink``
are felix/'s job.

VTEP MACs: Calico generates a random MAC per node and stores it in the datastore
(``Node.spec.vxlanTunnelMACAddr``). podroute derives it from the node name with
:func:`vtep_mac` unless configured, so every node computes every peer's MAC from
the cluster file alone.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from typing import Mapping

from .dataplane import FDBEntry, IPIPDataplane, NeighEntry, VXLANParams, normalize_mac
from .devices import VXLAN_IFNAME
from .mtu import VXLAN_OVERHEAD
from .status import Reconciler

VXLAN_VNI = 4096
VXLAN_PORT = 4789


def vtep_mac(node_name: str) -> str:
    """Deterministic VTEP MAC for ``node_name``: the first 6 bytes of
    SHA-256("podroute-vtep:" + name) with the locally-administered bit set and the
    multicast bit cleared (IEEE 802: first octet ``xxxxxx10``). Returns "aa:bb:..."."""
    b = bytearray(hashlib.sha256(f"podroute-vtep:{node_name}".encode()).digest()[:6])
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


@dataclass(frozen=True)
class VTEP:
    """A remote node's VXLAN tunnel endpoint: underlay ``node_ip``, tunnel ``vtep_ip``, ``mac``."""

    node_ip: IPv4Address
    vtep_ip: IPv4Address
    mac: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "node_ip", IPv4Address(self.node_ip))
        object.__setattr__(self, "vtep_ip", IPv4Address(self.vtep_ip))
        object.__setattr__(self, "mac", normalize_mac(self.mac))


class VXLANManager(Reconciler):
    """Keeps the VXLAN device and its per-remote-VTEP FDB/neighbour entries in sync.

    ``local_ip``: this node's underlay IP (VXLAN source). ``vtep_ip``: this node's tunnel
    address or None. ``mtu`` (bytes): the device MTU, normally underlay MTU − 50.
    ``mac``: this VTEP's MAC, default :func:`vtep_mac(node_name)`. A device whose
    VNI/port/local/learning/parent differ is deleted and recreated (as Felix does).
    ``apply()`` raises :class:`~ipip.errors.IPIPError`s; ``run()`` retries.
    """

    def __init__(self, dataplane: IPIPDataplane, *, node_name: str, local_ip: IPv4Address,
                 vtep_ip: IPv4Address | None, mtu: int = 1500 - VXLAN_OVERHEAD,
                 mac: str | None = None, ifname: str = VXLAN_IFNAME, vni: int = VXLAN_VNI,
                 port: int = VXLAN_PORT, parent: str | None = None) -> None:
        super().__init__()
        if len(ifname) > 15:
            raise ValueError(f"interface name {ifname!r} longer than 15 characters")
        self.dataplane = dataplane
        self.node_name = node_name
        self.ifname = ifname
        self.mtu = int(mtu)
        self.mac = normalize_mac(mac) if mac else vtep_mac(node_name)
        self.vtep_ip = IPv4Address(vtep_ip) if vtep_ip is not None else None
        self.params = VXLANParams(vni=vni, port=port, local=IPv4Address(local_ip),
                                  learning=False, parent_ifname=parent)
        self._remotes: dict[str, VTEP] = {}

    @property
    def remote_vteps(self) -> dict[str, VTEP]:
        return dict(self._remotes)

    def set_remote_vteps(self, vteps: Mapping[str, VTEP]) -> None:
        """Replace the desired remote VTEPs (node name → VTEP); this node's own name is
        ignored. A running ``run()`` applies the change promptly."""
        self._remotes = {n: v for n, v in vteps.items() if n != self.node_name}
        self._changed()

    def apply(self) -> None:
        dp, name = self.dataplane, self.ifname
        link = dp.get_link(name)
        if link is not None and (link.kind != "vxlan" or link.vxlan != self.params):
            self.log.info("%s: parameters differ (%s), recreating", name, link.vxlan)
            dp.delete_link(name)
            link = None
        if link is None:
            dp.add_vxlan(name, self.params, mtu=self.mtu, mac=self.mac)
            link = dp.get_link(name)
        if link.mtu != self.mtu:
            dp.set_link(name, mtu=self.mtu)
        if link.mac and link.mac != self.mac:
            dp.set_link(name, mac=self.mac)
        if not link.up:
            dp.set_link(name, up=True)

        want = IPv4Interface(f"{self.vtep_ip}/32") if self.vtep_ip is not None else None
        have = dp.list_addresses(name)
        for addr in have:
            if addr != want:
                dp.del_address(name, addr)
        if want is not None and want not in have:
            dp.add_address(name, want)

        want_fdb = {FDBEntry(v.mac, v.node_ip) for v in self._remotes.values()}
        have_fdb = set(dp.list_fdb(name))
        for e in have_fdb - want_fdb:
            dp.del_fdb(name, e)
        for e in sorted(want_fdb - have_fdb, key=lambda e: (e.mac, e.dst)):
            dp.add_fdb(name, e)

        want_neigh = {NeighEntry(v.vtep_ip, v.mac) for v in self._remotes.values()}
        have_neigh = set(dp.list_neighbours(name))
        for e in have_neigh - want_neigh:
            if e.ip not in {w.ip for w in want_neigh}:
                dp.del_neighbour(name, e)
        for e in sorted(want_neigh - have_neigh, key=lambda e: e.ip):
            dp.set_neighbour(name, e)

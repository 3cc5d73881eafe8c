"""Encapsulation set-up for one node (ipip/): pool modes, the underlay, MTUs and tunnel devices.

Calico's ipipMode / vxlanMode per IP pool decide which devices a node needs: tunl0 for IPIP
(RFC 2003), ``vxlan.podroute`` for VXLAN (RFC 7348). The pod MTU is the underlay MTU less the
largest overhead in use (:func:`ipip.mtu.pod_mtu`) unless the config sets one. The node's
tunnel address is the first address of its first block, as Calico gives tunl0 an IP from the
node's block; IPAM reserves it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, Callable

from ipip.dataplane import IPIPDataplane
from ipip.modes import Encapsulation, PoolEncap
from ipip.mtu import detect_underlay_mtu, pod_mtu, tunnel_mtu
from ipip.tunl0 import TUNL0, Tunl0Manager
from ipip.vxlan import VXLAN_IFNAME, VXLANManager, vtep_mac
from podroute.config import NodeConfig

log = logging.getLogger("podroute.encap")


@dataclass(frozen=True)
class Underlay:
    """The interface holding the node IP (None when no interface has it), its subnets and MTU (bytes)."""

    interface: str | None
    subnets: tuple[IPv4Network, ...]
    mtu: int


def find_underlay(dp: IPIPDataplane, node_ip: IPv4Address,
                  mtu_of: Callable[[str], int] = detect_underlay_mtu) -> Underlay:
    """The underlay of ``node_ip``. Without the node IP on an interface CrossSubnet cannot tell
    local from remote: every remote node then counts as another subnet (tunnelled), the safe
    side, with an MTU of 1500 (logged as a warning)."""
    found = dp.interface_of(node_ip)
    if found is None:
        log.warning("nodeIP is not configured on any interface; CrossSubnet treats every node as remote",
                    extra={"kv": {"node_ip": node_ip}})
        return Underlay(None, (), 1500)
    return Underlay(found[0], (found[1].network,), mtu_of(found[0]))


class Encap:
    """The node's encapsulation: ``pools`` (per-pool modes), ``underlay``, ``pod_mtu``,
    ``tunnel_address`` and the managers it needs (``tunl0``/``vxlan``, None when no pool uses
    that mode). Building it reads the kernel once (the underlay); the managers' ``run()`` loops
    are the agent's to start. ``mtu_of`` reads an interface's MTU (sysfs by default)."""

    def __init__(self, cfg: NodeConfig, dp: IPIPDataplane,
                 mtu_of: Callable[[str], int] = detect_underlay_mtu) -> None:
        self.dp = dp
        self.pools = tuple(PoolEncap(p.cidr, p.ipip_mode, p.vxlan_mode) for p in cfg.ip_pools)
        self.modes = {pe.encapsulation for pe in self.pools} - {Encapsulation.NONE}
        self.underlay = find_underlay(dp, cfg.node_ip, mtu_of)
        auto = pod_mtu(self.underlay.mtu, self.pools)
        self.pod_mtu = cfg.mtu or auto
        if cfg.mtu and cfg.mtu > auto:
            log.warning("configured pod MTU exceeds what the underlay carries with encapsulation; "
                        "large packets will be fragmented or dropped",
                        extra={"kv": {"mtu": cfg.mtu, "max": auto, "underlay_mtu": self.underlay.mtu}})
        self.tunnel_address: IPv4Address = cfg.pod_cidrs[0].network_address
        self.tunl0: Tunl0Manager | None = None
        self.vxlan: VXLANManager | None = None
        if Encapsulation.IPIP in self.modes:
            self.tunl0 = Tunl0Manager(dp, address=self.tunnel_address,
                                      mtu=tunnel_mtu(self.underlay.mtu, Encapsulation.IPIP))
        if Encapsulation.VXLAN in self.modes:
            self.vxlan = VXLANManager(dp, node_name=cfg.node_name, local_ip=cfg.node_ip,
                                      vtep_ip=self.tunnel_address, mac=vtep_mac(str(cfg.node_ip)),
                                      mtu=tunnel_mtu(self.underlay.mtu, Encapsulation.VXLAN),
                                      parent=self.underlay.interface)

    def remove_unused(self) -> None:
        """A mode switched off leaves nothing behind: our VXLAN device goes, tunl0 (which the
        ipip module keeps and cannot delete) loses our address. Blocking (netlink): call it
        off the event loop. Raises the dataplane's errors."""
        if self.vxlan is None and self.dp.get_link(VXLAN_IFNAME) is not None:
            self.dp.delete_link(VXLAN_IFNAME)
            log.info("removed unused VXLAN device", extra={"kv": {"device": VXLAN_IFNAME}})
        if self.tunl0 is None and self.dp.get_link(TUNL0) is not None:
            ours = IPv4Interface(f"{self.tunnel_address}/32")
            if ours in self.dp.list_addresses(TUNL0):
                self.dp.del_address(TUNL0, ours)
                log.info("removed our address from unused tunl0", extra={"kv": {"address": ours}})

    def status(self) -> dict[str, Any]:
        """The ``encapsulation`` section of the agent status (see podroute.status_view)."""
        u = self.underlay
        return {
            "pools": [{"cidr": str(p.cidr), "ipip": p.ipip.value, "vxlan": p.vxlan.value} for p in self.pools],
            "underlay": {"interface": u.interface, "subnets": [str(n) for n in u.subnets], "mtu": u.mtu},
            "pod_mtu": self.pod_mtu, "tunnel_address": str(self.tunnel_address),
            "tunl0": self.tunl0.status.__dict__ if self.tunl0 else None,
            "vxlan": self.vxlan.status.__dict__ if self.vxlan else None}

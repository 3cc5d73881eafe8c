"""podroute's tunnel devices and encapsulation modes.

tunl0 (IPIP, RFC 2003) and ``vxlan.podroute`` (VXLAN, RFC 7348) lifecycles mirroring
Calico Felix's ipip_mgr / vxlan_mgr, per-pool encapsulation modes (Calico IPPool
``ipipMode`` / ``vxlanMode``) and MTU arithmetic. Imports nothing else of podroute;
``ipip.netlink`` is the only module that imports pyroute2 (import it explicitly).
"""
from .devices import TUNL0, VXLAN_IFNAME
from .errors import (DataplaneError, EncapConfigError, InterfaceNotFound, IPIPError,
                     IPIPUnavailable)
from .modes import EncapMode, Encapsulation, PoolEncap, route_encap
from .mtu import IPIP_OVERHEAD, VXLAN_OVERHEAD, detect_underlay_mtu, pod_mtu, tunnel_mtu
from .status import ManagerStatus
from .tunl0 import Tunl0Manager
from .vxlan import VTEP, VXLANManager, vtep_mac

__all__ = [
    "DataplaneError", "EncapConfigError", "InterfaceNotFound", "IPIPError", "IPIPUnavailable",
    "EncapMode", "Encapsulation", "PoolEncap", "route_encap",
    "IPIP_OVERHEAD", "VXLAN_OVERHEAD", "detect_underlay_mtu", "pod_mtu", "tunnel_mtu",
    "ManagerStatus", "TUNL0", "Tunl0Manager", "VTEP", "VXLAN_IFNAME", "VXLANManager", "vtep_mac",
]

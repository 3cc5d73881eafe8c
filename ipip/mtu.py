"""MTU arithmetic for tunnel devices and pod interfaces.

Overheads are Calico's: IPIP adds an outer IPv4 header (20 bytes, RFC 2003 §3);
VXLAN adds outer IPv4 + UDP + VXLAN + inner Ethernet = 20 + 8 + 8 + 14 = 50 bytes
(RFC 7348 §5). Calico's auto-detected veth MTU is the underlay MTU minus the largest
overhead among the encapsulations in use.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .errors import InterfaceNotFound, IPIPError
from .modes import Encapsulation, PoolEncap

IPIP_OVERHEAD = 20
VXLAN_OVERHEAD = 50
OVERHEAD = {Encapsulation.NONE: 0, Encapsulation.IPIP: IPIP_OVERHEAD,
            Encapsulation.VXLAN: VXLAN_OVERHEAD}
MIN_IPV4_MTU = 68  # RFC 791: every IPv4 link carries at least 68 octets
SYS_CLASS_NET = Path("/sys/class/net")


def tunnel_mtu(underlay_mtu: int, encap: Encapsulation) -> int:
    """MTU (bytes) of a device that wraps packets in ``encap`` over an ``underlay_mtu`` link.

    E.g. ``tunnel_mtu(1500, IPIP) == 1480``, ``tunnel_mtu(1500, VXLAN) == 1450``.
    Raises :class:`~ipip.errors.IPIPError` if the result is below 68 (RFC 791).
    """
    mtu = int(underlay_mtu) - OVERHEAD[Encapsulation(encap)]
    if mtu < MIN_IPV4_MTU:
        raise IPIPError(f"underlay MTU {underlay_mtu} leaves {mtu} bytes for {encap.value}, "
                        f"below the IPv4 minimum of {MIN_IPV4_MTU}")
    return mtu


def pod_mtu(underlay_mtu: int, pools_encaps: Iterable[PoolEncap | Encapsulation]) -> int:
    """Pod (veth) MTU in bytes: the minimum over the tunnel MTUs of the encapsulations in use.

    ``pools_encaps``: pools (their tunnel counts if its mode is not Never, CrossSubnet
    included since some routes do encapsulate) or bare :class:`Encapsulation` values.
    With no encapsulation in use, it is ``underlay_mtu`` (Calico's MTU auto-detection).
    """
    encs = {Encapsulation.NONE}
    for item in pools_encaps:
        encs.add(item.encapsulation if isinstance(item, PoolEncap) else Encapsulation(item))
    return min(tunnel_mtu(underlay_mtu, e) for e in encs)


def detect_underlay_mtu(ifname: str, *, sys_class_net: Path = SYS_CLASS_NET) -> int:
    """MTU (bytes) of interface ``ifname``, read from ``/sys/class/net/<ifname>/mtu``.

    Reads the calling process's network namespace view of sysfs. Raises
    :class:`~ipip.errors.InterfaceNotFound` if there is no such interface.
    """
    if not ifname or "/" in ifname or ifname in (".", ".."):
        raise InterfaceNotFound(f"invalid interface name {ifname!r}")
    try:
        return int((sys_class_net / ifname / "mtu").read_text().strip())
    except FileNotFoundError:
        raise InterfaceNotFound(f"interface {ifname!r} does not exist "
                                f"(no {sys_class_net / ifname / 'mtu'})") from None
    except (OSError, ValueError) as e:
        raise IPIPError(f"cannot read the MTU of {ifname!r}: {e}") from e

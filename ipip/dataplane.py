"""The ipip dataplane seam: what the tunnel managers need from the kernel.

One real adapter (:mod:`ipip.netlink`, pyroute2) and one in-memory fake
(:mod:`ipip.fake`) implement :class:`IPIPDataplane`. All methods are synchronous
and act on one network namespace chosen when the adapter is built. Errors are
:mod:`ipip.errors` types only.
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from typing import Protocol, runtime_checkable

from .devices import TUNL0


def normalize_mac(mac: str) -> str:
    """``"AA-bb:.."`` → ``"aa:bb:.."``; raises ValueError unless 6 hex octets."""
    parts = mac.replace("-", ":").lower().split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p)
                                  for p in parts):
        raise ValueError(f"not a MAC address: {mac!r}")
    return ":".join(parts)


@dataclass(frozen=True)
class VXLANParams:
    """Identity of a VXLAN device (RFC 7348): changing any of these needs a new device."""

    vni: int
    port: int  # UDP destination port, host order
    local: IPv4Address | None
    learning: bool
    parent_ifname: str | None = None


@dataclass(frozen=True)
class LinkInfo:
    """A link as the kernel reports it. ``mtu`` in bytes; ``kind`` e.g. "ipip", "vxlan"."""

    ifname: str
    index: int
    kind: str | None
    mtu: int
    up: bool
    mac: str | None = None
    vxlan: VXLANParams | None = None


@dataclass(frozen=True)
class FDBEntry:
    """Static forwarding entry on a VXLAN device: frames to ``mac`` go to VTEP ``dst``."""

    mac: str
    dst: IPv4Address


@dataclass(frozen=True)
class NeighEntry:
    """Permanent IPv4 neighbour (ARP) entry: ``ip`` resolves to ``mac``."""

    ip: IPv4Address
    mac: str


@runtime_checkable
class IPIPDataplane(Protocol):
    """Link, address, FDB and neighbour operations on one network namespace."""

    def get_link(self, ifname: str) -> LinkInfo | None:
        """The link named ``ifname``, or None if absent."""

    def ensure_ipip_fallback(self, ifname: str = TUNL0) -> None:
        """Make the IPIP device ``ifname`` exist (load ``ipip`` / create it).

        Raises :class:`~ipip.errors.IPIPUnavailable` if the kernel cannot do IPIP.
        """

    def add_vxlan(self, ifname: str, params: VXLANParams, *, mtu: int | None = None,
                  mac: str | None = None) -> None:
        """Create a VXLAN device ``ifname`` with ``params``."""

    def delete_link(self, ifname: str) -> None:
        """Delete ``ifname``; absent is fine."""

    def set_link(self, ifname: str, *, mtu: int | None = None, up: bool | None = None,
                 mac: str | None = None) -> None:
        """Change the MTU (bytes), admin state and/or MAC of ``ifname``."""

    def interface_of(self, address: IPv4Address) -> tuple[str, IPv4Interface] | None:
        """The interface holding ``address`` (the node's underlay), or None."""
        ...

    def list_addresses(self, ifname: str) -> list[IPv4Interface]:
        """IPv4 addresses on ``ifname``."""

    def add_address(self, ifname: str, address: IPv4Interface) -> None:
        """Add ``address`` to ``ifname``; already present is fine."""

    def del_address(self, ifname: str, address: IPv4Interface) -> None:
        """Remove ``address`` from ``ifname``; absent is fine."""

    def list_fdb(self, ifname: str) -> list[FDBEntry]:
        """Static unicast FDB entries with a remote ``dst`` on VXLAN device ``ifname``."""

    def add_fdb(self, ifname: str, entry: FDBEntry) -> None:
        """Append a permanent FDB entry (``bridge fdb append <mac> dev <if> dst <ip>``)."""

    def del_fdb(self, ifname: str, entry: FDBEntry) -> None:
        """Remove an FDB entry; absent is fine."""

    def list_neighbours(self, ifname: str) -> list[NeighEntry]:
        """Permanent IPv4 neighbour entries on ``ifname``."""

    def set_neighbour(self, ifname: str, entry: NeighEntry) -> None:
        """Replace/create a permanent neighbour entry."""

    def del_neighbour(self, ifname: str, entry: NeighEntry) -> None:
        """Remove a neighbour entry; absent is fine."""

    def close(self) -> None:
        """Release netlink sockets / helpers."""

"""tunl0 lifecycle: the IPIP (RFC 2003) device pod traffic to other nodes leaves through.

Mirrors Calico Felix's ``ipip_mgr.go``: the kernel creates the fallback device
``tunl0`` (any local, any remote) when the ``ipip`` module loads; Felix makes sure it
exists, sets its MTU, brings it up and gives it exactly one address — the node's
tunnel address, an IP from the node's own block (``/32``) — removing any other
address it finds. Routes ``<block> via <node ip> dev tunl0 onlink`` are felix/'s job.
"""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface

from .dataplane import IPIPDataplane
from .devices import TUNL0
from .errors import DataplaneError
from .mtu import IPIP_OVERHEAD
from .status import Reconciler

DEFAULT_MTU = 1500 - IPIP_OVERHEAD


class Tunl0Manager(Reconciler):
    """Keeps ``tunl0`` present, up, at ``mtu`` bytes and carrying only ``address``/32.

    ``address``: the node's tunnel IP (from its block) or None for no address.
    ``apply()`` is idempotent; raises :class:`~ipip.errors.IPIPUnavailable` (kernel
    without IPIP) or other :class:`~ipip.errors.IPIPError`. ``run()`` (from
    :class:`~ipip.status.Reconciler`) retries with backoff and reports via ``status``.
    """

    def __init__(self, dataplane: IPIPDataplane, *, address: IPv4Address | None = None,
                 mtu: int = DEFAULT_MTU, ifname: str = TUNL0) -> None:
        super().__init__()
        self.dataplane = dataplane
        self.ifname = ifname
        self._address = IPv4Address(address) if address is not None else None
        self._mtu = int(mtu)

    @property
    def address(self) -> IPv4Address | None:
        return self._address

    @property
    def mtu(self) -> int:
        return self._mtu

    def set_address(self, address: IPv4Address | None) -> None:
        """Change the desired tunnel address; a running ``run()`` applies it promptly."""
        self._address = IPv4Address(address) if address is not None else None
        self._changed()

    def set_mtu(self, mtu: int) -> None:
        """Change the desired MTU (bytes); a running ``run()`` applies it promptly."""
        self._mtu = int(mtu)
        self._changed()

    def apply(self) -> None:
        dp = self.dataplane
        link = dp.get_link(self.ifname)
        if link is None:
            dp.ensure_ipip_fallback(self.ifname)
            link = dp.get_link(self.ifname)
            if link is None:
                raise DataplaneError(f"{self.ifname} still missing after creating it")
        if link.kind not in (None, "ipip"):
            raise DataplaneError(f"{self.ifname} exists but is a {link.kind} device, not ipip")
        if link.mtu != self._mtu:
            dp.set_link(self.ifname, mtu=self._mtu)
        if not link.up:
            dp.set_link(self.ifname, up=True)
        want = IPv4Interface(f"{self._address}/32") if self._address is not None else None
        have = dp.list_addresses(self.ifname)
        for addr in have:
            if addr != want:
                dp.del_address(self.ifname, addr)
        if want is not None and want not in have:
            dp.add_address(self.ifname, want)

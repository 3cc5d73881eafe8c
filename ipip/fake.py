"""In-memory :class:`~ipip.dataplane.IPIPDataplane` with fault injection, for unit tests.

``ipip_supported=False`` models a kernel without the ``ipip`` module (like this
repo's host kernel). ``fail_next(method, exc)`` makes the next call of ``method``
raise ``exc`` (default :class:`~ipip.errors.DataplaneError`). ``calls`` records
every mutating call as ``(method, args...)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface

from .dataplane import FDBEntry, LinkInfo, NeighEntry, VXLANParams, normalize_mac
from .devices import TUNL0
from .errors import DataplaneError, InterfaceNotFound, IPIPUnavailable


@dataclass
class _Link:
    info: LinkInfo
    addresses: list[IPv4Interface] = field(default_factory=list)
    fdb: set[FDBEntry] = field(default_factory=set)
    neigh: dict = field(default_factory=dict)


class FakeDataplane:
    """A fake namespace: links by name with addresses, FDB and neighbour tables."""

    def __init__(self, *, ipip_supported: bool = True, ipip_loaded: bool = False) -> None:
        self.ipip_supported = ipip_supported
        self.links: dict[str, _Link] = {}
        self.calls: list[tuple] = []
        self._faults: dict[str, list[Exception]] = {}
        self._next_index = 2
        if ipip_loaded:
            self._new_link(TUNL0, "ipip", 1480)

    # -- fault injection -------------------------------------------------------------------
    def fail_next(self, method: str, exc: Exception | None = None, times: int = 1) -> None:
        """Make the next ``times`` calls of ``method`` raise ``exc``."""
        self._faults.setdefault(method, []).extend(
            [exc or DataplaneError(f"injected failure in {method}")] * times)

    def _maybe_fail(self, method: str) -> None:
        q = self._faults.get(method)
        if q:
            raise q.pop(0)

    def _new_link(self, ifname: str, kind: str, mtu: int, **kw) -> _Link:
        link = _Link(LinkInfo(ifname=ifname, index=self._next_index, kind=kind, mtu=mtu,
                              up=False, **kw))
        self._next_index += 1
        self.links[ifname] = link
        return link

    def _link(self, ifname: str) -> _Link:
        try:
            return self.links[ifname]
        except KeyError:
            raise InterfaceNotFound(f"no interface {ifname!r}") from None

    def add_foreign_link(self, ifname: str, kind: str = "dummy", mtu: int = 1500) -> None:
        """Test helper: a link someone else created."""
        self._new_link(ifname, kind, mtu)

    # -- IPIPDataplane ------------------------------------------------------------------------
    def get_link(self, ifname: str) -> LinkInfo | None:
        self._maybe_fail("get_link")
        link = self.links.get(ifname)
        return link.info if link else None

    def ensure_ipip_fallback(self, ifname: str = TUNL0) -> None:
        self._maybe_fail("ensure_ipip_fallback")
        if ifname in self.links:
            return
        if not self.ipip_supported:
            raise IPIPUnavailable()
        self.calls.append(("ensure_ipip_fallback", ifname))
        self._new_link(ifname, "ipip", 1480)

    def add_vxlan(self, ifname, params: VXLANParams, *, mtu=None, mac=None) -> None:
        self._maybe_fail("add_vxlan")
        if ifname in self.links:
            raise DataplaneError(f"{ifname} exists", errno=17)
        self.calls.append(("add_vxlan", ifname, params))
        self._new_link(ifname, "vxlan", mtu or 1450, mac=normalize_mac(mac) if mac else None,
                       vxlan=params)

    def delete_link(self, ifname: str) -> None:
        self._maybe_fail("delete_link")
        if self.links.pop(ifname, None) is not None:
            self.calls.append(("delete_link", ifname))

    def set_link(self, ifname, *, mtu=None, up=None, mac=None) -> None:
        self._maybe_fail("set_link")
        link = self._link(ifname)
        self.calls.append(("set_link", ifname, mtu, up, mac))
        changes = {}
        if mtu is not None:
            changes["mtu"] = mtu
        if up is not None:
            changes["up"] = up
        if mac is not None:
            changes["mac"] = normalize_mac(mac)
        link.info = replace(link.info, **changes)

    def interface_of(self, address: IPv4Address) -> tuple[str, IPv4Interface] | None:
        self._maybe_fail("interface_of")
        for name, link in self.links.items():
            for a in link.addresses:
                if a.ip == address:
                    return name, a
        return None

    def list_addresses(self, ifname: str) -> list[IPv4Interface]:
        self._maybe_fail("list_addresses")
        return list(self._link(ifname).addresses)

    def add_address(self, ifname, address: IPv4Interface) -> None:
        self._maybe_fail("add_address")
        link = self._link(ifname)
        if address not in link.addresses:
            self.calls.append(("add_address", ifname, address))
            link.addresses.append(address)

    def del_address(self, ifname, address: IPv4Interface) -> None:
        self._maybe_fail("del_address")
        link = self._link(ifname)
        if address in link.addresses:
            self.calls.append(("del_address", ifname, address))
            link.addresses.remove(address)

    def list_fdb(self, ifname: str) -> list[FDBEntry]:
        self._maybe_fail("list_fdb")
        return sorted(self._link(ifname).fdb, key=lambda e: (e.mac, e.dst))

    def add_fdb(self, ifname, entry: FDBEntry) -> None:
        self._maybe_fail("add_fdb")
        self.calls.append(("add_fdb", ifname, entry))
        self._link(ifname).fdb.add(entry)

    def del_fdb(self, ifname, entry: FDBEntry) -> None:
        self._maybe_fail("del_fdb")
        self.calls.append(("del_fdb", ifname, entry))
        self._link(ifname).fdb.discard(entry)

    def list_neighbours(self, ifname: str) -> list[NeighEntry]:
        self._maybe_fail("list_neighbours")
        return [NeighEntry(ip, mac) for ip, mac in sorted(self._link(ifname).neigh.items())]

    def set_neighbour(self, ifname, entry: NeighEntry) -> None:
        self._maybe_fail("set_neighbour")
        self.calls.append(("set_neighbour", ifname, entry))
        self._link(ifname).neigh[entry.ip] = entry.mac

    def del_neighbour(self, ifname, entry: NeighEntry) -> None:
        self._maybe_fail("del_neighbour")
        self.calls.append(("del_neighbour", ifname, entry))
        self._link(ifname).neigh.pop(entry.ip, None)

    def close(self) -> None:
        pass

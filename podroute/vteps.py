"""Reference counts of the remote VXLAN tunnel endpoints the FIB's routes use.

A remote VTEP (keyed by the remote node IP, see :mod:`podroute.routing`) must have its FDB and
neighbour entries while at least one route goes through it, and lose them when the last one
goes. Calico's vxlan_mgr keeps the same set from its datastore; here it follows the routes.
"""
from __future__ import annotations

from ipaddress import IPv4Address
from typing import Callable, Mapping

from ipip.vxlan import VTEP, vtep_mac

NO_VTEPS: frozenset[IPv4Address] = frozenset()


class VtepRefs:
    """Which remote VTEPs each route (by felix dst key, an int) uses, and how many routes use
    each VTEP. ``on_change(remotes)`` is called from :meth:`publish` with every VTEP in use
    (``{str(node IP): VTEP}``, what :meth:`ipip.vxlan.VXLANManager.set_remote_vteps` takes)."""

    def __init__(self, on_change: Callable[[dict[str, VTEP]], None] | None = None) -> None:
        self._users: dict[IPv4Address, int] = {}
        self.by_route: dict[int, frozenset[IPv4Address]] = {}
        self._on_change = on_change
        self._dirty = False

    def move(self, key: int, vteps: frozenset[IPv4Address]) -> None:
        """Route ``key`` now uses ``vteps`` (empty: none, or the route is gone)."""
        old = self.by_route.pop(key, NO_VTEPS)
        if vteps:
            self.by_route[key] = vteps
        if vteps == old:
            return
        users = self._users
        for nh in old - vteps:
            users[nh] -= 1
            if not users[nh]:
                del users[nh]
                self._dirty = True
        for nh in vteps - old:
            n = users.get(nh, 0)
            self._dirty |= n == 0
            users[nh] = n + 1

    def in_use(self) -> Mapping[IPv4Address, int]:
        """Remote node IP -> number of routes through its VTEP."""
        return self._users

    def remotes(self) -> dict[str, VTEP]:
        """Every VTEP in use, as VXLANManager.set_remote_vteps takes them."""
        return {str(nh): VTEP(nh, nh, vtep_mac(str(nh))) for nh in self._users}

    def publish(self) -> bool:
        """Hand the VTEPs in use to ``on_change`` if the set changed since the last publish;
        True if it did."""
        if not self._dirty:
            return False
        self._dirty = False
        if self._on_change is not None:
            self._on_change(self.remotes())
        return True

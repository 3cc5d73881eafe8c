"""The BGP -> FIB path: the speaker's Loc-RIB changes into felix's ``"bgp"`` routes.

Per changed prefix the :class:`~podroute.routing.FibPlanner` picks the route (native, IPIP or
VXLAN per the pool's mode), the VTEP reference counts follow the route
(:class:`~podroute.vteps.VtepRefs`), and a prefix BGP re-announces or withdraws leaves the
restart hold (:class:`~podroute.gr_hold.RestartHold`). The speaker's prefix key and felix's
``dst_key`` are the same int, so the delta indexes felix's tables as it is.
"""
from __future__ import annotations

from typing import Callable, Mapping, Protocol

from bgp.model import BestRoute
from felix.routes import Route
from podroute.gr_hold import RestartHold
from podroute.routing import FibPlanner
from podroute.vteps import NO_VTEPS, VtepRefs


class BgpRouteSetters(Protocol):
    """The felix setters this path uses (felix.worker.RouteTableWorker has them)."""

    def set_route(self, owner: str, route: Route, key: int | None = None) -> None: ...

    def remove_key(self, owner: str, key: int) -> None: ...


class BgpToFib:
    """``apply(delta)``: prefix key -> BestRoute (or None when the prefix is gone), called on
    the event loop by the speaker (its ``on_changes``). ``kick()`` asks felix to apply."""

    def __init__(self, planner: FibPlanner, routes: BgpRouteSetters, vteps: VtepRefs,
                 hold: RestartHold, kick: Callable[[], None]) -> None:
        self._plan = planner.plan
        self._routes = routes
        self.vteps = vteps
        self.hold = hold
        self._kick = kick

    def apply(self, delta: Mapping[int, BestRoute | None]) -> None:
        plan = self._plan
        set_route, remove_key = self._routes.set_route, self._routes.remove_key
        vteps = self.vteps
        by_route = vteps.by_route  # the fast path skips move() while no route uses VXLAN
        stale = self.hold.stale
        for key, best in delta.items():
            route, hops = plan(best.prefix, best) if best is not None else (None, NO_VTEPS)
            if hops or by_route:
                vteps.move(key, hops)
            if stale:
                stale.pop(key, None)  # re-announced (replaces the held route) or gone: not stale
            if route is not None:
                set_route("bgp", route, key)
            else:
                remove_key("bgp", key)
        vteps.publish()
        self.hold.check()
        self._kick()

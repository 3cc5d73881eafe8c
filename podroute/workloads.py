"""Felix as the CNI plugin's WorkloadSink: felix is the only writer of a workload's /32.

``<ip>/32 dev <host veth> scope link`` is felix's ``"workloads"`` route (Calico's Felix owns
the same route). The CNI plugin hands each workload over and awaits the outcome, so ADD
answers only once the route exists (as ptp answers after adding it) and DEL once it is gone.
"""
from __future__ import annotations

from ipaddress import IPv4Network

from cni.model import WorkloadEndpoint
from felix.routes import Route
from felix.worker import RouteTableWorker
from podroute.felix_loop import FelixDriver


def workload_route(ep: WorkloadEndpoint) -> Route:
    """The host route of ``ep``."""
    return Route.device(IPv4Network(f"{ep.ip}/32"), ep.host_ifname)


class FelixWorkloads:
    """cni.plugin.WorkloadSink over felix: each call changes felix's desired state and
    resolves after felix's next apply; raises podroute.felix_loop.RouteNotProgrammed when that
    apply failed for the route. Bounding the wait is the caller's (the plugin's timeout)."""

    def __init__(self, routes: RouteTableWorker, driver: FelixDriver) -> None:
        self._routes = routes
        self._driver = driver

    async def workload_added(self, ep: WorkloadEndpoint) -> None:
        route = workload_route(ep)
        self._routes.set_route("workloads", route)
        await self._driver.wait_programmed(route.dst)

    async def workload_removed(self, ep: WorkloadEndpoint) -> None:
        dst = IPv4Network(f"{ep.ip}/32")
        self._routes.remove_route("workloads", dst)
        await self._driver.wait_programmed(dst)

"""The plugin's WorkloadSink when it runs without felix: it writes the workload /32 itself.

Exactly one writer per route: in the agent felix is the sink and the plugin never touches the
route; a plugin built without a sink (tests, the standalone benchmark server) gets this one,
which adds and deletes ``<ip>/32 dev <host veth> scope link proto <protocol>`` through the
Wiring seam, in a worker thread.
"""
from __future__ import annotations

import asyncio

from .model import WorkloadEndpoint
from .wiring import Wiring


class WiringRoutes:
    """cni.plugin.WorkloadSink over ``wiring``; raises the wiring's errors (CNIError/WiringError)."""

    def __init__(self, wiring: Wiring, protocol: int) -> None:
        self.wiring = wiring
        self.protocol = protocol

    async def workload_added(self, ep: WorkloadEndpoint) -> None:
        await asyncio.to_thread(self.wiring.add_host_route, ep.ip, ep.host_ifname, self.protocol)

    async def workload_removed(self, ep: WorkloadEndpoint) -> None:
        await asyncio.to_thread(self.wiring.delete_host_route, ep.ip, ep.host_ifname, self.protocol)

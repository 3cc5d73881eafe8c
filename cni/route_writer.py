"""The plugin's WorkloadSink when it runs without felix: it writes the workload /32 itself.

Exactly one writer per route: in the agent felix is the sink and the plugin never touches the
route; a plugin built without a sink (tests, the standalone benchmark server) gets this one,
which adds and deletes ``<ip>/32 dev <host veth> scope link proto <protocol>`` through the
Wiring seam, in a worker thread.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable

from .errors import INTERNAL, TRY_AGAIN_LATER, CNIError
from .model import WorkloadEndpoint
from .wiring import Wiring


async def _step(name: str, fn: Callable[..., Any], *args: Any) -> None:
    try:
        await asyncio.to_thread(fn, *args)
    except CNIError as e:  # name the wiring step, as the plugin's own steps are named
        raise CNIError(e.code, f"{name}: {e.msg}", e.details) from e


class WiringRoutes:
    """cni.plugin.WorkloadSink over ``wiring``; raises the wiring's CNIErrors (their message prefixed
    with the step, ``add_host_route``/``delete_host_route``)."""

    def __init__(self, wiring: Wiring, protocol: int) -> None:
        self.wiring = wiring
        self.protocol = protocol

    async def workload_added(self, ep: WorkloadEndpoint) -> None:
        await _step("add_host_route", self.wiring.add_host_route, ep.ip, ep.host_ifname, self.protocol)

    async def workload_removed(self, ep: WorkloadEndpoint) -> None:
        await _step("delete_host_route", self.wiring.delete_host_route, ep.ip, ep.host_ifname, self.protocol)


async def confirm_route(what: str, call: Callable[[WorkloadEndpoint], Any], ep: WorkloadEndpoint,
                        timeout: float) -> None:
    """Await ``call(ep)`` (a WorkloadSink method named ``what``) for at most ``timeout`` s.
    Raises CNIError 11 (try again later) when it does not answer in time, the sink's CNIError
    with ``what`` in front, or 999 for any other failure it reports."""
    try:
        await asyncio.wait_for(call(ep), timeout)
    except asyncio.TimeoutError as e:
        raise CNIError(TRY_AGAIN_LATER, f"{what}: host route {ep.ip}/32 dev {ep.host_ifname} "
                       f"not confirmed within {timeout:g} s") from e
    except CNIError as e:
        raise CNIError(e.code, f"{what}: {e.msg}", e.details) from e
    except Exception as e:  # the sink's own failure (felix could not program it)
        raise CNIError(INTERNAL, f"{what}: host route {ep.ip}/32 dev {ep.host_ifname}: {e}",
                       repr(e)) from e

"""The agent side of the CNI plugin on fakes, shared by the unit tests: a felix stand-in that
records what it was told, and a plugin wired to it over a FakeWiring."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from cni.fake_wiring import FakeWiring
from cni.ipam import IPAM
from cni.plugin import CNIPlugin
from cni.route_writer import WiringRoutes

BLOCK = IPv4Network("198.19.7.0/26")


class Sink(WiringRoutes):
    """Felix's part on the fakes: the only writer of the host route, and what it was told."""

    def __init__(self, wiring) -> None:
        super().__init__(wiring, 90)
        self.workloads: dict[IPv4Address, str] = {}

    async def workload_added(self, ep) -> None:
        self.workloads[ep.ip] = ep.host_ifname
        await super().workload_added(ep)

    async def workload_removed(self, ep) -> None:
        self.workloads.pop(ep.ip, None)
        await super().workload_removed(ep)


def plugin_env(state: Path, wiring: FakeWiring, netns: str) -> tuple[CNIPlugin, FakeWiring, IPAM, Sink]:
    """(plugin, wiring, ipam, sink): a plugin over ``wiring`` (``netns`` registered in it), IPAM
    state under ``state`` with one /26, the Sink as its route writer, reaping at once."""
    wiring.add_netns(netns)
    ipam = IPAM(state / "ipam", [BLOCK])
    sink = Sink(wiring)
    plugin = CNIPlugin(ipam=ipam, wiring=wiring, mtu=1450, workloads=sink, reap_delay=0.0)
    return plugin, wiring, ipam, sink

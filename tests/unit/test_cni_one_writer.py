"""One writer per route: with a WorkloadSink (felix) the plugin never writes the workload /32
itself; ADD answers only once the sink reports the route programmed, DEL once it is gone."""
from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network

import pytest

from cni.errors import CNIError
from cni.fake_wiring import FakeWiring
from cni.ipam import IPAM
from cni.model import CNIRequest
from cni.plugin import CNIPlugin

NS = "/var/run/netns/pod1"
CONF = {"cniVersion": "1.0.0", "name": "podnet", "type": "podroute"}


class HeldSink:
    """A felix that programs routes only when the test says so (``release``)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.told: list[tuple[str, IPv4Address]] = []
        self.fail: Exception | None = None

    async def workload_added(self, ep) -> None:
        self.told.append(("added", ep.ip))
        await self.release.wait()
        if self.fail is not None:
            raise self.fail

    async def workload_removed(self, ep) -> None:
        self.told.append(("removed", ep.ip))
        await self.release.wait()


@pytest.fixture
def env(tmp_path):
    wiring = FakeWiring()
    wiring.add_netns(NS)
    sink = HeldSink()
    plugin = CNIPlugin(ipam=IPAM(tmp_path / "ipam", [IPv4Network("198.19.7.0/26")]), wiring=wiring,
                       mtu=1450, workloads=sink, route_timeout=5.0)
    return plugin, wiring, sink


def req(command="ADD"):
    return CNIRequest(command, "c0ffee", NS, "eth0", {}, "/usr/lib/cni", dict(CONF))


async def test_add_waits_for_the_sink_and_never_writes_the_route_itself(env):
    plugin, wiring, sink = env
    add = asyncio.create_task(plugin.handle(req()))
    for _ in range(500):  # bounded: until the plugin has handed the workload over
        if sink.told:
            break
        await asyncio.sleep(0.01)
    assert sink.told == [("added", IPv4Address("198.19.7.0"))]
    assert not add.done()  # no answer before felix has programmed the route
    sink.release.set()
    result = await asyncio.wait_for(add, 5)
    assert result["ips"][0]["address"] == "198.19.7.0/32"
    assert "add_host_route" not in wiring.calls and wiring.routes == set()
    assert await plugin.handle(req("DEL")) is None
    assert sink.told[-1] == ("removed", IPv4Address("198.19.7.0"))
    assert "delete_host_route" not in wiring.calls
    assert plugin.ipam.allocations() == {}


async def test_a_route_felix_could_not_program_fails_the_add_and_rolls_back(env):
    plugin, wiring, sink = env
    sink.fail = RuntimeError("198.19.7.0/32: No such device")
    sink.release.set()
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req())
    assert ei.value.code == 999 and "No such device" in ei.value.msg and "host route" in ei.value.msg
    assert [k for k, _ in sink.told] == ["added", "removed"]
    await plugin.reap()
    assert wiring.host_links == {} and wiring.pod_links == {} and plugin.ipam.allocations() == {}


async def test_a_route_not_confirmed_in_time_is_try_again_later_and_rolled_back(env):
    plugin, wiring, sink = env
    plugin.route_timeout = 0.2
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req())
    assert ei.value.code == 11 and "not confirmed within 0.2 s" in ei.value.msg
    assert wiring.host_links == {} and plugin.ipam.allocations() == {}

"""The agent's felix loop on fakes: FIB work off the event loop, retry backoff, loop lag in status."""
import asyncio
import logging
import re
import time
from ipaddress import IPv4Address, IPv4Network
from types import SimpleNamespace

import pytest
from waiting import wait_until

from bgp.model import BestRoute, SpeakerStatus
from cni.fake_wiring import FakeWiring
from felix.fake import FakeDataplane
from felix.routes import dst_key
from ipip.fake import FakeDataplane as FakeIPIP
from podroute import statusd
from podroute.agent import Agent
from podroute.felix_loop import RouteNotProgrammed
from podroute.config import IPPool, NodeConfig, Paths

NODE_IP = IPv4Address("198.18.0.11")
PEER = IPv4Address("198.18.0.12")


class FakeSpeaker:
    def __init__(self, cfg, on_changes, cluster):
        self.config = SimpleNamespace(peers=())
        self.on_changes = on_changes

    def set_announcements(self, cidrs):
        self.announced = tuple(cidrs)

    def status(self):
        return SpeakerStatus(peers=(), exabgp_pid=None, exabgp_restarts=0, last_exit=None, announced=self.announced)

    def best_routes_view(self):
        return {}


def config(tmp_path):
    return NodeConfig(node_name="n1", node_ip=NODE_IP, pod_cidrs=(IPv4Network("198.19.1.0/26"),),
                      ip_pools=(IPPool(IPv4Network("198.19.0.0/16"), 26, "Never", "Never"),),
                      paths=Paths(tmp_path / "state", tmp_path / "run"), resync_interval=3600)


@pytest.fixture
def dp():
    return FakeDataplane(links=("eth0",))


@pytest.fixture
async def agent(tmp_path, dp):
    a = Agent(config(tmp_path), dataplane=dp, wiring=FakeWiring(), speaker_factory=FakeSpeaker,
              start_monitor=False, ipip_dataplane=FakeIPIP())
    tasks = [asyncio.create_task(a.felix.run()), asyncio.create_task(a.looplag.run())]
    a.kick()
    yield a
    dp.unblock()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert await asyncio.to_thread(a.routes.join, 10)


def bgp_delta(count, gw=PEER):
    out = {}
    for i in range(count):
        net = IPv4Network((0xC6130000 + (8 + i) * 64, 26))  # 198.19.2.0/26 onwards: other nodes' blocks
        out[dst_key(net)] = BestRoute(net, (gw,), (gw,))
    return out


def workload(ip, host_ifname):
    return SimpleNamespace(ip=IPv4Address(ip), host_ifname=host_ifname)


async def test_loop_stays_responsive_while_the_dataplane_blocks(agent, dp):
    await wait_until(lambda: IPv4Network("198.19.1.0/26") in dp.ours())  # first apply done
    dp.block()
    agent.bgp.apply(bgp_delta(3))
    # The felix thread is now held inside a dump or write. Before felix had its own thread,
    # the apply ran on the event loop, so this coroutine could not run until it returned.
    await wait_until(dp.waiting.is_set)
    st = agent.status()
    assert st["fib"]["worker"]["busy_s"] > 0 and set(st["loop"]) == {"lag_s", "worst_s", "worst_at", "threshold_s"}
    text = statusd.render(st)  # the status socket's work, done while felix is held
    assert "Event loop: worst lag" in text
    agent.bgp.apply(bgp_delta(5))              # BGP and CNI keep being served
    added = asyncio.create_task(agent.cni.workloads.workload_added(workload("198.19.1.5", "eth0")))
    await asyncio.sleep(0.05)
    assert not added.done()  # the CNI ADD waits for felix to program its route
    assert not dp.ours().keys() >= {IPv4Network("198.19.2.0/26"), IPv4Network("198.19.1.5/32")}
    dp.unblock()
    await asyncio.wait_for(added, 10)
    assert IPv4Network("198.19.1.5/32") in dp.ours()
    want = {IPv4Network((0xC6130000 + (8 + i) * 64, 26)) for i in range(5)} | {IPv4Network("198.19.1.5/32")}
    await wait_until(lambda: want <= dp.ours().keys())
    assert agent.felix.last_apply["errors"] == []


async def test_bgp_changes_reach_the_fib_in_order(agent, dp):
    await wait_until(lambda: agent.felix.last_apply is not None)
    agent.bgp.apply(bgp_delta(4))
    agent.bgp.apply({k: None for k in list(bgp_delta(4))[:2]})          # withdraw two
    agent.bgp.apply(bgp_delta(1, gw=IPv4Address("198.18.0.13")))        # move one
    first = IPv4Network("198.19.2.0/26")
    await wait_until(lambda: first in dp.ours() and len([d for d in dp.ours() if d.prefixlen == 26]) == 4)
    assert str(dp.ours()[first].gateway) == "198.18.0.13"
    assert IPv4Network("198.19.2.64/26") not in dp.ours()
    assert agent.status()["fib"]["desired_by_owner"]["bgp"] == 3


async def test_a_route_that_keeps_failing_is_retried_with_backoff_and_logged_once(agent, dp, caplog):
    caplog.set_level(logging.INFO, logger="podroute.agent")
    await wait_until(lambda: agent.felix.last_apply is not None)
    # An IPAM allocation whose veth is gone: felix's /32 fails with ENODEV at every apply.
    with pytest.raises(RouteNotProgrammed, match="198.19.1.5/32"):
        await agent.cni.workloads.workload_added(workload("198.19.1.5", "prveth-gone"))
    await wait_until(lambda: agent.felix.failures.failing == 1)
    # Other events keep coming (link churn marks felix dirty through the monitor); each
    # apply retries the route. Each used to start one more 1 s retry chain as well.
    for _ in range(20):
        dumps = dp.dumps
        agent.felix.on_drift()
        await wait_until(lambda: dp.dumps > dumps)
    await wait_until(lambda: agent.felix.last_apply is not None and agent.felix.last_apply["errors"])
    warnings = [r for r in caplog.records if r.getMessage() == "route not programmed"]
    assert len(warnings) == 1 and warnings[0].kv["dst"] == IPv4Network("198.19.1.5/32")
    assert warnings[0].kv["errno"] == 19 and warnings[0].kv["retry_in_s"] == 1.0
    applied = [r for r in caplog.records if r.getMessage() == "FIB applied"]
    assert len(applied) == 2  # the first (blocks) and the failing one; not one per retry
    # 21 attempts: the next retry is max_s away, and there is only one retry timer. Watch
    # a window where the old code's 21 one-second chains would have run ~40 applies.
    dumps = dp.dumps
    watch_until = time.monotonic() + 2.5
    while time.monotonic() < watch_until:
        await asyncio.sleep(0.05)
    assert dp.dumps - dumps == 0
    # The veth appears (the monitor's link event): programmed, recovery logged once.
    dp.links.add("prveth-gone")
    agent.felix.on_drift()
    await wait_until(lambda: IPv4Network("198.19.1.5/32") in dp.ours())
    await wait_until(lambda: agent.felix.failures.failing == 0)
    recovered = [r for r in caplog.records if r.getMessage() == "failing routes recovered"]
    # 1 + 20 drift applies (+1 if a loaded machine let the first 1 s retry fire meanwhile)
    assert len(recovered) == 1 and recovered[0].kv["failed_attempts"] in (21, 22)
    assert agent.status()["fib"]["failing_routes"] == 0


async def test_status_reports_loop_lag_from_a_blocked_loop(agent):
    await wait_until(lambda: agent.status()["loop"]["worst_at"] is not None)
    time.sleep(0.5)  # a blocking call on the loop, the kind the lag monitor exists to catch
    await wait_until(lambda: agent.status()["loop"]["worst_s"] >= 0.45)
    loop = agent.status()["loop"]
    assert loop["threshold_s"] == agent.looplag.threshold_s and loop["worst_at"] <= time.time()
    text = statusd.render(agent.status())
    line = next(x for x in text.splitlines() if x.startswith("Event loop"))
    worst_ms = float(re.search(r"worst lag ([0-9.]+) ms", line).group(1))
    assert worst_ms >= 450 and "OVER THRESHOLD" in line


def test_render_shows_a_held_felix_thread_and_failing_routes():
    snap = {"node": {}, "bgp": {}, "fib": {"last_apply": {"added": 0, "errors": ["198.19.1.5/32: no device"], "at": 990.0},
                                           "worker": {"busy_s": 12.5}, "failing_routes": 1},
            "loop": {"lag_s": 0.001, "worst_s": 0.4, "worst_at": 995.0, "threshold_s": 0.25}}
    text = statusd.render(snap, now=1000.0)
    assert "Felix: current apply running for 12.5 s" in text
    assert "Failing routes: 1 (retried with backoff)" in text
    assert ("Event loop: worst lag 400.0 ms in the last minute (5s ago), now 1.0 ms, threshold 250 ms"
            "  OVER THRESHOLD") in text
    snap["fib"]["worker"]["busy_s"] = 0.2
    assert "Felix: current apply" not in statusd.render(snap, now=1000.0)

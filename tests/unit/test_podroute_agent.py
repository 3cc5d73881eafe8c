"""The agent on fakes: it wires felix, the CNI plugin, the speaker and the cluster file together,
runs its tasks and shuts down (FakeDataplane, FakeWiring, the ipip fake and a fake speaker)."""
from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import SimpleNamespace

import pytest
from waiting import wait_until

from bgp.model import BestRoute, PeerStatus, SpeakerStatus
from cni.fake_wiring import FakeWiring
from cni.model import CNIRequest
from felix.fake import FakeDataplane
from felix.routes import Route, dst_key
from ipip.fake import FakeDataplane as FakeIPIP
from podroute.agent import Agent
from podroute.config import IPPool, NodeConfig, Paths
from podroute.schema import ConfigError

NODE_IP = IPv4Address("198.18.0.11")
PEER = IPv4Address("198.18.0.12")
NS = "/var/run/netns/pod1"


class FakeSpeaker:
    def __init__(self, cfg, on_changes, cluster):
        self.on_changes, self.cluster = on_changes, cluster
        self.config = SimpleNamespace(peers=())
        self.peers: tuple = ()
        self.peer_sets: list = []
        self.converged = False
        self.stopped = asyncio.Event()

    def set_announcements(self, cidrs):
        self.announced = tuple(cidrs)

    def set_peers(self, peers):
        self.peer_sets.append(tuple(peers))

    def set_expected_next_hops(self, hops):
        self.hops = dict(hops)

    def status(self):
        peers = (PeerStatus(PEER, 64512, "established" if self.converged else "connect", 0.0, 0, 0, 0, None,
                            eor_received=self.converged),)
        return SpeakerStatus(peers=peers, exabgp_pid=None, exabgp_restarts=0, last_exit=None,
                             announced=self.announced)

    def best_routes_view(self):
        return {}

    async def run(self):
        await self.stopped.wait()

    async def stop(self):
        self.stopped.set()


@pytest.fixture
def short_dir():
    d = Path(tempfile.mkdtemp(prefix="pra-", dir="/tmp"))  # unix socket paths stay short
    yield d
    shutil.rmtree(d, ignore_errors=True)


def config(d: Path, **kw) -> NodeConfig:
    return NodeConfig(node_name="n1", node_ip=NODE_IP, pod_cidrs=(IPv4Network("198.19.1.0/26"),),
                      ip_pools=(IPPool(IPv4Network("198.19.0.0/16"), 26, "Never", "Never"),),
                      paths=Paths(d / "state", d / "run"), resync_interval=3600, **kw)


class SharedKernel(FakeWiring):
    """The CNI fake and felix's fake as one kernel: a host veth the plugin makes is a link felix
    can route to."""

    def __init__(self, dp: FakeDataplane) -> None:
        super().__init__()
        self.dp = dp

    def create_veth_in_netns(self, host_ifname, netns, ifname, mtu):
        super().create_veth_in_netns(host_ifname, netns, ifname, mtu)
        self.dp.links.add(host_ifname)


def make(d: Path, dp: FakeDataplane | None = None, **kw) -> tuple[Agent, FakeDataplane, FakeWiring]:
    dp = dp or FakeDataplane(links=("eth0",))
    wiring = SharedKernel(dp)
    wiring.add_netns(NS)
    agent = Agent(config(d, **kw), dataplane=dp, wiring=wiring, speaker_factory=FakeSpeaker,
                  start_monitor=False, ipip_dataplane=FakeIPIP())
    return agent, dp, wiring


def cni(command: str) -> CNIRequest:
    return CNIRequest(command, "c0ffee", NS, "eth0", {}, "/usr/lib/cni",
                      {"cniVersion": "1.0.0", "name": "podnet", "type": "podroute"})


async def test_agent_runs_wires_a_pod_through_felix_alone_and_stops_cleanly(short_dir):
    agent, dp, wiring = make(short_dir)
    run = asyncio.create_task(agent.run(signals=False))
    await wait_until(lambda: agent.cni_readiness() is None)
    assert IPv4Network("198.19.1.0/26") in dp.ours()  # the block's blackhole
    result = await agent.cni.handle(cni("ADD"))
    ip = IPv4Network(result["ips"][0]["address"])
    host = result["interfaces"][0]["name"]
    assert dp.ours()[ip] == Route.device(ip, host)       # felix wrote it before ADD answered
    assert wiring.routes == set() and "add_host_route" not in wiring.calls  # and nobody else
    st = agent.status()
    assert json.dumps(st) and st["workloads"] == 1 and st["fib"]["desired_by_owner"]["workloads"] == 1
    assert set(st) == {"node", "started", "bgp", "fib", "loop", "encapsulation", "workloads", "tasks", "datastore",
                       "task_failures", "health"}
    assert {"felix", "cni-server", "bgp-speaker", "status-server"} <= set(st["tasks"])
    await agent.cni.handle(cni("DEL"))
    assert ip not in dp.ours()
    agent._stop.set()
    assert await asyncio.wait_for(run, 30) == 0
    assert agent.speaker.stopped.is_set()
    assert not agent.cfg.paths.cni_socket.exists() and not agent.cfg.paths.agent_socket.exists()


async def test_bgp_routes_reach_the_fib_and_a_crashed_task_stops_the_agent_with_1(short_dir):
    agent, dp, _ = make(short_dir)
    run = asyncio.create_task(agent.run(signals=False))
    net = IPv4Network("198.19.2.0/26")
    agent.speaker.on_changes({dst_key(net): BestRoute(net, (PEER,), (PEER,))})
    await wait_until(lambda: net in dp.ours())
    assert dp.ours()[net].gateway == PEER

    async def boom():
        raise RuntimeError("injected")
    agent.guard.start("boom", boom)
    assert await asyncio.wait_for(run, 30) == 1
    assert agent.status()["task_failures"][0]["name"] == "boom"
    assert net in dp.ours()  # routes stay in the FIB across a stop


async def test_restart_hold_keeps_previous_routes_until_bgp_converges(short_dir):
    dp = FakeDataplane(links=("eth0",))
    kept, gone = IPv4Network("198.19.2.0/26"), IPv4Network("198.19.3.0/26")
    for n in (kept, gone):
        dp.add_foreign(Route.via(n, PEER), protocol=90)   # what the previous run programmed
    agent, dp, _ = make(short_dir, dp)
    assert agent.hold.active and agent.status()["fib"]["graceful_restart_hold"] is True
    run = asyncio.create_task(agent.run(signals=False))
    await wait_until(lambda: agent.felix.last_apply is not None)
    assert {kept, gone} <= dp.ours().keys()
    agent.speaker.converged = True                          # End-of-RIB from every peer
    agent.speaker.on_changes({dst_key(kept): BestRoute(kept, (PEER,), (PEER,))})
    await wait_until(lambda: gone not in dp.ours())
    assert kept in dp.ours() and not agent.hold.active
    agent._stop.set()
    assert await asyncio.wait_for(run, 30) == 0


async def test_a_changed_cluster_file_reaches_the_speaker(short_dir):
    f = short_dir / "cluster.yaml"
    f.write_text(f"nodes:\n  - {{name: n1, ip: {NODE_IP}, podCIDRs: [198.19.1.0/26]}}\n")
    agent, _, _ = make(short_dir, cluster_file=f)
    assert agent.speaker.cluster is not None and len(agent.speaker.cluster.nodes) == 1
    agent.cluster.datastore.poll_s = 0.01
    run = asyncio.create_task(agent.run(signals=False))
    f.write_text(f.read_text() + "  - {name: n2, ip: 198.18.0.12, podCIDRs: [198.19.2.0/26]}\n")
    await wait_until(lambda: agent.speaker.peer_sets)
    assert [p.address for p in agent.speaker.peer_sets[-1]] == [PEER]
    assert agent.speaker.hops == {IPv4Network("198.19.1.0/26"): NODE_IP, IPv4Network("198.19.2.0/26"): PEER}
    agent._stop.set()
    assert await asyncio.wait_for(run, 30) == 0


def test_a_static_block_another_node_holds_is_refused_at_start(short_dir):
    f = short_dir / "cluster.yaml"
    f.write_text(f"nodes:\n  - {{name: n1, ip: {NODE_IP}}}\n"
                 "  - {name: n2, ip: 198.18.0.12, podCIDRs: [198.19.1.0/25]}\n")
    with pytest.raises(ConfigError, match=r"podCIDRs: podCIDRs 198.19.1.0/26 collides with block 198.19.1.0/25 "
                                          r"held by node n2; pick another block"):
        make(short_dir, cluster_file=f)


def test_agent_module_stays_a_composition_root():
    import inspect

    import podroute.agent as mod
    src = inspect.getsource(mod)
    assert len(src.splitlines()) < 400
    body = inspect.getsource(Agent)
    assert "\n        import " not in body and "\n        from " not in body  # no imports inside functions
    assert "Any = None" not in body

"""The agent on a datastore that claims blocks (the fake datastore, FakeServer): start without
podCIDRs, growth, release, departed nodes, outages, restarts and static blocks; and
podroute.blocks_wiring on its own."""
from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from test_podroute_agent import NODE_IP, FakeSpeaker, SharedKernel
from waiting import until

from cni.errors import TRY_AGAIN_LATER, CNIError
from cni.model import CNIRequest
from felix.fake import FakeDataplane
from felix.routes import Route
from ipip.fake import FakeDataplane as FakeIPIP
from podroute import statusd
from podroute.agent import Agent
from podroute.blocks_wiring import order_blocks, start_node
from podroute.config import DatastoreConfig, EtcdConfig, IpamConfig, NodeConfig, Paths
from podroute.config import IPPool as ConfigPool
from podroute.datastore import IPAMBlock, IPPool, Node, block_key
from podroute.datastore.fake import FakeDatastore, FakeServer
from podroute.ipamblocks import BlockPolicy
from podroute.schema import ConfigError

N = IPv4Network
POOL = IPPool("pool1", N("198.19.0.0/24"), block_size=28)   # 16 blocks of 16 addresses
N2 = Node("n2", IPv4Address("198.18.0.12"))
N3 = Node("n3", IPv4Address("198.18.0.13"))
FAST = (0.01, 0.05)        # start_node's backoff in tests
T = 10                     # seconds any condition may take here


@pytest.fixture
def dirs():
    made = []

    def make() -> Path:
        made.append(Path(tempfile.mkdtemp(prefix="prd-", dir="/tmp")))  # unix socket paths stay short
        return made[-1]
    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def etcd_config(d: Path, name="n1", ip=NODE_IP, pod_cidrs=(), pools=(), max_blocks=0, grace=60.0) -> NodeConfig:
    return NodeConfig(node_name=name, node_ip=ip, pod_cidrs=tuple(pod_cidrs), ip_pools=tuple(pools),
                      paths=Paths(d / "state", d / "run"), resync_interval=3600,
                      datastore=DatastoreConfig("etcd", EtcdConfig(("http://127.0.0.1:2379",)), 7.0),
                      ipam=IpamConfig(max_blocks, grace))


class Member:
    """One agent on the shared FakeServer, with its fakes."""

    def __init__(self, agent: Agent, dp: FakeDataplane, wiring: SharedKernel, store: FakeDatastore) -> None:
        self.agent, self.dp, self.wiring, self.store = agent, dp, wiring, store
        self.task: asyncio.Task | None = None

    async def run(self) -> "Member":
        self.task = asyncio.create_task(self.agent.run(signals=False))
        await until(lambda: self.agent.cni_readiness() is None, T, "the agent ready")
        return self

    async def stop(self) -> None:
        self.agent._stop.set()
        assert await asyncio.wait_for(self.task, 30) == 0

    def req(self, command: str, i: int) -> CNIRequest:
        ns = f"/var/run/netns/pod{i}"
        self.wiring.add_netns(ns)
        return CNIRequest(command, f"c{i:04d}", ns, "eth0", {}, "/usr/lib/cni",
                          {"cniVersion": "1.0.0", "name": "podnet", "type": "podroute"})

    async def add(self, i: int) -> IPv4Address:
        result = await self.agent.cni.handle(self.req("ADD", i))
        return IPv4Network(result["ips"][0]["address"], strict=False).network_address

    async def delete(self, i: int) -> None:
        await self.agent.cni.handle(self.req("DEL", i))

    @property
    def blocks(self) -> tuple[IPv4Network, ...]:
        return self.agent.blocks.blocks

    def blackholes(self) -> set[IPv4Network]:
        return {dst for dst, r in self.dp.ours().items() if r == Route.blackhole(dst)}


async def make_node(d: Path, server: FakeServer, interval: float = 0.05, **kw) -> Member:
    """An agent on ``server``; block upkeep every ``interval`` s (long: only when woken, as by a
    full IPAM)."""
    cfg = etcd_config(d, **kw)
    store = FakeDatastore(server)
    start = await start_node(cfg, store, backoff_s=FAST)
    dp = FakeDataplane(links=("eth0",))
    wiring = SharedKernel(dp)
    agent = Agent(cfg, dataplane=dp, wiring=wiring, speaker_factory=FakeSpeaker, start_monitor=False,
                  ipip_dataplane=FakeIPIP(), datastore=store, start=start)
    agent.blocks.nodeblocks.interval_s = interval
    agent.cluster.backoff_s = FAST
    return Member(agent, dp, wiring, store)


def logged(caplog, text: str) -> bool:
    """A log line whose message or key=value fields hold ``text``."""
    return any(text in r.getMessage() or text in str(getattr(r, "kv", "")) for r in caplog.records)


def holders(server: FakeServer) -> dict[IPv4Network, str | None]:
    return {s.value.cidr: s.value.affinity for s in server.store.items.values() if isinstance(s.value, IPAMBlock)}


# -- start ---------------------------------------------------------------------------------------

async def test_a_node_without_pod_cidrs_claims_announces_and_blackholes_a_block(dirs):
    server = FakeServer()
    server.put(POOL, N2, IPAMBlock(N("198.19.0.0/28"), "n2"))
    n = await (await make_node(dirs(), server)).run()
    try:
        (block,) = n.blocks
        assert holders(server)[block] == "n1" and block.subnet_of(POOL.cidr) and block != N("198.19.0.0/28")
        assert n.agent.speaker.announced == (block,)
        assert n.blackholes() == {block}
        assert n.agent.ipam.blocks == (block,)
        assert n.agent.encap.tunnel_address == block.network_address
        await until(lambda: server.get("nodes/n1"), T, "the registration")
        assert server.get("nodes/n1").value == Node("n1", NODE_IP, 64512) and server.leases["n1"] == 7.0
        await until(lambda: n.agent.cluster.revision == server.store.revision, T, "the watch caught up")
        ip = await n.add(1)
        assert ip in block and ip != block.network_address     # the tunnel address is reserved
        # the datastore's pools reach the agent's config; the mesh has n2
        assert n.agent.cfg.ip_pools == (ConfigPool(POOL.cidr, 28, "Never", "Never"),)
        assert [p.ip for p in n.agent.speaker.cluster.nodes if p.name == "n2"] == [N2.address]
        await until(lambda: n.agent.blocks.nodeblocks.usage.get(block) == 1, T, "a round of block upkeep")
        st = n.agent.status()
        ds = json.loads(json.dumps(st))["datastore"]
        assert ds["state"] == "connected" and ds["datastore"] == "fake" and ds["revision"] == server.store.revision
        assert ds["blocks"] == [{"cidr": str(block), "size": 16, "used": 1, "tunnel": True}]
        assert ds["tunnel_address"] == str(block.network_address) and ds["claim_error"] is None
        text = statusd.render(st)
        assert "Datastore: fake, 2 node(s)" in text and "connected" in text
        assert f"IPAM blocks: {block} (1/16 used, tunnel)" in text
    finally:
        await n.stop()


async def test_a_node_started_while_the_datastore_is_down_joins_once_it_is_back(dirs, caplog):
    server = FakeServer()
    server.put(POOL)
    server.down()
    joining = asyncio.create_task(make_node(dirs(), server))
    await until(lambda: logged(caplog, "datastore unavailable"), T, "the outage logged")
    await asyncio.sleep(0.1)
    assert not joining.done() and not holders(server)
    server.up()
    n = await (await asyncio.wait_for(joining, T)).run()
    try:
        assert holders(server) == {n.blocks[0]: "n1"}
    finally:
        await n.stop()


async def test_restart_reuses_the_blocks_and_keeps_the_tunnel_block(dirs):
    server = FakeServer()
    a, b = N("198.19.0.16/28"), N("198.19.0.48/28")
    server.put(IPPool("p", N("198.19.0.0/24"), 28, ipip_mode="Always"), IPAMBlock(a, "n1"), IPAMBlock(b, "n1"),
               Node("n1", NODE_IP, 64512, labels=(("rack", "r1"),), ipip_tunnel_address=b.network_address))
    claims = server.calls.count("claim_block")
    start = await start_node(etcd_config(dirs()), FakeDatastore(server), backoff_s=FAST)
    assert start.blocks == (b, a) and server.calls.count("claim_block") == claims
    assert start.tunnel_address == b.network_address
    assert start.node == Node("n1", NODE_IP, 64512, labels=(("rack", "r1"),), ipip_tunnel_address=b.network_address)
    assert order_blocks((a, b), None) == (a, b) and order_blocks((a, b), IPv4Address("198.19.0.99")) == (a, b)


async def test_a_restarted_agent_gets_its_block_back_and_announces_it_again(dirs):
    server = FakeServer()
    server.put(POOL)
    d = dirs()
    first = await (await make_node(d, server)).run()
    block = first.blocks
    await first.stop()
    again = await (await make_node(d, server)).run()
    try:
        assert again.blocks == block and again.agent.speaker.announced == block and len(holders(server)) == 1
    finally:
        await again.stop()


async def test_static_pod_cidrs_are_claimed_and_a_collision_is_refused(dirs):
    server = FakeServer()
    server.put(POOL, N2, IPAMBlock(N("198.19.0.0/27"), "n2"))
    with pytest.raises(ConfigError, match=r"^<memory>: podCIDRs: podCIDRs 198.19.0.16/28 collides with block 198.19.0.0/27 "
                                          r"held by node n2; pick another block$"):
        await start_node(etcd_config(dirs(), pod_cidrs=[N("198.19.0.16/28")]), FakeDatastore(server), backoff_s=FAST)
    n = await (await make_node(dirs(), server, pod_cidrs=[N("198.19.0.64/28")])).run()
    try:
        assert n.blocks == (N("198.19.0.64/28"),) and holders(server)[N("198.19.0.64/28")] == "n1"
        assert n.agent.speaker.announced == (N("198.19.0.64/28"),)
    finally:
        await n.stop()


async def test_a_node_waits_for_a_block_while_the_pool_is_exhausted(dirs, caplog):
    server = FakeServer()
    one = N("198.19.0.0/28")
    server.put(IPPool("tiny", one, 28), N2, IPAMBlock(one, "n2"))
    joining = asyncio.create_task(start_node(etcd_config(dirs()), FakeDatastore(server), backoff_s=FAST))
    await until(lambda: logged(caplog, "pool exhausted"), T, "the exhausted pool logged")
    assert not joining.done()
    server.delete(block_key(one))
    start = await asyncio.wait_for(joining, T)
    assert start.blocks == (one,) and holders(server) == {one: "n1"}


# -- run time ------------------------------------------------------------------------------------

async def fill(n: Member, count: int, first: int = 0) -> list[IPv4Address]:
    return [await n.add(i) for i in range(first, first + count)]


async def test_a_full_node_fails_the_add_at_once_then_grows_and_announces_a_second_block(dirs):
    server = FakeServer()
    server.put(POOL)
    n = await (await make_node(dirs(), server, interval=3600)).run()
    try:
        (first,) = n.blocks
        await fill(n, 15)                                    # 16 addresses, one is the tunnel's
        with pytest.raises(CNIError) as ei:
            await asyncio.wait_for(n.add(15), 2)             # no waiting on the datastore
        assert ei.value.code == TRY_AGAIN_LATER and "claiming another block" in ei.value.msg
        await until(lambda: len(n.agent.ipam.blocks) == 2, T, "a second block in local IPAM")
        second = next(b for b in n.blocks if b != first)
        assert n.blocks[0] == first                          # the tunnel block stays first
        assert set(n.agent.speaker.announced) == {first, second}
        await until(lambda: n.blackholes() == {first, second}, T, "both blackholes")
        assert holders(server) == {first: "n1", second: "n1"}
        assert (await n.add(15)) in second                   # the runtime's retry
        assert n.agent.encap.tunnel_address == first.network_address
    finally:
        await n.stop()


async def test_max_blocks_per_host_and_an_exhausted_pool_are_named_in_the_add_error(dirs):
    server = FakeServer()
    server.put(POOL)
    n = await (await make_node(dirs(), server, interval=3600, max_blocks=1)).run()
    try:
        await fill(n, 15)
        with pytest.raises(CNIError):
            await n.add(15)
        await until(lambda: n.agent.blocks.nodeblocks.last_error, T, "the failed claim")
        with pytest.raises(CNIError, match=r"holds 1 blocks, its maxBlocksPerHost") as ei:
            await n.add(15)
        assert ei.value.code == TRY_AGAIN_LATER and n.agent.status()["datastore"]["claim_error"]
    finally:
        await n.stop()


async def test_an_empty_block_that_is_not_the_last_is_released_after_the_grace_period(dirs):
    server = FakeServer()
    server.put(POOL)
    n = await (await make_node(dirs(), server, interval=3600)).run()
    try:
        (first,) = n.blocks
        await fill(n, 15)
        with pytest.raises(CNIError):
            await n.add(15)
        await until(lambda: len(n.agent.ipam.blocks) == 2, T, "a second block")
        second = next(b for b in n.blocks if b != first)
        assert (await n.add(15)) in second
        n.agent.blocks.affinity.policy = BlockPolicy(max_blocks_per_host=0, grace_s=0.3)
        n.agent.blocks.nodeblocks.interval_s = 0.05
        n.agent.blocks.nodeblocks.wake()
        await asyncio.sleep(0.5)
        assert second in n.blocks                            # in use: kept
        for i in range(15):                                  # the tunnel block empties: kept too
            await n.delete(i)
        await n.delete(15)                                   # the second block empties
        await until(lambda: n.blocks == (first,), T, "the second block released")
        assert holders(server) == {first: "n1"}
        assert n.agent.speaker.announced == (first,) and n.agent.ipam.blocks == (first,)
        await until(lambda: n.blackholes() == {first}, T, "its blackhole removed")
        await asyncio.sleep(0.5)
        assert n.blocks == (first,)                          # the last block is never released
    finally:
        await n.stop()


async def test_a_departed_nodes_blocks_are_released_once_and_it_leaves_every_session(dirs):
    server = FakeServer()
    gone = N("198.19.0.128/28")
    server.put(POOL, N2, IPAMBlock(gone, "n2"))
    n1 = await (await make_node(dirs(), server, grace=1.0)).run()
    n3 = await (await make_node(dirs(), server, name="n3", ip=N3.address, grace=1.0)).run()
    try:
        for n in (n1, n3):
            await until(lambda: len(n.agent.cluster.cluster.nodes) == 3, T, "three nodes")
        assert n1.agent.speaker.hops[gone] == N2.address     # n1 saw n3 join: its topology was re-derived
        releases = server.calls.count("release_block")
        server.expire_lease("n2")
        for n in (n1, n3):
            await until(lambda: n.agent.speaker.peer_sets
                        and N2.address not in {p.address for p in n.agent.speaker.peer_sets[-1]}, T, "n2's session gone")
        await until(lambda: gone not in holders(server), T, "n2's block released")
        assert server.calls.count("release_block") - releases == 1      # by one survivor (n1, the lowest name)
        for n in (n1, n3):
            await until(lambda: gone not in getattr(n.agent.speaker, "hops", {gone: 0}), T,
                        "n2's block gone from the expected next hops")
        assert set(holders(server).values()) == {"n1", "n3"}
    finally:
        await n1.stop()
        await n3.stop()


async def test_an_outage_keeps_fib_sessions_and_state_and_the_agent_catches_up(dirs):
    server = FakeServer()
    server.put(POOL, N2, IPAMBlock(N("198.19.0.128/28"), "n2"))
    n = await (await make_node(dirs(), server)).run()
    try:
        await until(lambda: n.agent.cluster.revision == server.store.revision, T, "registered and seen")
        peer_sets, announced, fib = len(n.agent.speaker.peer_sets), n.agent.speaker.announced, dict(n.dp.ours())
        server.down()
        await until(lambda: n.agent.status()["datastore"]["state"] == "unavailable", T, "the outage seen")
        await asyncio.sleep(0.3)                             # several upkeep rounds and watch retries
        st = n.agent.status()
        assert st["datastore"]["available"] is False and st["datastore"]["since"] and st["task_failures"] == []
        assert "UNAVAILABLE since" in statusd.render(st)
        assert len(n.agent.speaker.peer_sets) == peer_sets and n.agent.speaker.announced == announced
        assert n.dp.ours() == fib and not n.agent.guard.failed.is_set()
        joining = asyncio.create_task(make_node(dirs(), server, name="n3", ip=N3.address))
        await asyncio.sleep(0.2)
        assert not joining.done()
        server.up()
        n3 = await (await asyncio.wait_for(joining, T)).run()
        try:
            await until(lambda: N3.address in {p.address for p in n.agent.speaker.peer_sets[-1]}, T, "n3 joined")
            assert n.agent.speaker.hops[n3.blocks[0]] == N3.address
            assert n.agent.status()["datastore"]["state"] == "connected"
        finally:
            await n3.stop()
    finally:
        await n.stop()


async def test_a_lapsed_registration_is_renewed(dirs):
    server = FakeServer()
    server.put(POOL)
    n = await (await make_node(dirs(), server)).run()
    try:
        await until(lambda: server.get("nodes/n1"), T, "the registration")
        server.expire_lease("n1")                            # e.g. a long outage
        await until(lambda: server.get("nodes/n1"), T, "registered again")
        assert server.leases["n1"] == 7.0
    finally:
        await n.stop()


def test_an_agent_on_a_claiming_store_needs_its_start(dirs):
    with pytest.raises(ValueError, match="claims blocks"):
        Agent(etcd_config(dirs()), dataplane=FakeDataplane(links=("eth0",)), wiring=SharedKernel(FakeDataplane()),
              speaker_factory=FakeSpeaker, start_monitor=False, ipip_dataplane=FakeIPIP(),
              datastore=FakeDatastore(FakeServer()))


async def test_bad_data_in_the_first_snapshot_is_logged_and_the_node_starts(dirs, caplog):
    server = FakeServer()
    server.put(POOL, N2)
    server.put_invalid("bgppeers/broken", "not a BGPPeer")
    n = await (await make_node(dirs(), server)).run()
    try:
        (rec,) = [r for r in caplog.records if "rejected" in r.getMessage()]
        assert rec.kv["key"] == "bgppeers/broken" and len(n.agent.cluster.cluster.nodes) == 2
    finally:
        await n.stop()


def test_a_block_change_elsewhere_re_derives_next_hops_but_leaves_the_sessions(dirs):
    from types import SimpleNamespace

    from podroute.datastore import cluster_from_resources
    from podroute.speaker_wiring import apply_cluster, peer_configs
    cfg = etcd_config(dirs())
    calls = []
    items = {"nodes/n1": Node("n1", NODE_IP), "nodes/n2": N2,
             block_key(N("198.19.0.0/28")): IPAMBlock(N("198.19.0.0/28"), "n2")}
    before = cluster_from_resources(items)
    speaker = SimpleNamespace(config=SimpleNamespace(peers=peer_configs(cfg, before)),
                              set_peers=lambda p: calls.append(("peers", p)),
                              set_expected_next_hops=lambda h: calls.append(("hops", dict(h))))
    grown = cluster_from_resources({**items, block_key(N("198.19.0.16/28")): IPAMBlock(N("198.19.0.16/28"), "n2")})
    apply_cluster(speaker, cfg, grown)
    assert calls == [("hops", {N("198.19.0.0/28"): N2.address, N("198.19.0.16/28"): N2.address})]
    apply_cluster(speaker, cfg, cluster_from_resources({**items, "nodes/n3": N3}))
    assert calls[-1][0] == "peers" and {p.address for p in calls[-1][1]} == {N2.address, N3.address}


async def test_a_node_waits_for_a_pool_even_with_static_blocks(dirs, caplog):
    server = FakeServer()
    joining = asyncio.create_task(start_node(etcd_config(dirs(), pod_cidrs=[N("198.19.0.64/28")]),
                                             FakeDatastore(server), backoff_s=FAST))
    await until(lambda: logged(caplog, "no IP pool"), T, "the missing pool logged")
    assert not joining.done() and not holders(server)          # nothing claimed without a pool
    server.put(POOL)
    start = await asyncio.wait_for(joining, T)
    assert start.blocks == (N("198.19.0.64/28"),) and start.pools == (ConfigPool(POOL.cidr, 28),)


async def test_a_block_outside_every_pool_and_an_overlapping_pool_are_refused_naming_their_keys(dirs, caplog):
    server = FakeServer()
    server.put(POOL, N2)
    n = await (await make_node(dirs(), server)).run()
    try:
        await until(lambda: n.agent.cluster.revision == server.store.revision, T, "registered and seen")
        blocks, hops = n.blocks, dict(getattr(n.agent.speaker, "hops", {}))
        outside = IPAMBlock(N("10.99.0.0/26"), "n1")          # affine to this very node
        server.put(outside, IPPool("overlap", N("198.19.0.0/17")))
        await until(lambda: n.agent.cluster.revision == server.store.revision, T, "the bad data seen")
        keys = {r.kv["key"] for r in caplog.records if "rejected" in r.getMessage()}
        assert {"ipamblocks/10-99-0-0-26", "ippools/overlap"} <= keys
        assert n.blocks == blocks and n.agent.speaker.announced == blocks
        assert N("10.99.0.0/26") not in n.dp.ours() and dict(getattr(n.agent.speaker, "hops", {})) == hops
        st = await start_node(etcd_config(dirs(), name="n4", ip=IPv4Address("198.18.0.14")), FakeDatastore(server),
                              backoff_s=FAST)
        assert st.pools == (ConfigPool(POOL.cidr, 28),)     # a new node does not take the overlapping pool
    finally:
        await n.stop()


async def test_a_static_block_outside_the_datastores_pools_is_refused(dirs):
    server = FakeServer()
    server.put(POOL)
    with pytest.raises(ConfigError, match=r"^<memory>: podCIDRs\[0\]: 10.99.0.0/28 is not inside any of the "
                                          r"datastore's IP pools \(198.19.0.0/24\)$"):
        await start_node(etcd_config(dirs(), pod_cidrs=[N("10.99.0.0/28")]), FakeDatastore(server), backoff_s=FAST)

"""Issue 17 item 6 on the real etcd: bad data written behind podroute's back (a malformed value, a
block outside every pool, overlapping pools) reaches the agent's consumers (ClusterWatch and the
BlockView that follows its stream) through EtcdDatastore, is rejected with a log line naming the key,
and the last good state stays in force; a fresh list (BlockAffinity.refresh at a restart, a Resync)
decides the same way."""
from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network

import pytest
from waiting import until

from etcdstoreutil import EtcdHarness
from podroute.clusterwatch import ClusterWatch
from podroute.datastore import BGPConfiguration, IPAMBlock, IPPool, Node
from podroute.ipamblocks import BlockAffinity, BlockView

N1 = Node("n1", IPv4Address("198.18.0.11"))
N2 = Node("n2", IPv4Address("198.18.0.12"))
N3 = Node("n3", IPv4Address("198.18.0.13"))
POOL = IPPool("p1", IPv4Network("198.19.0.0/16"))
B2 = IPAMBlock(IPv4Network("198.19.2.0/26"), "n2")


def rejected(caplog, key: str) -> list[str]:
    return [r.kv["error"] for r in caplog.records
            if "rejected" in r.getMessage() and getattr(r, "kv", {}).get("key") == key]


@pytest.fixture
async def watching(etcd_server):
    h = EtcdHarness(etcd_server)
    await h.seed(BGPConfiguration(), N1, N2, POOL, B2)
    got: list = []
    w = ClusterWatch(h.client(), node_name="n1", node_ip=N1.address, on_change=got.append, backoff_s=(0.05, 0.5))
    view = BlockView("n1")
    w.listeners.append(view.handle)
    task = asyncio.create_task(w.run())
    await until(lambda: got, 10, "the first topology")
    yield h, w, view, got
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await h.close()


async def test_malformed_value_is_rejected_naming_the_key_and_the_node_stays(watching, caplog):
    h, w, view, got = watching
    await h.put_raw("nodes/n2", '{"kind": "Node", "name": "n2", "address": "not-an-ip"}')
    await h.seed(N3)
    await until(lambda: len(got) == 2, 10, "n3 to be handed over")
    assert [(n.name, n.ip) for n in got[-1].nodes] == [("n1", N1.address), ("n2", N2.address), ("n3", N3.address)]
    assert got[-1].node("n2").pod_cidrs == (B2.cidr,)
    (err,) = rejected(caplog, "nodes/n2")
    assert "address" in err and "not-an-ip" in err


async def test_overlapping_pool_is_rejected_and_the_first_pool_stays(watching, caplog):
    h, w, view, got = watching
    await h.seed(IPPool("p2", IPv4Network("198.19.128.0/17"), block_size=28))
    await until(lambda: rejected(caplog, "ippools/p2"), 10, "the overlapping pool's rejection")
    assert "pool 198.19.128.0/17 overlaps pool 198.19.0.0/16 (ippools/p1)" in rejected(caplog, "ippools/p2")[0]
    assert view.pools() == (POOL,)
    # a later valid change still flows: the stream goes on past the bad value
    await h.seed(IPPool("p1", POOL.cidr, disabled=True))
    await until(lambda: view.pools()[0].disabled, 10, "p1's update")
    # a fresh list decides the same: the pool written first stays, the later one is rejected
    fresh = BlockAffinity(h.client(), "n1")
    await fresh.refresh()
    assert [p.name for p in fresh.pools()] == ["p1"] and fresh.pools()[0].disabled


async def test_block_outside_every_pool_is_rejected_and_the_nodes_blocks_stay(watching, caplog):
    h, w, view, got = watching
    await h.seed(IPAMBlock(IPv4Network("10.1.0.0/26"), "n2"))
    await until(lambda: rejected(caplog, "ipamblocks/10-1-0-0-26"), 10, "the stray block's rejection")
    assert "is outside every IP pool (198.19.0.0/16)" in rejected(caplog, "ipamblocks/10-1-0-0-26")[0]
    assert set(view.blocks()) == {B2.cidr}
    await h.seed(N3)
    await until(lambda: len(got) == 2, 10, "n3 to be handed over")
    assert got[-1].node("n2").pod_cidrs == (B2.cidr,)       # the stray block never became a route
    fresh = BlockAffinity(h.client(), "n1")
    await fresh.refresh()
    assert set(fresh.blocks()) == {B2.cidr}


async def test_a_value_gone_bad_keeps_its_last_good_value_through_a_resync(watching, caplog):
    h, w, view, got = watching
    await h.put_raw("ipamblocks/198-19-2-0-26", "garbage")
    await until(lambda: rejected(caplog, "ipamblocks/198-19-2-0-26"), 10, "the garbage's rejection")
    assert B2.cidr in view.blocks()
    await h.compact()
    resynced = await h.client().snapshot()           # what a compacted watch hands over as its Resync
    from podroute.datastore import Resync
    await w.handle(Resync(resynced))
    assert B2.cidr in view.blocks() and w.items["ipamblocks/198-19-2-0-26"] == B2

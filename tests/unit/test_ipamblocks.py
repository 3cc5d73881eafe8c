"""IPAM blocks with node affinity (podroute.ipamblocks) on the fake datastore."""
from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network

import pytest

from cni.errors import TRY_AGAIN_LATER
from podroute.datastore import Conflict, IPAMBlock, IPPool, Node, block_key, key_of
from podroute.datastore.fake import FakeDatastore, FakeServer
from podroute.ipamblocks import BlockAffinity, BlockCollision, BlockPolicy, PoolExhausted

N = IPv4Network
POOL16 = IPPool("p", N("198.19.0.0/24"), block_size=28)          # 16 blocks


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def node(i: int) -> Node:
    return Node(f"n{i:02d}", IPv4Address(f"198.18.0.{10 + i}"))


def affinity(server, name, **kw) -> BlockAffinity:
    got: list = []
    a = BlockAffinity(FakeDatastore(server), name, on_blocks=got.append, **kw)
    a.published = got
    return a


def holders(server) -> dict:
    return {s.value.cidr: s.value.affinity for s in server.store.items.values() if isinstance(s.value, IPAMBlock)}


async def test_twenty_claimers_sixteen_blocks_no_block_twice_and_losers_get_one_after_release():
    server = FakeServer()
    server.put(POOL16, *(node(i) for i in range(20)))
    claimers = [affinity(server, f"n{i:02d}") for i in range(20)]
    results = await asyncio.gather(*(c.ensure() for c in claimers), return_exceptions=True)
    winners = [c for c, r in zip(claimers, results) if not isinstance(r, BaseException)]
    losers = [c for c, r in zip(claimers, results) if isinstance(r, BaseException)]
    assert len(winners) == 16 and len(losers) == 4
    assert server.calls.count("claim_block") > 20          # claims really collided and moved on
    for c, r in zip(claimers, results):
        if isinstance(r, BaseException):
            assert isinstance(r, PoolExhausted) and r.code == TRY_AGAIN_LATER
            assert "pool exhausted" in r.msg and "198.19.0.0/24" in r.msg
    owned = holders(server)
    assert len(owned) == 16 and sorted(owned.values()) == sorted(c.node for c in winners)
    assert all(len(c.mine()) == 1 and owned[c.mine()[0]] == c.node and c.published[-1] == c.mine() for c in winners)
    # four winners leave; each loser then gets a block
    for w in winners[:4]:
        st = server.get(block_key(w.mine()[0]))
        await w.ds.release_block(st.value.cidr, st.revision)
    again = await asyncio.gather(*(c.ensure() for c in losers))
    assert all(len(b) == 1 for b in again)
    owned = holders(server)
    assert len(owned) == 16 and len(set(owned.values())) == 16


async def test_a_lost_claim_moves_to_the_next_free_block():
    server = FakeServer()
    server.put(POOL16, node(1))
    a = affinity(server, "n01")
    await a.refresh()
    first = next(a._candidates())
    server.put(IPAMBlock(first, "n09"))          # taken behind our view's back
    cidr = await a.grow()
    assert cidr != first and holders(server)[cidr] == "n01" and holders(server)[first] == "n09"


async def test_growth_up_to_max_blocks_per_host():
    server = FakeServer()
    server.put(POOL16, node(1))
    a = affinity(server, "n01", policy=BlockPolicy(max_blocks_per_host=3))
    assert len(await a.ensure()) == 1
    await a.grow()
    await a.grow()
    assert len(a.mine()) == 3 and a.published[-1] == a.mine()
    with pytest.raises(PoolExhausted, match="maxBlocksPerHost"):
        await a.grow()


async def test_disabled_pools_hand_out_nothing_and_pools_from_config_are_the_fallback():
    server = FakeServer()
    server.put(node(1))
    a = affinity(server, "n01", pools=(IPPool("cfg", N("198.19.5.0/26"), block_size=26),))
    assert await a.ensure() == (N("198.19.5.0/26"),)
    server.put(IPPool("p", N("198.19.0.0/24"), block_size=28, disabled=True))
    b = affinity(server, "n02")
    with pytest.raises(PoolExhausted, match=r"pool exhausted: no free block in the enabled IP pools \(none\)"):
        await b.ensure()


async def test_static_blocks_are_registered_and_a_colliding_one_is_refused():
    server = FakeServer()
    server.put(POOL16, node(1), node(2))
    a = affinity(server, "n01", static=(N("198.19.0.0/28"),))
    assert await a.ensure() == (N("198.19.0.0/28"),)
    assert await affinity(server, "n01", static=(N("198.19.0.0/28"),)).ensure() == (N("198.19.0.0/28"),)  # restart
    with pytest.raises(BlockCollision, match=r"198.19.0.0/28 collides with block 198.19.0.0/28 held by node n01"):
        await affinity(server, "n02", static=(N("198.19.0.0/28"),)).ensure()
    with pytest.raises(BlockCollision, match=r"198.19.0.0/27 collides with block 198.19.0.0/28 held by node n01"):
        await affinity(server, "n02", static=(N("198.19.0.0/27"),)).ensure()
    b = affinity(server, "n02", static=(N("198.19.0.16/28"),))
    # taken between our look and our claim: the store's compare says so
    server.fail_next("claim_block", Conflict(block_key(N("198.19.0.16/28")), "exists", "n01"))
    with pytest.raises(BlockCollision, match="198.19.0.16/28 is held by node n01"):
        await b.ensure()


async def test_an_empty_block_is_released_after_the_grace_period_but_never_the_last():
    server, clock = FakeServer(), Clock()
    server.put(POOL16, node(1))
    a = affinity(server, "n01", policy=BlockPolicy(grace_s=60), clock=clock)
    (first,) = await a.ensure()
    second = await a.grow()
    used = {first: 3, second: 0}
    assert await a.release_empty(used) == []                 # empty since now
    clock.t = 59
    assert await a.release_empty(used) == []
    clock.t = 61
    assert await a.release_empty(used) == [second]
    assert second not in holders(server) and a.mine() == (first,) and a.published[-1] == (first,)
    clock.t = 1000
    assert await a.release_empty({first: 0}) == []           # the last block stays
    clock.t = 2000
    assert await a.release_empty({first: 0}) == []


async def test_a_block_that_filled_again_is_not_released():
    server, clock = FakeServer(), Clock()
    server.put(POOL16, node(1))
    a = affinity(server, "n01", policy=BlockPolicy(grace_s=60), clock=clock)
    (first,) = await a.ensure()
    second = await a.grow()
    await a.release_empty({first: 1, second: 0})
    clock.t = 30
    await a.release_empty({first: 1, second: 2})             # used again: the clock restarts
    clock.t = 70
    assert await a.release_empty({first: 1, second: 0}) == []


async def test_blocks_of_a_departed_node_are_released_once_by_one_survivor():
    server, clock = FakeServer(), Clock()
    server.put(POOL16, node(1), node(2), node(3))
    nodes = {n: affinity(server, n, policy=BlockPolicy(grace_s=60), clock=clock) for n in ("n01", "n02", "n03")}
    for a in nodes.values():
        await a.ensure()
    gone = nodes["n03"].mine()
    await nodes["n03"].grow()
    gone = nodes["n03"].mine()
    assert len(gone) == 2
    server.expire_lease("n03")                               # its lease lapsed
    for a in nodes.values():
        await a.refresh()
    survivors = [nodes["n01"], nodes["n02"]]
    assert [await s.reap_departed() for s in survivors] == [[], []]  # within the grace period
    clock.t = 61
    released = await asyncio.gather(*(s.reap_departed() for s in survivors))
    assert released == [list(gone), []]                      # n01, the lowest name, did it
    assert not any(h == "n03" for h in holders(server).values())


async def test_two_reapers_racing_release_each_block_exactly_once():
    # Two survivors that both think they are the lowest live node (views that disagree while
    # membership changes): the compare on the block's revision lets one release win per block.
    server, clock = FakeServer(), Clock()
    server.put(POOL16, node(1), node(3))
    r1 = affinity(server, "n01", clock=clock, policy=BlockPolicy(grace_s=0))
    r2 = affinity(server, "n01", clock=clock, policy=BlockPolicy(grace_s=0))
    gone = affinity(server, "n03")
    await gone.ensure()
    await gone.grow()
    server.expire_lease("n03")
    await r1.refresh()
    await r2.refresh()
    got = await asyncio.gather(r1.reap_departed(), r2.reap_departed())
    released = [c for g in got for c in g]
    assert sorted(released) == sorted(gone.mine()) and len(set(released)) == len(released) == 2
    assert all(h != "n03" for h in holders(server).values())


async def test_unavailable_datastore_surfaces_and_the_next_try_succeeds():
    from podroute.datastore import Unavailable
    server = FakeServer()
    server.put(POOL16, node(1))
    a = affinity(server, "n01")
    server.down()
    with pytest.raises(Unavailable):
        await a.ensure()
    server.up()
    assert len(await a.ensure()) == 1


async def test_the_view_follows_watch_items():
    server = FakeServer()
    server.put(POOL16, node(1))
    a = affinity(server, "n01")
    snap = await a.ds.snapshot()
    a.load(snap)
    server.put(IPAMBlock(N("198.19.0.32/28"), "n01"))
    it = a.ds.watch(snap.revision).__aiter__()
    a.handle(await asyncio.wait_for(it.__anext__(), 5))
    assert a.mine() == (N("198.19.0.32/28"),) and a.published[-1] == a.mine()
    assert [(r.cidr, r.node, r.used) for r in a.rows({N("198.19.0.32/28"): 5})] == [(N("198.19.0.32/28"), "n01", 5)]
    await it.aclose()

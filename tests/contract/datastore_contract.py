"""The Datastore contract: behaviour every implementation of podroute.datastore.api.Datastore
must show. A test module binds it to an implementation by defining a ``harness`` fixture
(see :class:`Harness`) and importing the ``test_*`` functions; the etcd store runs the same
functions against a real etcd.
"""
from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Protocol

import pytest

from podroute.datastore import (BGPConfiguration, BGPPeer, Changes, Conflict, Datastore, Delete, IPAMBlock, Invalid,
                                Node, Put, Resync, Unavailable, Unsupported, key_of)
from podroute.datastore.model import block_key

N1 = Node("n1", IPv4Address("198.18.0.11"))
N2 = Node("n2", IPv4Address("198.18.0.12"))
B1 = IPAMBlock(IPv4Network("198.19.1.0/26"), "n1")
CFG = BGPConfiguration()


class Harness(Protocol):
    """The administrator's side of a store under test."""

    def client(self) -> Datastore: ...

    async def seed(self, *resources: Any) -> None: ...      # put (creating or replacing)

    async def remove(self, *resources: Any) -> None: ...

    async def corrupt(self, resource: Any) -> str: ...     # a malformed value; returns the key reported

    async def compact(self) -> None: ...

    # optional: cut the store off / bring it back (etcd: stop and start the server)
    # async def outage(self) -> None: ...
    # async def restore(self) -> None: ...


async def next_changes(it, want, timeout: float = 10.0) -> list:
    """Events from ``it`` until ``want(events)`` holds (bounded)."""
    got: list = []

    async def pump():
        async for item in it:
            got.append(item)
            if want(got):
                return

    await asyncio.wait_for(pump(), timeout)
    return got


def events(items) -> list:
    return [e for i in items if isinstance(i, Changes) for e in i.events]


async def test_snapshot_then_watch_sees_puts_and_deletes_in_order(harness):
    await harness.seed(CFG, N1)
    ds = harness.client()
    snap = await ds.snapshot()
    assert snap.items[key_of(N1)].value == N1 and snap.revision >= snap.items[key_of(N1)].revision
    it = ds.watch(snap.revision).__aiter__()
    await harness.seed(N2)
    got = await next_changes(it, lambda g: any(isinstance(e, Put) and e.stored.value == N2 for e in events(g)))
    await harness.remove(N2)
    got += await next_changes(it, lambda g: any(isinstance(e, Delete) and e.key == key_of(N2) for e in events(g)))
    revs = [c.revision for c in got if isinstance(c, Changes)]
    assert revs == sorted(revs) and revs[0] > snap.revision
    await it.aclose()
    await ds.close()


async def test_watch_from_a_compacted_revision_resyncs(harness):
    await harness.seed(CFG, N1)
    ds = harness.client()
    old = (await ds.snapshot()).revision
    await harness.seed(N2)
    await harness.remove(N1)
    await harness.compact()
    it = ds.watch(old).__aiter__()
    (first,) = await next_changes(it, lambda g: len(g) == 1)
    assert isinstance(first, Resync)
    assert key_of(N2) in first.snapshot.items and key_of(N1) not in first.snapshot.items
    await it.aclose()
    await ds.close()


async def test_bad_data_is_an_invalid_event_naming_the_key_and_the_rest_stays(harness):
    await harness.seed(CFG, N1, N2)
    ds = harness.client()
    snap = await ds.snapshot()
    it = ds.watch(snap.revision).__aiter__()
    key = await harness.corrupt(N2)
    got = await next_changes(it, lambda g: any(isinstance(e, Invalid) for e in events(g)))
    (bad,) = [e for e in events(got) if isinstance(e, Invalid)]
    assert bad.error.key == key
    assert not any(isinstance(e, Delete) and e.key == key_of(N1) for e in events(got))
    await it.aclose()
    await ds.close()


async def test_block_claim_is_exclusive_and_idempotent_for_its_holder(harness):
    await harness.seed(CFG, N1, N2)
    a, b = harness.client(), harness.client()
    if not a.supports_claims:
        with pytest.raises(Unsupported, match="cannot claim"):
            await a.claim_block(IPAMBlock(IPv4Network("198.19.9.0/26"), "n1"))
        return
    won = await a.claim_block(B1)
    assert won.value == B1 and won.key == block_key(B1.cidr)
    assert (await a.claim_block(B1)).revision == won.revision          # a restart re-claims its own
    with pytest.raises(Conflict) as ei:
        await b.claim_block(IPAMBlock(B1.cidr, "n2"))
    assert ei.value.holder == "n1" and ei.value.key == block_key(B1.cidr)
    await a.close()
    await b.close()


async def test_block_release_compares_on_the_revision(harness):
    await harness.seed(CFG, N1)
    ds = harness.client()
    if not ds.supports_claims:
        with pytest.raises(Unsupported):
            await ds.release_block(B1.cidr, 1)
        return
    won = await ds.claim_block(B1)
    with pytest.raises(Conflict):
        await ds.release_block(B1.cidr, won.revision - 1)
    await ds.release_block(B1.cidr, won.revision)
    with pytest.raises(Conflict):                                      # already gone: the loser of two releasers
        await ds.release_block(B1.cidr, won.revision)
    assert block_key(B1.cidr) not in (await ds.snapshot()).items
    await ds.close()


async def test_register_node_is_visible_to_others(harness):
    await harness.seed(CFG, N1)
    ds = harness.client()
    st = await ds.register_node(N1, ttl_s=10)
    assert st.value == N1
    assert (await harness.client().snapshot()).items[key_of(N1)].value == N1
    await ds.close()


async def test_peers_round_trip(harness):
    peer = BGPPeer("global-198.18.0.1", IPv4Address("198.18.0.1"), 65000, hold_time=30)
    await harness.seed(CFG, N1, peer)
    snap = await harness.client().snapshot()
    assert snap.items[key_of(peer)].value == peer


async def test_a_broken_watch_raises_unavailable_and_a_rewatch_catches_up(harness):
    if not hasattr(harness, "outage"):
        pytest.skip("this harness cannot cut its store off")
    await harness.seed(CFG, N1)
    ds = harness.client()
    snap = await ds.snapshot()
    it = ds.watch(snap.revision).__aiter__()
    await harness.outage()
    with pytest.raises(Unavailable):
        await asyncio.wait_for(it.__anext__(), 30)
    with pytest.raises(Unavailable):
        await ds.snapshot()
    await harness.restore()
    await harness.seed(N2)
    it = ds.watch(snap.revision).__aiter__()
    await next_changes(it, lambda g: any(isinstance(e, Put) and e.stored.value == N2 for e in events(g))
                       or any(isinstance(i, Resync) and key_of(N2) in i.snapshot.items for i in g))
    await it.aclose()
    await ds.close()

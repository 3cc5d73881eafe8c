"""Issue 17, must-show 2, on a real etcd (Debian's etcd-server, the ``etcd_server`` fixture): 20
claimers start at once against a pool of 16 blocks. Each is a node as the agent runs it: its own
EtcdDatastore connection, its registration under a lease, its own BlockAffinity claiming through
``ensure()``. A separate watcher checks every watch event, not only the end state: no block is ever
held by two nodes and no two held blocks overlap. The 4 losers fail with PoolExhausted ("pool
exhausted", CNI code 11), and each gets a block once blocks are released. Bounded: ~60 s at most,
a few seconds normally."""
from __future__ import annotations

import asyncio
import base64
import json
import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from cni.errors import TRY_AGAIN_LATER
from etcdstoreutil import EtcdHarness
from podroute.datastore import BGPConfiguration, Changes, Conflict, Delete, IPAMBlock, IPPool, Invalid, Node, Put
from podroute.datastore.model import Stored, block_key
from podroute.ipamblocks import BlockAffinity, PoolExhausted

pytestmark = pytest.mark.e2e

POOL = IPPool("race", IPv4Network("198.19.0.0/24"), block_size=28)      # 16 blocks of 16 addresses
CLAIMERS = 20
BOUND_S = 60.0


class Referee:
    """Follows the prefix's watch from before the race and checks every event as it arrives."""

    def __init__(self, store, revision: int) -> None:
        self.store, self.revision = store, revision
        self.held: dict[str, IPAMBlock] = {}          # key -> block, as the events say
        self.violations: list[str] = []
        self.puts = 0

    def check(self, item) -> None:
        assert isinstance(item, Changes), f"unexpected {item!r} (no compaction in this test)"
        for ev in item.events:
            if isinstance(ev, Invalid):
                self.violations.append(f"invalid value at {ev.error.key}: {ev.error.reason}")
            elif isinstance(ev, Delete):
                self.held.pop(ev.key, None)
            elif isinstance(ev, Put) and isinstance(ev.stored.value, IPAMBlock):
                b = ev.stored.value
                self.puts += 1
                old = self.held.get(ev.stored.key)
                if old is not None and old.affinity != b.affinity:
                    self.violations.append(f"rev {ev.stored.revision}: {b.cidr} taken by {b.affinity} "
                                           f"while held by {old.affinity}")
                for k, other in self.held.items():
                    if k != ev.stored.key and other.cidr.overlaps(b.cidr):
                        self.violations.append(f"rev {ev.stored.revision}: {b.cidr} ({b.affinity}) overlaps "
                                               f"{other.cidr} ({other.affinity})")
                self.held[ev.stored.key] = b
            self.revision = item.revision

    async def run(self) -> None:
        async for item in self.store.watch(self.revision):
            self.check(item)

    def owners(self) -> dict[IPv4Network, str]:
        return {b.cidr: b.affinity for b in self.held.values()}


class Counting:
    """Counts the Conflicts a claimer's store answered (how often claims really collided)."""

    def __init__(self, store) -> None:
        self.store, self.conflicts = store, 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    async def claim_block(self, block):
        try:
            return await self.store.claim_block(block)
        except Conflict:
            self.conflicts += 1
            raise


async def _release(h: EtcdHarness, node: BlockAffinity) -> IPv4Network:
    """``node`` gives its block back (a compare-on-revision delete, as an emptied block is released)."""
    (cidr,) = node.mine()
    st = node.view[block_key(cidr)]
    await node.ds.release_block(cidr, st.revision)
    return cidr


async def test_twenty_claimers_sixteen_blocks_on_etcd(etcd_server):
    t0 = time.monotonic()
    h = EtcdHarness(etcd_server)
    await h.seed(BGPConfiguration(), POOL)
    names = [f"n{i:02d}" for i in range(CLAIMERS)]
    stores = [Counting(h.client()) for _ in names]
    referee_store = h.client()
    referee = Referee(referee_store, (await referee_store.snapshot()).revision)
    watching = asyncio.create_task(referee.run())
    try:
        # Every node connects and registers under its lease first, so the claims start together.
        for i, (name, ds) in enumerate(zip(names, stores)):
            await ds.register_node(Node(name, IPv4Address(f"198.18.0.{10 + i}")), ttl_s=30)
        nodes = [BlockAffinity(ds, name) for name, ds in zip(names, stores)]
        go = asyncio.Event()

        async def start(node: BlockAffinity):
            await go.wait()
            return await node.ensure()

        tasks = [asyncio.create_task(start(n)) for n in nodes]
        await asyncio.sleep(0)
        go.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), BOUND_S / 2)

        winners = [n for n, r in zip(nodes, results) if not isinstance(r, BaseException)]
        losers = [n for n, r in zip(nodes, results) if isinstance(r, BaseException)]
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, PoolExhausted):
                raise r
        assert (len(winners), len(losers)) == (16, 4)
        for r in results:
            if isinstance(r, PoolExhausted):
                assert r.code == TRY_AGAIN_LATER
                assert r.msg.startswith("pool exhausted: no free block in the enabled IP pools (198.19.0.0/24)")
        assert all(len(n.mine()) == 1 for n in winners) and not any(n.mine() for n in losers)
        # etcd itself (read by etcdctl, an independent client) holds each block once, for its winner
        out = await asyncio.to_thread(etcd_server.etcdctl, "get", "--prefix", h.prefix + "ipamblocks/", "-w", "json")
        in_etcd = {json.loads(base64.b64decode(kv["value"]))["cidr"]: json.loads(base64.b64decode(kv["value"]))
                   ["affinity"] for kv in json.loads(out)["kvs"]}
        assert in_etcd == {str(n.mine()[0]): f"host:{n.node}" for n in winners}

        # Blocks come back two at a time; after each release the losers retry (as NodeBlocks' tick
        # does) and exactly as many of them win as blocks were released.
        waiting = list(losers)
        for leaving in (winners[:2], winners[2:4]):
            for w in leaving:
                await _release(h, w)
            retried = await asyncio.gather(*(n.ensure() for n in waiting), return_exceptions=True)
            won = [n for n, r in zip(waiting, retried) if not isinstance(r, BaseException)]
            assert len(won) == len(leaving), retried
            assert all(isinstance(r, PoolExhausted) for r in retried if isinstance(r, BaseException))
            waiting = [n for n in waiting if n not in won]
        assert not waiting and all(len(n.mine()) == 1 for n in losers)

        # The referee has seen everything up to now; not once was a block held twice.
        final = (await h.admin.snapshot()).revision
        deadline = time.monotonic() + 10
        while referee.revision < final and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert referee.revision >= final
        assert referee.violations == []
        holders = [*winners[4:], *losers]
        assert referee.owners() == {n.mine()[0]: n.node for n in holders}
        assert referee.puts == 16 + 4                 # every successful claim was one Put, no more
        took = time.monotonic() - t0
        print(f"\nrace on etcd: {sum(s.conflicts for s in stores)} conflicting claims, "
              f"{referee.puts} block puts checked, {took:.1f} s")
        assert took < BOUND_S
        # the referee does catch a block held twice (a Put for another node without a Delete)
        cidr = holders[0].mine()[0]
        referee.check(Changes(final + 1, (Put(Stored(block_key(cidr), IPAMBlock(cidr, "intruder"), final + 1)),)))
        assert referee.violations and "taken by intruder while held by" in referee.violations[0]
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await h.close()

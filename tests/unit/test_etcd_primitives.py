"""podroute.etcd against a real etcd on loopback (tests/etcdutil.py): reads with revisions, the
compare-and-swap writes, leases, watches in order from a revision, and the block-claim race at the
primitive level. etcd is never mocked here; etcdctl is used as an independent reader and to compact."""
from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from podroute.etcd import (EtcdClient, EtcdConflict, EtcdLeaseNotFound, KeyLayout, LeaseKeeper,
                           watch_prefix)
from waiting import until


@pytest.fixture
def prefix() -> str:
    return f"/t-{uuid.uuid4().hex[:10]}/"


@pytest.fixture
async def client(etcd_server):
    c = EtcdClient(etcd_server.host, etcd_server.client_port, timeout_s=3.0)
    yield c
    await c.close()


async def absent(client: EtcdClient, key: str) -> bool:
    return await client.get(key) is None


async def eventually(check, timeout: float, what: str) -> None:
    """Await ``check()`` every 50 ms until it is true; AssertionError naming ``what`` after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.05)


def etcdctl_json(etcd_server, *args: str) -> dict:
    return json.loads(etcd_server.etcdctl(*args, "-w", "json"))


async def test_get_prefix_gives_items_sorted_with_revisions(client, prefix, etcd_server):
    r_b = await client.create(prefix + "b", b'{"n": 2}')
    r_a = await client.create(prefix + "a", b'{"n": 1}')
    await client.create(prefix[:-1] + "x/outside", b"{}")   # same leading characters, other prefix
    listing = await client.get_prefix(prefix)
    assert [(kv.key, kv.value, kv.mod_revision, kv.version) for kv in listing.items] == [
        (prefix + "a", b'{"n": 1}', r_a, 1), (prefix + "b", b'{"n": 2}', r_b, 1)]
    assert listing.revision >= r_a > r_b
    assert listing.items[0].json() == {"n": 1}
    # etcdctl, an independent client, sees the same keys and revisions.
    got = etcdctl_json(etcd_server, "get", "--prefix", prefix)
    assert sorted(kv["mod_revision"] for kv in got["kvs"]) == [r_b, r_a]
    empty = await client.get_prefix(prefix + "none/")
    assert empty.items == () and empty.revision >= listing.revision


async def test_create_conflicts_when_the_key_exists_and_names_the_holder(client, prefix):
    key = prefix + "ipamblocks/10-244-0-0-26"
    rev = await client.create(key, b'{"affinity": "host:n1"}')
    with pytest.raises(EtcdConflict) as ei:
        await client.create(key, b'{"affinity": "host:n2"}')
    assert ei.value.current is not None and ei.value.current.json() == {"affinity": "host:n1"}
    assert ei.value.current.mod_revision == rev and ei.value.key == key
    kv = await client.get(key)
    assert kv.value == b'{"affinity": "host:n1"}' and kv.version == 1


async def test_update_and_delete_compare_the_mod_revision(client, prefix):
    key = prefix + "ippools/default"
    rev1 = await client.create(key, b'{"v": 1}')
    rev2 = await client.update(key, b'{"v": 2}', rev1)
    assert rev2 > rev1
    with pytest.raises(EtcdConflict) as ei:          # a writer that read rev1 has lost
        await client.update(key, b'{"v": "stale"}', rev1)
    assert ei.value.current.mod_revision == rev2 and ei.value.current.json() == {"v": 2}
    with pytest.raises(EtcdConflict):
        await client.delete(key, rev1)
    assert (await client.get(key)).json() == {"v": 2}
    assert await client.delete(key, rev2) is True
    assert await client.get(key) is None
    with pytest.raises(EtcdConflict) as ei:          # gone: nothing to compare with
        await client.update(key, b"{}", rev2)
    assert ei.value.current is None
    assert await client.delete(key) is False          # unconditional delete is idempotent


async def test_lease_expiry_removes_the_key(client, prefix):
    lease = await client.grant_lease(1)
    assert lease.ttl_s >= 1
    key = prefix + "nodes/n1"
    await client.create(key, b'{"name": "n1"}', lease=lease)
    assert (await client.get(key)).lease == lease.id
    # Nobody renews it: etcd deletes the key once the TTL has run out.
    await eventually(lambda: absent(client, key), 10, "etcd to expire the lease and delete the key")
    with pytest.raises(EtcdLeaseNotFound):
        await client.keepalive_once(lease)
    with pytest.raises(EtcdLeaseNotFound):
        await client.create(key, b"{}", lease=lease)
    assert await client.revoke(lease) is False


async def test_lease_keeper_holds_the_key_and_reports_loss(client, prefix, etcd_server):
    lease = await client.grant_lease(1)
    key = prefix + "nodes/n1"
    await client.create(key, b"{}", lease=lease)
    losses = []
    keeper = LeaseKeeper(client, lease, on_lost=lambda l, why: losses.append((l.id, why))).start()
    try:
        # Three TTLs pass: without the keeper the key would be gone (previous test).
        t0 = asyncio.get_running_loop().time()
        await until(lambda: asyncio.get_running_loop().time() - t0 > 3 * max(lease.ttl_s, 1), 10, "three TTLs",
                    step=0.1)
        assert (await client.get(key)) is not None and keeper.renewing and not keeper.lost.is_set()
        # Someone else revokes it: the keeper learns from etcd, reports once, and stops.
        etcd_server.etcdctl("lease", "revoke", f"{lease.id:x}")
        await asyncio.wait_for(keeper.lost.wait(), 10)
        assert len(losses) == 1 and losses[0][0] == lease.id and "expired or was revoked" in losses[0][1]
        assert await client.get(key) is None
    finally:
        await keeper.stop()


async def _collect(it, n: int, timeout: float) -> list:
    out = []
    async def run():
        async for ev in it:
            out.append(ev)
            if len(out) == n:
                return
    await asyncio.wait_for(run(), timeout)
    return out


async def test_watch_yields_puts_and_deletes_in_order_from_a_revision(client, prefix):
    listing = await client.get_prefix(prefix)
    r1 = await client.create(prefix + "a", b"1")
    r2 = await client.update(prefix + "a", b"2", r1)
    r3 = await client.create(prefix + "b", b"3")
    await client.delete(prefix + "a", r2)
    await client.create(prefix[:-1] + "other", b"x")   # outside the prefix: not seen
    it = watch_prefix(client, prefix, listing.revision + 1)
    evs = await _collect(it, 4, 10)
    await it.aclose()
    assert [(e.kind, e.key[len(prefix):], e.value) for e in evs] == [
        ("put", "a", b"1"), ("put", "a", b"2"), ("put", "b", b"3"), ("delete", "a", b"")]
    assert [e.mod_revision for e in evs][:3] == [r1, r2, r3]
    assert evs[3].mod_revision > r3
    # From a later revision only the later events.
    it = watch_prefix(client, prefix, r3)
    evs = await _collect(it, 2, 10)
    await it.aclose()
    assert [(e.kind, e.key[len(prefix):]) for e in evs] == [("put", "b"), ("delete", "a")]


def test_key_layout_names_and_round_trips():
    import ipaddress

    from podroute.datastore.model import IPPool, key_of
    from podroute.etcd import block_name, parse_block_name

    k = KeyLayout()
    assert k.node("n1") == "/podroute/nodes/n1"
    assert k.block(ipaddress.ip_network("10.244.1.0/26")) == "/podroute/ipamblocks/10-244-1-0-26"
    assert k.bgpconfig() == "/podroute/bgpconfigurations/default"
    assert k.split("/podroute/ipamblocks/10-244-1-0-26") == ("ipamblocks/", "10-244-1-0-26")
    # one mapping: the etcd key is the prefix plus the model's key
    pool = IPPool("p1", ipaddress.ip_network("10.244.0.0/16"))
    assert k.key(key_of(pool)) == k.pool("p1") == "/podroute/ippools/p1"
    assert k.relative("/podroute/ippools/p1") == key_of(pool)
    for net in ("10.244.1.0/26", "0.0.0.0/0", "198.19.255.240/28"):
        n = ipaddress.ip_network(net)
        assert parse_block_name(block_name(n)) == n
    assert KeyLayout("/cluster-a/").pool("default") == "/cluster-a/ippools/default"
    for bad in ("", "N1", "a/b", "-x", "x" * 254):
        with pytest.raises(ValueError, match="bad node name"):
            k.node(bad)
    for bad in ("10-244-1-1-26", "10-244-1-0", "10-244-1-0-33", "x-1", "10.244.1.0-26"):
        with pytest.raises(ValueError, match="bad block name"):
            parse_block_name(bad)
    for bad in ("podroute/", "/podroute", "//", "/a//b/"):
        with pytest.raises(ValueError, match="bad etcd key prefix"):
            KeyLayout(bad)
    for bad in ("/podroute/nodes/", "/podroute/unknown/x", "/other/nodes/n1", "/podroute/nodes/a/b",
                "/podroute/ipam/blocks/10.244.1.0-26"):
        with pytest.raises(ValueError, match="not in podroute's layout"):
            k.split(bad)


async def test_compacted_start_revision_raises_then_relist_and_watch_work(client, prefix, etcd_server):
    from podroute.etcd import EtcdCompacted

    r1 = await client.create(prefix + "a", b"1")
    r2 = await client.update(prefix + "a", b"2", r1)
    r3 = await client.create(prefix + "b", b"3")
    etcd_server.etcdctl("compact", str(r3))           # history before r3 is gone
    it = watch_prefix(client, prefix, r1)
    with pytest.raises(EtcdCompacted) as ei:
        await asyncio.wait_for(it.__anext__(), 10)
    assert ei.value.compact_revision >= r3 > r2
    # The caller's recovery: list again, then watch from the listing's revision + 1.
    listing = await client.get_prefix(prefix)
    assert {kv.key[len(prefix):]: kv.value for kv in listing.items} == {"a": b"2", "b": b"3"}
    it = watch_prefix(client, prefix, listing.revision + 1)
    r4 = await client.create(prefix + "c", b"4")
    evs = await _collect(it, 1, 10)
    await it.aclose()
    assert [(e.kind, e.key[len(prefix):], e.mod_revision) for e in evs] == [("put", "c", r4)]


async def test_twenty_claimers_sixteen_blocks_no_block_held_twice(etcd_server, prefix):
    """Issue 17's race at the primitive level: 20 nodes claim from 16 blocks at once, each walking the
    blocks in the same order (the worst case: all collide on every block). create() is the claim."""
    import ipaddress

    layout = KeyLayout(prefix)
    pool = ipaddress.ip_network("10.244.0.0/22")
    blocks = [layout.block(b) for b in pool.subnets(new_prefix=26)]
    assert len(blocks) == 16
    clients = [EtcdClient(etcd_server.host, etcd_server.client_port, timeout_s=5.0) for _ in range(20)]
    start = asyncio.Event()

    async def claim(i: int, c: EtcdClient) -> str | None:
        me = json.dumps({"affinity": f"host:n{i}"}).encode()
        await start.wait()
        for key in blocks:
            try:
                await c.create(key, me)
                return key
            except EtcdConflict as e:
                assert e.current is not None and e.current.value != me
        return None

    try:
        for c in clients:                              # connect first, so the claims start together
            await c.get_prefix(prefix)
        tasks = [asyncio.create_task(claim(i, c)) for i, c in enumerate(clients)]
        await asyncio.sleep(0)
        start.set()
        won = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        for c in clients:
            await c.close()
    winners = {f"host:n{i}": k for i, k in enumerate(won) if k is not None}
    assert len(winners) == 16 and sum(k is None for k in won) == 4
    assert sorted(winners.values()) == sorted(blocks)      # each block won exactly once
    # etcd itself (read by etcdctl) holds each block for exactly the claimer that won it, once.
    got = etcdctl_json(etcd_server, "get", "--prefix", layout.collection("ipamblocks/"))
    import base64
    held = {base64.b64decode(kv["key"]).decode(): json.loads(base64.b64decode(kv["value"]))["affinity"]
            for kv in got["kvs"]}
    assert held == {k: a for a, k in winners.items()}
    assert all(kv["version"] == 1 for kv in got["kvs"])    # never overwritten


async def test_bad_arguments_are_refused_before_reaching_etcd(client, prefix):
    from podroute.etcd import KeyValue

    with pytest.raises(ValueError, match="timeout_s"):
        EtcdClient(timeout_s=0)
    with pytest.raises(ValueError, match="lease TTL"):
        await client.grant_lease(0)
    with pytest.raises(ValueError, match="empty prefix"):
        await client.get_prefix("")
    with pytest.raises(ValueError, match="mod_revision must be > 0"):
        await client.update(prefix + "a", b"{}", 0)
    with pytest.raises(ValueError, match="start_revision"):
        await watch_prefix(client, prefix, 0).__anext__()
    with pytest.raises(ValueError, match=r"etcd key '/podroute/ippools/p1': value is not JSON"):
        KeyValue("/podroute/ippools/p1", b"{not json", 1, 1, 1).json()
    assert (await client.get_prefix(prefix)).items == ()   # nothing was written, the client still works


async def test_a_cancellation_arriving_as_a_call_completes_is_not_lost():
    """CPython 3.11's wait_for drops a cancellation that arrives in the loop iteration in which the
    wrapped call completes (gh-86296). Found as a LeaseKeeper whose stop() hung: the keeper's renewal
    returned, the cancel was lost, and it slept and renewed on. The call must end cancelled."""
    c = EtcdClient("127.0.0.1", 1, timeout_s=1.0)        # no I/O: the op below is ours
    reply: asyncio.Future = asyncio.get_running_loop().create_future()

    async def op():
        return await reply

    t = asyncio.create_task(c._call("test", op))
    await asyncio.sleep(0)                    # t waits inside wait_for on op's task
    reply.set_result("done")
    await asyncio.sleep(0)                    # op's task completes; t is not resumed yet
    t.cancel()                                # the cancellation lands as the call has completed
    with pytest.raises(asyncio.CancelledError):
        await t
    await c.close()

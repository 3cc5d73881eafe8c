"""podroute.etcd while the real etcd is stopped and restarted (by PID, tests/etcdutil.py): calls fail
with EtcdUnavailable within their deadline, a watch bridges a short restart without losing or repeating
events, a lease kept alive survives it, and a watch gives up after its bound when etcd stays away.
This module has its own etcd (module-scoped fixture), so stopping it disturbs no other test."""
from __future__ import annotations

import asyncio
import uuid

import pytest

from podroute.etcd import EtcdClient, EtcdUnavailable, LeaseKeeper, Reconnect, watch_prefix
from waiting import until

CALL_TIMEOUT_S = 2.0


@pytest.fixture
def prefix() -> str:
    return f"/t-{uuid.uuid4().hex[:10]}/"


@pytest.fixture
async def client(etcd_server):
    c = EtcdClient(etcd_server.host, etcd_server.client_port, timeout_s=CALL_TIMEOUT_S)
    yield c
    await c.close()
    if not etcd_server.running():     # leave the module's etcd up for the next test
        etcd_server.start()


async def test_calls_fail_with_unavailable_while_etcd_is_down(client, prefix, etcd_server):
    await client.create(prefix + "a", b"1")
    etcd_server.stop()
    # Bounded: each call has a deadline of CALL_TIMEOUT_S (+1 s for connect); the outer wait_for only
    # turns a hang into a test failure instead of a stuck suite.
    for call in (lambda: client.get(prefix + "a"), lambda: client.get_prefix(prefix),
                 lambda: client.create(prefix + "b", b"2"), lambda: client.grant_lease(5)):
        with pytest.raises(EtcdUnavailable):
            await asyncio.wait_for(call(), 3 * CALL_TIMEOUT_S)
    etcd_server.start()
    kv = await _when_up(lambda: client.get(prefix + "a"))
    assert kv.value == b"1"                           # the data survived the restart
    assert await client.get(prefix + "b") is None     # the failed create did not happen


async def _when_up(call, timeout: float = 15.0):
    """``await call()`` until it stops raising EtcdUnavailable (etcd coming back); bounded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await call()
        except EtcdUnavailable:
            assert loop.time() < deadline, f"etcd not reachable again within {timeout} s"
            await asyncio.sleep(0.1)


async def test_watch_and_lease_survive_an_etcd_restart(client, prefix, etcd_server):
    lease = await client.grant_lease(2)
    node_key = prefix + "nodes/n1"
    await client.create(node_key, b"{}", lease=lease)
    keeper = LeaseKeeper(client, lease).start()
    start = (await client.get_prefix(prefix)).revision + 1
    seen = []

    async def consume():
        async for ev in watch_prefix(client, prefix, start, Reconnect(first_s=0.1, max_s=0.5, give_up_after_s=20)):
            seen.append((ev.kind, ev.key[len(prefix):], ev.value))

    task = asyncio.create_task(consume())
    try:
        await client.create(prefix + "before", b"1")
        await until(lambda: len(seen) == 1, 10, "the event before the outage")
        etcd_server.stop()
        await until(lambda: not keeper.renewing, 10, "the keeper to notice the outage")
        etcd_server.start()
        await _when_up(lambda: client.create(prefix + "after", b"2"))
        await until(lambda: any(k == "after" for _, k, _ in seen), 15, "the watch to resume after the restart")
        assert seen == [("put", "before", b"1"), ("put", "after", b"2")]   # nothing lost or repeated
        await until(lambda: keeper.renewing, 10, "the keeper to renew again")
        assert not keeper.lost.is_set()
        # etcd extends leases when it becomes leader again: the node's key outlived the outage.
        kv = await client.get(node_key)
        assert kv is not None and kv.lease == lease.id
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await keeper.stop()
        await client.revoke(lease)


async def test_watch_gives_up_when_etcd_stays_away(client, prefix, etcd_server):
    start = (await client.get_prefix(prefix)).revision + 1
    it = watch_prefix(client, prefix, start, Reconnect(first_s=0.1, max_s=0.3, give_up_after_s=1.0))
    first = asyncio.ensure_future(it.__anext__())
    await client.create(prefix + "a", b"1")
    assert (await asyncio.wait_for(first, 10)).key == prefix + "a"
    etcd_server.stop()
    with pytest.raises(EtcdUnavailable, match="unreachable for"):
        await asyncio.wait_for(it.__anext__(), 15)
    await it.aclose()

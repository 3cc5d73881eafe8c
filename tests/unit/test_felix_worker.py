import asyncio
import logging
import threading
from ipaddress import IPv4Network

import pytest
from waiting import wait_until

from felix import worker as W
from felix.fake import FakeDataplane
from felix.routes import Route, dst_key
from felix.routetable import RouteTable
from felix.worker import RouteTableWorker


def N(s):
    return IPv4Network(s)


def nets(count):
    return [IPv4Network((0xC6130000 + i * 64, 26)) for i in range(count)]


@pytest.fixture
def dp():
    return FakeDataplane(links=("eth0", "d0"))


@pytest.fixture
async def wk(dp):
    w = RouteTableWorker(RouteTable(dp))
    yield w
    dp.unblock()
    w.stop()
    assert await asyncio.to_thread(w.join, 10)


def test_before_start_setters_are_direct(dp):
    w = RouteTableWorker(RouteTable(dp))
    w.set_routes("blocks", [Route.blackhole("198.19.1.0/26")])
    w.set_route("bgp", Route.via("198.19.2.0/26", "198.18.0.2", "eth0"))
    assert set(w.desired()) == {N("198.19.1.0/26"), N("198.19.2.0/26")}
    w.remove_route("bgp", "198.19.2.0/26")
    assert set(w.desired()) == {N("198.19.1.0/26")} and len(w.owned("blocks")) == 1
    assert w.table == 254 and w.protocol == 90 and not w.started


async def test_apply_requires_start(wk):
    with pytest.raises(RuntimeError, match="not started"):
        await wk.apply()


async def test_queued_setters_run_in_call_order_before_the_apply(wk, dp):
    wk.start()
    a, b = N("198.19.2.0/26"), N("198.19.3.0/26")
    wk.set_route("bgp", Route.via(a, "198.18.0.2", "eth0"))
    wk.set_route("bgp", Route.via(b, "198.18.0.2", "eth0"), dst_key(b))
    wk.remove_key("bgp", dst_key(a))
    wk.set_route("bgp", Route.via(a, "198.18.0.3", "eth0"))   # re-added with another gateway
    wk.remove_route("bgp", b)
    wk.set_routes("blocks", [Route.blackhole("198.19.1.0/26")])
    assert len(wk.desired()) == 0  # not taken in yet: the thread has them only once handed over
    res = await wk.apply()
    assert res.errors == () and res.added == 2
    assert {d: str(r.gateway) for d, r in dp.ours().items()} == {a: "198.18.0.3", N("198.19.1.0/26"): "None"}
    assert wk.stats()["applies"] == 1 and wk.stats()["queued_ops"] == 0


async def test_mark_dirty_is_ordered_with_the_applies(wk, dp):
    wk.start()
    wk.set_route("bgp", Route.via("198.19.2.0/26", "198.18.0.2", "eth0"))
    await wk.apply()
    dp.delete_by_hand("198.19.2.0/26")
    assert (await wk.apply()).changes == 0  # not dirty: the cache is trusted
    wk.mark_dirty()
    res = await wk.apply()
    assert res.full_sync and res.added == 1 and N("198.19.2.0/26") in dp.ours()


async def test_large_batches_are_handed_over_before_the_apply(wk, dp, monkeypatch):
    monkeypatch.setattr(W, "_FLUSH_AT", 100)
    wk.start()
    for n in nets(250):
        wk.set_route("bgp", Route.via(n, "198.18.0.2", "eth0"))
    assert wk.stats()["queued_ops"] == 50  # two batches of 100 went to the thread already
    await wait_until(lambda: len(wk.desired()) == 200)
    res = await wk.apply()
    assert res.added == 250 and len(dp.ours()) == 250


async def test_a_bad_setter_is_logged_and_skipped(wk, dp, caplog):
    wk.start()
    a, b = N("198.19.2.0/26"), N("198.19.3.0/26")
    wk.set_route("bgp", Route.via(a, "198.18.0.2", "eth0"), dst_key(b))  # key of another dst
    wk.set_route("bgp", Route.via(b, "198.18.0.2", "eth0"))
    with caplog.at_level(logging.ERROR, logger="felix.worker"):
        res = await wk.apply()
    assert res.added == 1 and set(dp.ours()) == {b}
    assert wk.op_errors == 1 and "set_route" in caplog.text and "is not the dst key" in caplog.text


async def test_an_exception_in_apply_reaches_the_caller_and_the_worker_survives(wk, dp, monkeypatch):
    wk.start()
    wk.set_route("bgp", Route.via("198.19.2.0/26", "198.18.0.2", "eth0"))

    def broken(**kw):
        raise RuntimeError("bug in a dataplane")
    monkeypatch.setattr(dp, "dump_routes_verified", broken)
    with pytest.raises(RuntimeError, match="bug in a dataplane"):
        await wk.apply()
    monkeypatch.undo()
    assert (await wk.apply()).added == 1


async def test_the_loop_keeps_running_while_the_kernel_holds_an_apply(wk, dp):
    wk.start()
    dp.block()
    wk.set_route("bgp", Route.via("198.19.2.0/26", "198.18.0.2", "eth0"))
    pending = asyncio.ensure_future(wk.apply())
    await wait_until(dp.waiting.is_set)       # the apply is inside the dataplane, on the thread
    ticks = 0
    for _ in range(5):
        await asyncio.sleep(0.01)             # the loop turns meanwhile
        ticks += 1
    wk.set_route("bgp", Route.via("198.19.3.0/26", "198.18.0.2", "eth0"))  # setters still accepted
    assert ticks == 5 and not pending.done() and wk.busy_for() > 0 and wk.stats()["busy_s"] > 0
    dp.unblock()
    assert (await pending).added == 1
    assert (await wk.apply()).added == 1 and len(dp.ours()) == 2
    assert wk.busy_for() is None


async def test_cancelled_apply_does_not_break_the_next(wk, dp):
    wk.start()
    dp.block()
    wk.set_route("bgp", Route.via("198.19.2.0/26", "198.18.0.2", "eth0"))
    pending = asyncio.ensure_future(wk.apply())
    await wait_until(dp.waiting.is_set)
    pending.cancel()
    dp.unblock()
    res = await wk.apply()
    assert res.errors == () and len(dp.ours()) == 1


async def test_reads_from_the_loop_while_the_thread_writes(dp):
    # status() and the monitor's is_expected read the thread's tables from the loop: single
    # lookups and len(), never an iteration, so a concurrent 20k-route take-in cannot break them.
    w = RouteTableWorker(RouteTable(dp))
    w.start()
    try:
        routes = [Route.via(n, "198.18.0.2", "eth0") for n in nets(20000)]
        for r in routes:
            w.set_route("bgp", r)
        applying = asyncio.ensure_future(w.apply())
        reads = 0
        while not applying.done():
            len(w.desired()), len(w.owned("bgp"))
            w.is_expected(routes[reads % len(routes)], False)
            reads += 1
            await asyncio.sleep(0)
        assert (await applying).added == 20000 and reads > 0
        assert w.is_expected(routes[0], False) and not w.is_expected(routes[0], True)
    finally:
        w.stop()
        assert await asyncio.to_thread(w.join, 10)


async def test_call_runs_on_the_owner_thread_after_the_queued_setters(wk):
    wk.start()
    wk.set_route("bgp", Route.via("198.19.2.0/26", "198.18.0.2", "eth0"))
    where, snapshot = await wk.call(lambda rt: (threading.current_thread().name, sorted(rt.desired())))
    assert where == "felix" and snapshot == [N("198.19.2.0/26")]
    with pytest.raises(ZeroDivisionError):
        await wk.call(lambda rt: 1 / 0)
    assert (await wk.apply()).added == 1

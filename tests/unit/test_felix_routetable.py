import errno
from ipaddress import IPv4Network

import pytest

from felix.fake import FakeDataplane
from felix.routes import NextHop, Route
from felix.routetable import OWNER_PRIORITY, RouteTable

N = IPv4Network


def nets(count, start=0):
    """/26s from 198.19.0.0/16."""
    return [N((0xC6130000 + (start + i) * 64, 26)) for i in range(count)]


def via(dst, gw="198.18.0.2", dev=None):
    return Route.via(dst, gw, dev)


@pytest.fixture
def dp():
    return FakeDataplane(links=["eth0", "tunl0"], reachable=["198.18.0.0/24"])


@pytest.fixture
def table(dp):
    return RouteTable(dp, batch_size=100)


def test_setters_do_not_write(dp, table):
    table.set_routes("bgp", [via(n) for n in nets(5)])
    table.set_route("blocks", Route.blackhole("198.19.100.0/26"))
    table.remove_route("bgp", nets(1)[0])
    assert dp.calls == []
    assert len(table.desired()) == 5 and table.dirty


def test_apply_adds_then_second_apply_is_noop(dp, table):
    routes = [via(n) for n in nets(250)]
    table.set_routes("bgp", routes)
    res = table.apply()
    assert (res.added, res.replaced, res.deleted, res.errors) == (250, 0, 0, ())
    assert res.full_sync and not table.dirty
    assert [len(b) for b in dp.batches] == [100, 100, 50]          # batch_size honoured
    assert dp.ours() == {r.dst: r for r in routes}
    writes = len(dp.batches)
    res2 = table.apply()
    assert (res2.added, res2.replaced, res2.deleted, res2.errors) == (0, 0, 0, ())
    assert len(dp.batches) == writes and not res2.full_sync and dp.dumps == 1
    table.mark_dirty()                                               # a full resync also writes nothing
    res3 = table.apply()
    assert res3.full_sync and res3.changes == 0 and len(dp.batches) == writes and dp.dumps == 2


def test_minimal_diff(dp, table):
    a, b, c, d = nets(4)
    table.set_routes("bgp", [via(a), via(b), via(c)])
    table.apply()
    dp.batches.clear()
    table.set_routes("bgp", [via(a), via(b, "198.18.0.3"), via(d)])  # keep a, change b, drop c, add d
    res = table.apply()
    assert (res.added, res.replaced, res.deleted) == (1, 1, 1)
    ops = {(op.action, op.route.dst) for op in dp.written_ops}
    assert ops == {("replace", b), ("delete", c), ("add", d)}
    assert dp.ours()[b].gateway.exploded == "198.18.0.3" and c not in dp.ours()


def test_existing_kernel_state_is_diffed_on_first_apply(dp, table):
    a, b, c = nets(3)
    from felix.dataplane import RouteOp
    dp.write([RouteOp("add", via(a)), RouteOp("add", via(b, "198.18.0.9")), RouteOp("add", via(c))])
    dp.batches.clear()
    table.set_routes("bgp", [via(a), via(b)])
    res = table.apply()
    assert (res.added, res.replaced, res.deleted) == (0, 1, 1)
    assert set(dp.ours()) == {a, b}


def test_foreign_protocol_routes_never_touched(dp, table):
    a, b, c = nets(3)
    bird = via(a, "198.18.0.7")
    kernel = Route.device("198.18.0.0/24", "eth0")
    dp.add_foreign(bird, protocol=12)
    dp.add_foreign(kernel, protocol=2)
    dp.add_foreign(via(c, "198.18.0.8"), protocol=80)
    table.set_routes("bgp", [via(a), via(b)])                       # a collides with BIRD's route
    res = table.apply()
    assert res.added == 1
    assert [(f.route.dst, f.errno) for f in res.errors] == [(a, errno.EEXIST)]
    assert "conflict" in res.errors[0].message
    assert dp.routes[(254, a, 0)].protocol == 12 and dp.routes[(254, a, 0)].route == bird
    assert dp.routes[(254, N("198.18.0.0/24"), 0)].protocol == 2
    assert dp.routes[(254, c, 0)].protocol == 80                     # not desired, but not ours: kept
    assert all(op.action != "replace" and op.route.dst != c for op in dp.written_ops)
    table.set_routes("bgp", [])
    table.apply()
    assert dp.routes[(254, a, 0)].protocol == 12 and (254, b, 0) not in dp.routes


def test_owner_priority_workloads_over_blocks_over_bgp(dp, table):
    assert OWNER_PRIORITY["workloads"] > OWNER_PRIORITY["blocks"] > OWNER_PRIORITY["bgp"]
    block, other = N("198.19.1.0/26"), N("198.19.2.0/26")
    pod = N("198.19.1.5/32")
    table.set_route("bgp", via(block, "198.18.0.5"))
    table.set_route("blocks", Route.blackhole(block))
    table.set_route("bgp", via(pod, "198.18.0.5"))
    table.set_route("workloads", Route.device(pod, "eth0"))
    table.set_route("bgp", via(other, "198.18.0.5"))
    table.apply()
    assert dp.ours()[block] == Route.blackhole(block)
    assert dp.ours()[pod] == Route.device(pod, "eth0")
    assert table.owner_of(pod) == "workloads"
    table.remove_route("workloads", pod)                             # pod gone: BGP's route takes over
    table.set_routes("blocks", [])
    res = table.apply()
    assert res.replaced == 2
    assert dp.ours()[pod].gateway.exploded == "198.18.0.5" and dp.ours()[block].gateway.exploded == "198.18.0.5"


@pytest.mark.parametrize("err", [errno.EEXIST, errno.ENODEV, errno.ENETUNREACH])
def test_one_failure_in_a_batch_is_reported_rest_applied_and_retried(dp, table, err):
    routes = [via(n) for n in nets(300)]
    bad = routes[137].dst
    dp.fail_next(err, match=bad)
    table.set_routes("bgp", routes)
    res = table.apply()
    assert res.added == 299
    assert [(f.route.dst, f.errno, f.action) for f in res.errors] == [(bad, err, "add")]
    assert len(dp.ours()) == 299 and bad not in dp.ours()
    assert table.dirty and bad in table.desired()
    res2 = table.apply()                                             # retried, fault gone
    assert res2.errors == () and res2.added == 1 and res2.full_sync
    assert len(dp.ours()) == 300 and not table.dirty


def test_enodev_until_device_exists(dp, table):
    pod = Route.device("198.19.0.9/32", "prv1234")
    table.set_route("workloads", pod)
    res = table.apply()
    assert [(f.route, f.errno) for f in res.errors] == [(pod, errno.ENODEV)]
    assert table.apply().errors[0].errno == errno.ENODEV            # still missing: still reported
    dp.links.add("prv1234")
    res = table.apply()
    assert res.ok and dp.ours()[pod.dst] == pod


def test_link_removal_flushes_and_apply_restores(dp, table):
    table.set_routes("blocks", [Route.via(n, "198.18.0.2", "tunl0", onlink=True) for n in nets(3)])
    table.apply()
    dp.remove_link("tunl0")
    assert dp.ours() == {}
    table.mark_dirty()
    assert table.apply().errors[0].errno == errno.ENODEV
    dp.links.add("tunl0")
    assert table.apply().added == 3 and len(dp.ours()) == 3


def test_dump_failure_writes_nothing_and_stays_dirty(dp, table):
    table.set_routes("bgp", [via(n) for n in nets(10)])
    dp.fail_dump_next(errno.ENOBUFS)
    res = table.apply()
    assert dp.batches == [] and table.dirty
    assert len(res.errors) == 1 and res.errors[0].route is None and res.errors[0].errno == errno.ENOBUFS
    res = table.apply()
    assert res.added == 10 and not table.dirty


def test_drift_repaired_after_mark_dirty(dp, table):
    routes = [via(n) for n in nets(20)]
    table.set_routes("bgp", routes)
    table.apply()
    dp.delete_by_hand(routes[3].dst)
    dp.routes[(254, routes[4].dst, 0)].route = via(routes[4].dst, "198.18.0.99")   # changed by hand
    assert table.apply().changes == 0                               # not dirty: cache trusted
    table.mark_dirty()
    res = table.apply()
    assert (res.added, res.replaced) == (1, 1)
    assert dp.ours() == {r.dst: r for r in routes}


def test_duplicate_metric_of_ours_is_removed(dp, table):
    a = nets(1)[0]
    from felix.fake import FakeEntry
    dp.routes[(254, a, 50)] = FakeEntry(90, Route.via(a, "198.18.0.2", metric=50))
    table.set_route("bgp", via(a))
    res = table.apply()
    assert (res.added, res.deleted) == (1, 1)
    assert [k for k in dp.routes if k[1] == a] == [(254, a, 0)]


def test_ecmp_and_kernel_chosen_device(dp, table):
    a, b = nets(2)
    ecmp = Route.ecmp(a, [NextHop("198.18.0.2"), NextHop("198.18.0.3", weight=2)])
    table.set_routes("bgp", [ecmp, via(b)])
    table.apply()
    # the kernel reports the device it picked; that still satisfies ifname=None
    dp.routes[(254, b, 0)].route = via(b, dev="eth0")
    table.mark_dirty()
    assert table.apply().changes == 0


def test_is_expected_for_monitor(table):
    a, b = nets(2)
    table.set_route("bgp", via(a))
    assert table.is_expected(via(a, dev="eth0"), deleted=False)
    assert not table.is_expected(via(a), deleted=True)             # someone deleted a desired route
    assert table.is_expected(via(b), deleted=True)                 # we deleted it
    assert not table.is_expected(via(a, "198.18.0.77"), deleted=False)


def test_a_failed_delete_in_a_burst_keeps_the_route_known_and_is_retried(dp, table):
    """Withdrawals drop their cache entry before the write (one probe each); a delete that
    then fails must put it back, whichever chunk it lands in, while the rest are counted."""
    from felix.routes import dst_key
    old = [via(n) for n in nets(300)]
    table.set_routes("bgp", old)
    table.apply()
    for r in old[:250]:
        table.remove_route("bgp", r.dst)
    new = [via(n) for n in nets(60, start=1000)]
    for r in new:
        table.set_route("bgp", r)
    stuck = old[150].dst
    dp.fail_next(errno.ETIMEDOUT, match=stuck)
    res = table.apply()
    assert not res.full_sync and (res.added, res.deleted) == (60, 249)
    assert [(f.route.dst, f.errno, f.action) for f in res.errors] == [(stuck, errno.ETIMEDOUT, "delete")]
    assert table._actual[dst_key(stuck)] == old[150] and len(table._actual) == 50 + 60 + 1
    assert stuck in dp.ours() and table.dirty
    res = table.apply()                                  # the next apply deletes it
    assert res.deleted == 1 and res.errors == () and dp.ours() == {r.dst: r for r in old[250:] + new}


def test_write_exception_marks_all_chunk_ops_failed(dp, table, monkeypatch):
    from felix.errors import DataplaneError

    def boom(ops):
        raise DataplaneError(errno.EIO, "socket gone")
    monkeypatch.setattr(dp, "write", boom)
    table.set_routes("bgp", [via(n) for n in nets(3)])
    res = table.apply()
    assert len(res.errors) == 3 and all(f.errno == errno.EIO for f in res.errors) and table.dirty


def test_invalid_input_rejected(table):
    from felix.errors import InvalidRoute
    a = nets(1)[0]
    with pytest.raises(InvalidRoute):
        table.set_routes("bgp", [via(a), via(a, "198.18.0.3")])
    with pytest.raises(InvalidRoute):
        table.set_route("bgp", "198.19.0.0/26")
    assert table.desired() == {}


def _verified_table(dp, table, count=30):
    """A table whose routes a full resync has seen satisfied: the next resync decodes none."""
    routes = [via(n) for n in nets(count)]
    table.set_routes("bgp", routes)
    assert table.apply().added == count
    table.mark_dirty()
    assert table.apply().checked == count       # first re-read: every route decoded and compared
    table.mark_dirty()
    res = table.apply()
    assert res.full_sync and res.checked == 0 and res.changes == 0
    return routes


def test_resync_skips_verified_routes_but_repairs_any_drift_in_them(dp, table):
    routes = _verified_table(dp, table)
    from felix.fake import FakeEntry
    dp.delete_by_hand(routes[3].dst)
    dp.routes[(254, routes[4].dst, 0)].route = via(routes[4].dst, "198.18.0.99")   # changed by hand
    dp.routes[(254, routes[5].dst, 7)] = FakeEntry(90, Route.via(routes[5].dst, "198.18.0.2", metric=7))
    table.mark_dirty()
    res = table.apply()
    assert (res.added, res.replaced, res.deleted) == (1, 1, 1)
    assert res.checked == 2                       # the changed route and the extra one; the rest skipped
    assert dp.ours() == {r.dst: r for r in routes}
    table.mark_dirty()
    assert table.apply().checked == 3             # what was just written is checked once more
    table.mark_dirty()
    assert table.apply().checked == 0


def test_resync_after_a_desired_change_to_a_verified_route_writes_it(dp, table):
    routes = _verified_table(dp, table)
    moved = via(routes[0].dst, "198.18.0.3")
    table.set_route("bgp", moved)
    table.remove_route("bgp", routes[1].dst)
    table.mark_dirty()                            # a full resync, not the incremental path
    res = table.apply()
    assert (res.added, res.replaced, res.deleted) == (0, 1, 1)
    assert dp.ours()[moved.dst] == moved and routes[1].dst not in dp.ours()


def test_incremental_writes_drop_exactly_their_digests(dp, table):
    from felix.routes import dst_key
    routes = _verified_table(dp, table)
    table.remove_route("bgp", routes[0].dst)
    table.set_route("bgp", via(routes[1].dst, "198.18.0.3"))
    res = table.apply()
    assert not res.full_sync and (res.replaced, res.deleted) == (1, 1)
    # Dropped lazily, by the next dump (their only reader), not on the convergence path.
    assert table._unverified == {dst_key(r.dst) for r in routes[:2]}
    table.mark_dirty()
    res = table.apply()
    assert res.changes == 0 and res.checked == 1  # only the replaced route is decoded again
    assert set(table._verified) == {dst_key(r.dst) for r in routes[1:]} and not table._unverified


def test_a_withdrawn_route_put_back_by_hand_byte_for_byte_is_still_removed(dp, table):
    from felix.fake import FakeEntry
    routes = _verified_table(dp, table)
    gone = routes[0]
    table.remove_route("bgp", gone.dst)
    assert table.apply().deleted == 1 and gone.dst not in dp.ours()
    dp.routes[(254, gone.dst, 0)] = FakeEntry(90, gone)   # same bytes, same digest as verified
    table.mark_dirty()
    res = table.apply()
    assert res.deleted == 1 and gone.dst not in dp.ours() and res.checked == 1


def test_resync_keeps_no_decoded_copy_of_verified_routes(dp, table):
    routes = _verified_table(dp, table)
    # The table holds the desired Route objects themselves under int keys, nothing decoded.
    from felix.routes import dst_key
    assert all(table._actual[dst_key(r.dst)] is r for r in routes)
    assert all(type(k) is int for k in table._actual) and len(table._actual) == len(routes)


def test_key_api_matches_the_dst_api(dp, table):
    from felix.errors import InvalidRoute
    from felix.routes import dst_key
    a, b = nets(2)
    table.set_route("bgp", via(a), dst_key(a))
    table.set_route("bgp", via(b))
    with pytest.raises(InvalidRoute, match="not the dst key"):
        table.set_route("bgp", via(a), dst_key(b))
    assert table.desired()[a] == via(a) and b in table.desired() and "x" not in table.desired()
    assert sorted(table.owned("bgp")) == [a, b] and table.owner_of(str(a)) == "bgp"
    table.apply()
    table.remove_key("bgp", dst_key(a))
    table.remove_route("bgp", str(b))
    assert table.apply().deleted == 2 and dp.ours() == {} and len(table.desired()) == 0


def test_churn_beyond_the_verified_table_forgets_every_digest(dp, table):
    routes = _verified_table(dp, table)                  # 30 verified
    for r in routes[:20]:
        table.remove_route("bgp", r.dst)
    table.apply()
    assert len(table._unverified) == 20 and len(table._verified) == 30
    for r in [via(n) for n in nets(11, start=500)]:      # 31 changed dsts > 30 digests
        table.set_route("bgp", r)
    table.apply()
    assert table._verified == {} and not table._unverified
    table.mark_dirty()
    res = table.apply()
    assert res.changes == 0 and res.checked == 21        # everything decoded once more


class _Keyed(IPv4Network):
    """A dst that carries its key under nlcore.prefixkey.CARRIED, as bgp.prefix.Prefix does."""

    def __init__(self, address, key=None):
        super().__init__(address)
        from felix.routes import dst_key
        self.key = dst_key(IPv4Network(address)) if key is None else key


def test_a_dst_that_carries_its_key_gives_every_table_that_int_object(dp, table):
    from felix.routes import dst_key
    routes = [via(_Keyed(n)) for n in nets(30)]
    table.set_routes("bgp", routes)
    table.apply()
    table.mark_dirty()
    table.apply()                                       # the dump verifies them all
    want = {id(r.dst.key) for r in routes}
    assert {id(k) for k in table._verified} == want and {id(k) for k in table._desired} == want
    assert {id(k) for k in table._actual} == want
    liar = _Keyed("198.19.0.0/26", key=12345)            # a wrong carried key is not trusted
    assert dst_key(liar) == dst_key(IPv4Network("198.19.0.0/26")) != 12345

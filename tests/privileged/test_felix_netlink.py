"""felix against the real kernel, inside throwaway namespaces (never the root namespace)."""
import asyncio
import errno
import json
import time
from ipaddress import IPv4Network

import pytest

from nsutil import sh
from felix.dataplane import RouteOp
from felix.monitor import RouteMonitor
from felix.netlink import NetlinkDataplane
from felix.routes import NextHop, Route
from felix.routetable import RouteTable

pytestmark = pytest.mark.privileged


def nets(count, start=0, plen=26):
    size = 2 ** (32 - plen)
    return [IPv4Network((0xC6130000 + (start + i) * size, plen)) for i in range(count)]


def kernel_routes(ns, *extra):
    return json.loads(sh("ip", "-j", "route", "show", *extra, ns=ns).stdout or "[]")


@pytest.fixture
def ns(make_netns):
    name = make_netns("felix")
    for cmd in ("ip link add d0 type veth peer name d0p", "ip link set d0 up", "ip link set d0p up",
                "ip addr add 198.18.0.1/24 dev d0"):
        sh(*cmd.split(), ns=name)
    return name


@pytest.fixture
def dp(ns):
    d = NetlinkDataplane(ns)
    yield d
    d.close()


def test_apply_1000_routes_and_idempotent(ns, dp):
    table = RouteTable(dp)
    routes = [Route.via(n, "198.18.0.2", "d0") for n in nets(1000)]
    table.set_routes("bgp", routes)
    res = table.apply()
    assert (res.added, res.errors) == (1000, ())
    got = kernel_routes(ns, "proto", "90")
    assert len(got) == 1000
    assert {(r["dst"], r["gateway"], r["dev"]) for r in got} == {(str(r.dst), "198.18.0.2", "d0") for r in routes}
    assert {r.dst: r for r in dp.dump_routes(table=254, protocol=90)} == {r.dst: r for r in routes}
    table.mark_dirty()
    res2 = table.apply()
    assert res2.full_sync and res2.changes == 0 and res2.errors == ()


def test_shapes_roundtrip_through_kernel(ns, dp):
    a, b, c, d, e = nets(5)
    routes = [
        Route.via(a, "198.18.0.2"),                                     # kernel picks d0
        Route.via(b, "198.18.9.9", "d0", onlink=True),
        Route.blackhole(c),
        Route.device(IPv4Network("198.19.200.7/32"), "d0"),
        Route.ecmp(d, [NextHop("198.18.0.2", "d0"), NextHop("198.18.0.3", "d0", weight=3)]),
        Route.via(e, "198.18.0.2", "d0", metric=100),
    ]
    table = RouteTable(dp)
    table.set_routes("blocks", routes)
    assert table.apply().added == 6
    table.mark_dirty()
    assert table.apply().changes == 0                                   # decoded == desired
    text = sh("ip", "route", "show", "proto", "90", ns=ns).stdout
    assert f"{b} via 198.18.9.9 dev d0 onlink" in text
    assert f"blackhole {c}" in text
    assert "198.19.200.7 dev d0 scope link" in text
    assert "nexthop via 198.18.0.3 dev d0 weight 3" in text
    assert f"{e} via 198.18.0.2 dev d0 metric 100" in text
    other = RouteTable(dp, table=1000)
    other.set_route("bgp", Route.via(a, "198.18.0.2", "d0"))
    assert other.apply().added == 1
    assert [r["dst"] for r in kernel_routes(ns, "table", "1000", "proto", "90")] == [str(a)]
    assert len(dp.dump_routes(table=254, protocol=90)) == 6


def test_foreign_routes_left_alone(ns, dp):
    a, b, c = nets(3)
    sh("ip", "route", "add", str(a), "via", "198.18.0.7", "proto", "12", ns=ns)   # BIRD's, other prefix
    sh("ip", "route", "add", str(c), "via", "198.18.0.8", "proto", "12", ns=ns)   # BIRD's, same prefix as ours
    table = RouteTable(dp)
    table.set_routes("bgp", [Route.via(b, "198.18.0.2"), Route.via(c, "198.18.0.2"),
                             Route.via("198.18.0.0/24", "198.18.0.2")])       # collides with the connected route
    res = table.apply()
    assert res.added == 1
    assert sorted((str(f.route.dst), f.errno) for f in res.errors) == [
        ("198.18.0.0/24", errno.EEXIST), (str(c), errno.EEXIST)]
    bird = kernel_routes(ns, "proto", "12")
    assert sorted((r["dst"], r["gateway"]) for r in bird) == [(str(a), "198.18.0.7"), (str(c), "198.18.0.8")]
    assert kernel_routes(ns, "proto", "kernel")[0]["dst"] == "198.18.0.0/24"
    table.set_routes("bgp", [])
    table.apply()
    assert kernel_routes(ns, "proto", "90") == []
    assert len(kernel_routes(ns, "proto", "12")) == 2


def test_hand_deleted_routes_restored(ns, dp):
    routes = [Route.via(n, "198.18.0.2", "d0") for n in nets(50)]
    table = RouteTable(dp)
    table.set_routes("bgp", routes)
    table.apply()
    for r in routes[:5]:
        sh("ip", "route", "del", str(r.dst), "proto", "90", ns=ns)
    sh("ip", "route", "replace", str(routes[10].dst), "via", "198.18.0.66", "proto", "90", ns=ns)
    assert len(kernel_routes(ns, "proto", "90")) == 45
    table.mark_dirty()
    res = table.apply()
    assert (res.added, res.replaced, res.errors) == (5, 1, ())
    got = {r["dst"]: r["gateway"] for r in kernel_routes(ns, "proto", "90")}
    assert len(got) == 50 and set(got.values()) == {"198.18.0.2"}


def test_verified_resync_decodes_nothing_until_the_kernel_or_the_links_change(ns, dp):
    """A resync after one that found every route satisfied decodes none of them (digest of
    the kernel's bytes per dst); a hand edit or a changed device map is still seen."""
    routes = [Route.via(n, "198.18.0.2", "d0") for n in nets(50)]
    routes.append(Route.via(nets(51)[50], "198.18.0.2"))     # device left to the kernel
    table = RouteTable(dp)
    table.set_routes("bgp", routes)
    assert table.apply().added == 51
    for expect_checked in (51, 0):
        table.mark_dirty()
        res = table.apply()
        assert res.full_sync and res.changes == 0 and res.checked == expect_checked
    sh("ip", "route", "replace", str(routes[10].dst), "via", "198.18.0.66", "proto", "90", ns=ns)
    sh("ip", "route", "change", str(routes[11].dst), "via", "198.18.0.2", "dev", "d0", "onlink",
       "proto", "90", ns=ns)                                    # only a flag differs
    sh("ip", "route", "del", str(routes[12].dst), "proto", "90", ns=ns)
    table.mark_dirty()
    res = table.apply()
    assert (res.added, res.replaced, res.errors, res.checked) == (1, 2, (), 2)
    table.mark_dirty()
    table.apply()
    # A new device changes the ifindex -> name map: every decode is redone, nothing rewritten.
    sh("ip", "link", "add", "x9", "type", "veth", "peer", "name", "x9p", ns=ns)
    table.mark_dirty()
    res = table.apply()
    assert res.checked == 51 and res.changes == 0
    got = {r["dst"]: r["gateway"] for r in kernel_routes(ns, "proto", "90")}
    assert len(got) == 51 and set(got.values()) == {"198.18.0.2"}


def test_error_attribution_in_one_batch(ns, dp):
    good = [Route.via(n, "198.18.0.2", "d0") for n in nets(200)]
    nodev = Route.device("198.19.100.0/26", "nosuchdev")
    unreach = Route.via("198.19.100.64/26", "198.18.77.1")             # not on any connected subnet
    batch = good[:100] + [nodev] + good[100:150] + [unreach] + good[150:]
    failures = dp.write([RouteOp("add", r) for r in batch])
    assert sorted((str(f.route.dst), f.errno) for f in failures) == [
        ("198.19.100.0/26", errno.ENODEV), ("198.19.100.64/26", errno.ENETUNREACH)]
    assert len(kernel_routes(ns, "proto", "90")) == 200
    # the same through RouteTable, with a stale device index: the device appears later
    table = RouteTable(dp)
    table.set_routes("bgp", good + [nodev, unreach])
    res = table.apply()
    assert sorted((str(f.route.dst), f.errno) for f in res.errors) == [
        ("198.19.100.0/26", errno.ENODEV), ("198.19.100.64/26", errno.ENETUNREACH)]
    assert table.dirty
    sh("ip", "link", "add", "nosuchdev", "type", "veth", "peer", "name", "nsd-p", ns=ns)
    sh("ip", "link", "set", "nosuchdev", "up", ns=ns)
    res = table.apply()
    assert [str(f.route.dst) for f in res.errors] == ["198.19.100.64/26"] and res.added == 1
    assert any(r["dst"] == "198.19.100.0/26" and r["dev"] == "nosuchdev" for r in kernel_routes(ns, "proto", "90"))


def test_delete_missing_route_is_success(ns, dp):
    assert dp.write([RouteOp("delete", Route.blackhole("198.19.9.0/26"))]) == []


def test_netns_adapter_programs_only_its_namespace(ns, make_netns):
    other = make_netns("felix2")
    before_root = sh("ip", "-j", "route", "show", "table", "all", "proto", "90").stdout
    with NetlinkDataplane(other) as dp2:
        t = RouteTable(dp2)
        t.set_route("blocks", Route.blackhole("198.19.250.0/26"))
        assert t.apply().added == 1
    assert [r["dst"] for r in kernel_routes(other, "proto", "90")] == ["198.19.250.0/26"]
    assert kernel_routes(ns, "proto", "90") == []
    assert sh("ip", "-j", "route", "show", "table", "all", "proto", "90").stdout == before_root


def test_missing_netns_raises(make_netns):
    from felix.errors import DataplaneError
    with pytest.raises(DataplaneError) as ei:
        NetlinkDataplane("prt-does-not-exist-000000")
    assert ei.value.errno == errno.ENOENT


async def _wait_for(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.01)
    return pred()


async def test_monitor_sees_hand_deletion_and_ignores_own_writes(ns, dp):
    table = RouteTable(dp)
    routes = [Route.via(n, "198.18.0.2", "d0") for n in nets(20)]
    table.set_routes("bgp", routes)
    calls = []
    mon = RouteMonitor(lambda: calls.append(time.monotonic()), netns=ns, expected=table.is_expected)
    task = asyncio.create_task(mon.run())
    try:
        await asyncio.wait_for(mon.ready.wait(), 2)
        assert table.apply().added == 20
        await asyncio.sleep(0.3)
        assert calls == []                                              # echoes of our writes ignored
        sh("ip", "route", "add", "198.19.240.0/26", "via", "198.18.0.9", "proto", "12", ns=ns)
        await asyncio.sleep(0.2)
        assert calls == []                                              # other protocols are not drift
        t0 = time.monotonic()
        sh("ip", "route", "del", str(routes[7].dst), "proto", "90", ns=ns)
        assert await _wait_for(lambda: calls, 1.0)
        assert calls[0] - t0 < 1.0
        table.mark_dirty()
        assert table.apply().added == 1
        n = len(calls)
        sh("ip", "link", "set", "d0p", "down", ns=ns)                   # link events always count
        assert await _wait_for(lambda: len(calls) > n, 1.0)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("kernel_filter", [True, False], ids=["bpf", "python"])
async def test_monitor_drops_own_echoes_but_not_hand_edits(ns, dp, monkeypatch, kernel_filter):
    """With ``own_portids`` the echoes of our writes (nlmsg_pid is the writer's port id) are
    dropped by the socket's BPF filter before they are queued, or, if the filter cannot be
    attached, skipped undecoded; a hand edit (ip's own socket) is still drift, even when
    ``expected`` would not be consulted for it."""
    if not kernel_filter:
        def refuse(sock, portids):
            raise OSError(1, "refused for the test")
        monkeypatch.setattr("felix.monitor.attach_echo_filter", refuse)
    table = RouteTable(dp)
    routes = [Route.via(n, "198.18.0.2", "d0") for n in nets(300)]
    table.set_routes("bgp", routes)
    calls = []
    judged = []

    def expected(route, deleted):
        judged.append(route)
        return table.is_expected(route, deleted)
    mon = RouteMonitor(lambda: calls.append(1), netns=ns, expected=expected,
                       own_portids=lambda: (dp.portid,))
    task = asyncio.create_task(mon.run())
    try:
        await asyncio.wait_for(mon.ready.wait(), 2)
        assert table.apply().added == 300
        table.set_routes("bgp", routes[:200])
        assert table.apply().deleted == 100
        if kernel_filter:
            await asyncio.sleep(0.3)
            assert mon.datagrams == 0 and mon.echoes_skipped == 0       # never reached us
        else:
            assert await _wait_for(lambda: mon.echoes_skipped >= 400, 2.0)
        assert calls == [] and judged == []                             # nothing decoded or judged
        sh("ip", "route", "replace", str(routes[3].dst), "via", "198.18.0.3", "proto", "90", ns=ns)
        assert await _wait_for(lambda: calls, 1.0)                      # changed by hand: drift
        assert [str(r.dst) for r in judged] == [str(routes[3].dst)]
        n = len(calls)
        sh("ip", "route", "del", str(routes[5].dst), "proto", "90", ns=ns)
        assert await _wait_for(lambda: len(calls) > n, 1.0)             # deleted by hand: drift
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_measure_10k_vs_ip_batch(ns, dp, make_netns, capsys):
    routes = [Route.via(n, "198.18.0.2", "d0") for n in nets(10000, plen=28)]
    table = RouteTable(dp)
    table.set_routes("bgp", routes)
    t0 = time.perf_counter()
    res = table.apply()
    t_apply = time.perf_counter() - t0
    assert res.added == 10000 and res.errors == ()
    table.mark_dirty()
    t0 = time.perf_counter()
    assert table.apply().changes == 0
    t_resync = time.perf_counter() - t0
    t0 = time.perf_counter()
    table.set_routes("bgp", [])
    assert table.apply().deleted == 10000
    t_del = time.perf_counter() - t0

    other = make_netns("felixb")
    for cmd in ("ip link add d0 type veth peer name d0p", "ip link set d0 up", "ip link set d0p up",
                "ip addr add 198.18.0.1/24 dev d0"):
        sh(*cmd.split(), ns=other)
    script = "".join(f"route add {r.dst} via 198.18.0.2 dev d0 proto 90\n" for r in routes)
    t0 = time.perf_counter()
    sh("ip", "-batch", "-", ns=other, input=script)
    t_ip = time.perf_counter() - t0
    assert len(kernel_routes(other, "proto", "90")) == 10000
    with capsys.disabled():
        print(f"\n[felix bench] 10k /28 via: apply {10000 / t_apply:,.0f} routes/s ({t_apply * 1e3:.0f} ms), "
              f"full resync no-op {t_resync * 1e3:.0f} ms, delete {10000 / t_del:,.0f} routes/s; "
              f"ip -batch {10000 / t_ip:,.0f} routes/s ({t_ip * 1e3:.0f} ms incl. exec)")

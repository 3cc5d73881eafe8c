"""The counts the metrics read that the components did not keep before: BGP session flaps and
UPDATEs received per peer, our prefixes handed to ExaBGP, datastore watch events and errors,
IPAM use per block, felix's routes by kind from its own thread."""
from __future__ import annotations

import asyncio
import errno as E
from ipaddress import IPv4Address as A, IPv4Network as N

from test_bgp_gr import BIRD, P1, P2, Clock, make as make_speaker
from test_clusterwatch_events import N3, running  # noqa: F401 - running is a fixture
from waiting import wait_until

from bgp import api
from bgp.model import PathAttrs
from cni.ipam import IPAM
from felix.backoff import FailureBackoff
from felix.dataplane import RouteFailure
from felix.fake import FakeDataplane
from felix.routes import NextHop, Route
from felix.routetable import ApplyResult, RouteTable
from felix.worker import RouteTableWorker
from podroute.metrics.collector import count_kinds, route_kind


async def test_speaker_counts_flaps_and_updates_per_peer(tmp_path):
    sp, _calls = make_speaker(tmp_path, Clock())
    sp._on_event(api.StateEvent(BIRD, "connected"))
    sp._on_event(api.StateEvent(BIRD, "up"))
    sp._on_event(api.UpdateEvent(BIRD, [(P1, BIRD, PathAttrs(BIRD))]))
    sp._on_event(api.UpdateEvent(BIRD, [(P2, BIRD, PathAttrs(BIRD))]))
    p = sp.status().peers[0]
    assert (p.state, p.flaps, p.updates_received) == ("established", 0, 2)
    sp._on_event(api.StateEvent(BIRD, "down", "closing connection"))
    sp._on_event(api.StateEvent(BIRD, "connected"))   # not Established: no second flap
    sp._on_event(api.StateEvent(BIRD, "down", "refused"))
    p = sp.status().peers[0]
    assert (p.flaps, p.updates_received) == (1, 2)
    assert sp.status().prefixes_sent == {"announce": 0, "withdraw": 0}  # no API session: nothing sent


async def test_clusterwatch_counts_events_and_errors(running):
    server, w, got = running
    before = w.status()["watch_events"]
    assert before >= 1 and w.status()["errors"] == 0
    server.put(N3)
    await wait_until(lambda: w.status()["watch_events"] > before)
    server.down()
    await wait_until(lambda: w.status()["errors"] >= 1 and not w.status()["available"])
    server.up()
    server.delete("nodes/n3")  # the watch notices it is back with its next event
    await wait_until(lambda: w.status()["available"])


def test_ipam_block_usage_counts_reserved_addresses_as_used(tmp_path):
    blocks = [N("198.19.1.0/26"), N("198.19.1.64/26")]
    ipam = IPAM(tmp_path, blocks, reserved=[A("198.19.1.0")])
    ipam.allocate("pod-a")
    ipam.allocate("pod-b")
    assert ipam.block_usage() == {blocks[0]: (3, 61), blocks[1]: (0, 64)}
    assert sum(free for _u, free in ipam.block_usage().values()) == ipam.free_count()


def test_route_kinds():
    assert route_kind(Route.blackhole("198.19.1.0/26")) == "blackhole"
    assert route_kind(Route.device("198.19.1.5/32", "prt1234")) == "workload"
    assert route_kind(Route.via("198.19.2.0/26", "198.18.0.12")) == "remote"
    assert route_kind(Route.via("198.19.2.0/26", "198.18.0.12", "eth0")) == "remote"
    assert route_kind(Route.via("198.19.3.0/26", "198.18.0.13", "tunl0", onlink=True)) == "tunnel"
    assert route_kind(Route.via("198.19.3.0/26", "198.18.0.13", "vxlan.podroute", onlink=True)) == "tunnel"
    ecmp = (NextHop(A("198.18.0.12"), "tunl0", onlink=True), NextHop(A("198.18.0.13"), "tunl0", onlink=True))
    assert route_kind(Route.ecmp("198.19.4.0/26", ecmp)) == "tunnel"
    assert route_kind(Route.ecmp("198.19.4.0/26", (NextHop(A("198.18.0.12")), NextHop(A("198.18.0.13"))))) == "remote"


async def test_kinds_are_counted_on_felix_thread_from_what_is_in_the_kernel():
    dp = FakeDataplane(links=("eth0", "prt1", "tunl0"))
    rt = RouteTable(dp)
    worker = RouteTableWorker(rt)
    worker.set_routes("blocks", [Route.blackhole("198.19.1.0/26")])
    worker.set_routes("workloads", [Route.device("198.19.1.5/32", "prt1")])
    worker.set_routes("bgp", [Route.via("198.19.2.0/26", "198.18.0.12"),
                              Route.via("198.19.3.0/26", "198.18.0.13", "tunl0", onlink=True)])
    assert worker.submit(count_kinds).result(5) == dict.fromkeys(("remote", "blackhole", "workload", "tunnel"), 0)
    worker.start()
    try:
        await worker.apply()
        counts = await asyncio.to_thread(lambda: worker.submit(count_kinds).result(5))
        assert counts == {"remote": 1, "blackhole": 1, "workload": 1, "tunnel": 1}
        assert sum(counts.values()) == len(dp.ours())
        dp.add_foreign(Route.via("198.19.9.0/26", "198.18.0.12"))   # not ours: not counted
        assert await asyncio.to_thread(lambda: worker.submit(count_kinds).result(5)) == counts
        boom = worker.submit(lambda rt: 1 / 0)
        assert isinstance(await asyncio.to_thread(boom.exception, 5), ZeroDivisionError)
    finally:
        worker.stop()


def test_backoff_failing_by_errno():
    fb = FailureBackoff()
    r1, r2 = Route.via("198.19.2.0/26", "198.18.0.12"), Route.via("198.19.3.0/26", "198.18.0.12")
    fb.observe(ApplyResult(0, 0, 0, (RouteFailure(r1, E.EEXIST, "x", "add"),
                                     RouteFailure(r2, E.ENETUNREACH, "y", "add")), 0.001), 1.0)
    assert fb.failing_by_errno() == {E.EEXIST: 1, E.ENETUNREACH: 1}


def test_count_kinds_counts_every_route_of_a_dst_with_several_metrics():
    from types import SimpleNamespace
    two = (Route.via("198.19.2.0/26", "198.18.0.12"), Route.via("198.19.2.0/26", "198.18.0.12", metric=5))
    rt = SimpleNamespace(actual_entries=lambda: [two, Route.blackhole("198.19.1.0/26")])
    assert count_kinds(rt) == {"remote": 2, "blackhole": 1, "workload": 0, "tunnel": 0}

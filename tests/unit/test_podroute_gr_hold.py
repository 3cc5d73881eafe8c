"""Our own graceful-restart hold (podroute.gr_hold, RFC 4724 §4.1): the routes kept from the
previous run stay until End-of-RIB from every configured peer, not only those whose sessions
came back first (in a mesh the node we dial is up long before the one that dials us), or
until the restart time runs out."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from bgp.model import PeerStatus, SpeakerStatus
from felix.errors import DataplaneError
from felix.fake import FakeDataplane
from felix.routes import Route, dst_key
from podroute.gr_hold import RestartHold, converged, previous_bgp_routes

GW = IPv4Address("198.18.0.12")


def status(*peers):
    return SpeakerStatus(peers=tuple(PeerStatus(IPv4Address(f"198.18.0.{20 + i}"), 64512, s, 0.0, 0, 0, 0, None,
                                                eor_received=e) for i, (s, e) in enumerate(peers)),
                         exabgp_pid=None, exabgp_restarts=0, last_exit=None, announced=())


@pytest.mark.parametrize("peers,done", [
    ([("established", True), ("established", True)], True),
    ([("established", True), ("connect", False)], False),    # the other session not back yet
    ([("established", True), ("idle", False)], False),
    ([("established", True), ("established", False)], False),  # up, End-of-RIB still to come
    ([], False),
])
def test_converged_needs_end_of_rib_from_every_configured_peer(peers, done):
    assert converged(status(*peers)) is done


class Removed:
    def __init__(self):
        self.keys = []

    def remove_key(self, owner, key):
        assert owner == "bgp"
        self.keys.append(key)


def held(n=3):
    return [Route.via(IPv4Network(f"198.19.{2 + i}.0/26"), GW) for i in range(n)]


def test_hold_releases_what_bgp_did_not_reannounce_once_converged():
    now, st = [100.0], [status(("established", False))]
    out = Removed()
    hold = RestartHold(out, lambda: st[0], hold_s=120, clock=lambda: now[0])
    routes = held()
    hold.keep(routes)
    assert hold.active and not hold.check() and out.keys == []
    hold.stale.pop(dst_key(routes[0].dst))  # BGP re-announced the first
    st[0] = status(("established", True))
    assert hold.check() and not hold.active
    assert sorted(out.keys) == sorted(dst_key(r.dst) for r in routes[1:])
    assert not hold.check()  # once


def test_hold_ends_when_the_restart_time_runs_out_without_peers():
    now = [0.0]
    out = Removed()
    hold = RestartHold(out, lambda: status(), hold_s=120, clock=lambda: now[0])
    hold.keep(held(2))
    now[0] = 119.9
    assert not hold.check()
    now[0] = 120.0
    assert hold.check() and len(out.keys) == 2


def test_nothing_to_keep_is_no_hold():
    hold = RestartHold(Removed(), lambda: status(), hold_s=120)
    hold.keep([])
    assert not hold.active and not hold.check()


def test_previous_routes_are_our_gateway_routes_nobody_desires_yet():
    dp = FakeDataplane(links=("eth0",))
    bgp, dev, mine = held(1)[0], Route.device(IPv4Network("198.19.1.5/32"), "eth0"), held(2)[1]
    for r in (bgp, dev, mine):
        dp.add_foreign(r, protocol=90)  # what the previous run wrote, proto 90
    dp.add_foreign(held(3)[2], protocol=12)  # another daemon's: never ours
    got = previous_bgp_routes(dp, table=254, protocol=90, desired={mine.dst: mine})
    assert got == [bgp]


def test_a_failed_dump_keeps_nothing():
    class Broken:
        def dump_routes(self, *, table, protocol):
            raise DataplaneError("dump failed")
    assert previous_bgp_routes(Broken(), table=254, protocol=90, desired={}) == []

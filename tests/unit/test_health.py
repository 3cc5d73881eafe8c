"""Readiness checks (podroute.health) on stand-ins for the agent's parts, with a fake clock:
the FIB check, the peer bound (gracefulRestartTime) and its one-time report, the stale-report
rule /readyz applies."""
from __future__ import annotations

import asyncio
import logging
from ipaddress import IPv4Address
from types import SimpleNamespace

from bgp.model import PeerStatus, SpeakerStatus
from podroute.health import Health
from podroute.looplag import LoopLag

P1, P2 = IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def fake_agent(states: dict):
    def status():
        return SpeakerStatus(tuple(PeerStatus(a, 64512, s, 0.0, 0, 0, 0, "connection refused", flaps=f)
                                   for a, (s, f) in states.items()), None, 0, None, ())
    return SimpleNamespace(
        felix=SimpleNamespace(synced_at=1.0, last_apply={"errors": []}),
        hold=SimpleNamespace(active=False, stale={}), cfg=SimpleNamespace(graceful_restart_time=120),
        speaker=SimpleNamespace(status=status),
        guard=SimpleNamespace(failed=asyncio.Event(), stopping=False, failures=[]),
        looplag=LoopLag(), routes=SimpleNamespace(desired=lambda: {}, owned=lambda o: {}))


def test_a_peer_that_never_comes_is_waited_for_up_to_the_bound_then_reported_once(caplog):
    clock = Clock()
    states = {P1: ("established", 0), P2: ("connect", 0)}
    h = Health(fake_agent(states), peer_wait_s=120, clock=clock)
    rep = h.readiness()
    assert not rep.ok and "198.18.0.2 (connect, 120 s left)" in rep.checks["bgp"].reason
    clock.t += 119
    assert not h.readiness().ok
    clock.t += 1
    with caplog.at_level(logging.WARNING, "podroute.health"):
        rep = h.readiness()
        h.readiness()
    assert rep.ok and "absent after 120 s (reported): 198.18.0.2" in rep.checks["bgp"].reason
    assert len([r for r in caplog.records if "readiness no longer waits" in r.getMessage()]) == 1


def test_established_once_counts_even_after_a_flap():
    states = {P1: ("down", 1)}   # was Established, then went down
    h = Health(fake_agent(states), peer_wait_s=120, clock=Clock())
    assert h.readiness().checks["bgp"].ok


def test_fib_check_waits_for_the_first_kernel_read_and_the_restart_hold():
    a = fake_agent({})
    a.felix.synced_at, a.felix.last_apply = None, {"errors": ["dump: dump failed: EINTR"]}
    h = Health(a, peer_wait_s=120, clock=Clock())
    rep = h.readiness()
    assert not rep.ok and "have not read the kernel" in rep.checks["fib"].reason
    assert rep.checks["bgp"].reason == "no BGP peers configured"
    a.felix.synced_at, a.hold.active, a.hold.stale = 5.0, True, {1: None}
    assert "holding 1 route(s) of the previous run" in h.readiness().checks["fib"].reason
    a.hold.active = False
    assert h.readiness().ok


def test_served_report_goes_stale_when_the_loop_stops_evaluating():
    h = Health(fake_agent({}), peer_wait_s=120, clock=Clock())
    assert not h.served().ok and "not been evaluated" in h.served().checks["loop"].reason
    rep = h.readiness()
    assert h.served(now=rep.at + 1).ok
    stale = h.served(now=rep.at + 10)
    assert not stale.ok and "event loop is not turning" in stale.checks["loop"].reason


def test_liveness_without_a_running_ticker_is_not_live():
    h = Health(fake_agent({}), peer_wait_s=120, clock=Clock())
    assert not h.liveness().ok

"""Readiness checks (podroute.health) on stand-ins for the agent's parts, with a fake clock:
the FIB check, the peer bound (gracefulRestartTime) and its one-time report, the stale-report
rule /readyz applies."""
from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import SimpleNamespace

from test_podroute_agent import PEER, make
from waiting import until

from bgp.model import PeerStatus, SpeakerStatus
from felix.fake import FakeDataplane
from felix.routes import Route
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


def test_podroute_status_prints_the_checks():
    from podroute.statusd import render
    h = Health(fake_agent({P2: ("connect", 0)}), peer_wait_s=120, clock=Clock())
    text = render({"health": {"ready": h.readiness().as_dict(), "live": h.liveness().as_dict()}})
    assert "Health: NOT READY, NOT LIVE" in text
    assert "  bgp: FAILING: waiting for Established: 198.18.0.2 (connect, 120 s left)" in text
    assert "  fib: ok: routes programmed" in text and "  loop: FAILING: " in text


async def test_the_restart_hold_ends_on_time_without_any_bgp_event():
    # The hold used to end only at the next apply after its time: with no BGP event and a long
    # resyncInterval the previous run's routes (and not-ready) outlived gracefulRestartTime.
    d = Path(tempfile.mkdtemp(prefix="pra-", dir="/tmp"))
    try:
        dp = FakeDataplane(links=("eth0",))
        old = IPv4Network("198.19.3.0/26")
        dp.add_foreign(Route.via(old, PEER), protocol=90)    # what the previous run programmed
        agent, dp, _ = make(d, dp, graceful_restart_time=1)  # resyncInterval 3600; the peer never converges
        run = asyncio.create_task(agent.run(signals=False))
        await until(lambda: agent.felix.synced_at is not None, 5, "the first apply")
        assert agent.hold.active and old in dp.ours()
        await until(lambda: not agent.hold.active and old not in dp.ours(), 5, "the hold to end at its time")
        assert agent.health.readiness().checks["fib"].ok
        agent._stop.set()
        assert await asyncio.wait_for(run, 20) == 0
    finally:
        shutil.rmtree(d, ignore_errors=True)

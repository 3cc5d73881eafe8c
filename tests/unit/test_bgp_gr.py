"""Graceful restart, receiving side (RFC 4724 §4.2): stale routes, timers on a fake clock,
End-of-RIB sweep, and the cases that flush at once (NOTIFICATION, stop, no GR capability)."""
from __future__ import annotations

import asyncio
import json
from ipaddress import IPv4Address as A, IPv4Network as N
from pathlib import Path

import pytest

from bgp_mirror import LocRibMirror
from bgp import api
from bgp.model import PathAttrs, PeerConfig, SpeakerConfig
from bgp.speaker import Speaker
from waiting import until

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "exabgp"
BIRD, NODE = A("198.18.0.1"), A("198.18.0.2")
P1, P2, P3 = N("198.19.1.0/26"), N("198.19.2.0/26"), N("198.19.5.0/26")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(tmp_path, clock, **kw):
    cfg = SpeakerConfig(router_id=NODE, local_as=64512, local_address=NODE,
                        peers=(PeerConfig(BIRD, 64512),), announce=(N("198.19.3.0/26"),),
                        import_pools=(N("198.19.0.0/16"),), own_blocks=(N("198.19.3.0/26"),),
                        node_ip=NODE, state_dir=tmp_path, **kw)
    calls = LocRibMirror()
    return Speaker(cfg, calls, clock=clock), calls


def feed(sp, name):
    for line in (FIX / name).read_text().splitlines():
        ev = api.parse_line(line)
        if ev is not None:
            sp._on_event(ev)


def open_line(gr_time: int | None, with_gr: bool = True) -> str:
    """The recorded OPEN (session_up.jsonl line 2) with the GR capability's time changed or
    the capability removed."""
    obj = json.loads((FIX / "session_up.jsonl").read_text().splitlines()[1])
    caps = obj["neighbor"]["open"]["capabilities"]
    if not with_gr:
        del caps["64"]
    elif gr_time is None:
        del caps["64"]["time"]
    else:
        caps["64"]["time"] = gr_time
    return json.dumps(obj)


def ev(line: str):
    return api.parse_line(line)


def up_with(sp, gr_line: str, routes=(P1, P2)):
    sp._on_event(api.StateEvent(BIRD, "connected"))
    sp._on_event(ev(gr_line))
    sp._on_event(api.StateEvent(BIRD, "up"))
    sp._on_event(api.UpdateEvent(BIRD, [(p, BIRD, PathAttrs(BIRD)) for p in routes]))


def test_open_parsing_of_gr_capability():
    o = api.parse_line((FIX / "session_up.jsonl").read_text().splitlines()[1])
    assert o.gr_advertised and o.gr_restart_time == 120
    assert ev(open_line(3)).gr_restart_time == 3
    o = ev(open_line(None))
    assert o.gr_advertised and o.gr_restart_time is None
    o = ev(open_line(0, with_gr=False))
    assert not o.gr_advertised and o.gr_restart_time is None


async def test_stale_kept_then_replaced_and_swept_at_eor(tmp_path):
    clock = Clock()
    sp, calls = make(tmp_path, clock)
    up_with(sp, open_line(30), routes=(P1, P2))
    await asyncio.sleep(0)
    assert set(calls[-1]) == {P1, P2}
    assert sp.status().peers[0].gr_restart_time == 30

    sp._on_event(api.StateEvent(BIRD, "down", "closing connection"))
    await asyncio.sleep(0)
    st = sp.status().peers[0]
    assert st.state == "down" and st.stale_routes == 2
    assert set(sp.best_routes()) == {P1, P2}          # still in the Loc-RIB
    n_calls = len(calls)

    clock.t += 29                                      # within the restart time
    sp.tick()
    await asyncio.sleep(0)
    assert set(sp.best_routes()) == {P1, P2} and len(calls) == n_calls

    # A failed reconnect attempt does not restart the timer or drop anything.
    sp._on_event(api.StateEvent(BIRD, "connected"))
    sp._on_event(api.StateEvent(BIRD, "down", "closing connection"))
    assert sp.status().peers[0].stale_routes == 2

    # Back: re-announces P1 (with a new next hop) and a new P3, not P2; then End-of-RIB.
    up_with(sp, open_line(30), routes=())
    nh = A("198.18.0.7")
    sp._on_event(api.UpdateEvent(BIRD, [(P1, nh, PathAttrs(nh)), (P3, BIRD, PathAttrs(BIRD))]))
    await asyncio.sleep(0)
    assert sp.status().peers[0].stale_routes == 1     # P2 only
    assert set(calls[-1]) == {P1, P2, P3} and calls[-1][P1].next_hops == (nh,)
    clock.t += 5   # past the original restart deadline: the timer was stopped at "up"
    sp.tick()
    assert P2 in sp.best_routes()
    sp._on_event(api.EorEvent(BIRD, "ipv4", "unicast"))
    await asyncio.sleep(0)
    assert set(calls[-1]) == {P1, P3}
    st = sp.status().peers[0]
    assert st.stale_routes == 0 and st.eor_received and st.prefixes_accepted == 2


async def test_timer_expiry_removes_all_stale(tmp_path):
    clock = Clock()
    sp, calls = make(tmp_path, clock)
    up_with(sp, open_line(3))
    sp._on_event(api.StateEvent(BIRD, "down", "closing connection"))
    clock.t += 2.9
    sp.tick()
    assert set(sp.best_routes()) == {P1, P2}
    clock.t += 0.2
    sp.tick()
    await asyncio.sleep(0)
    assert calls[-1] == {} and sp.status().peers[0].stale_routes == 0
    assert sp.status().peers[0].prefixes_received == 0


async def test_real_timer_fires(tmp_path):
    """The internal timer (not only tick()) expires stale routes, with the real clock."""
    import time
    sp, calls = make(tmp_path, time.monotonic)
    up_with(sp, open_line(0, with_gr=True))  # time 0: flushed at once
    sp._on_event(api.StateEvent(BIRD, "down", "closing connection"))
    assert sp.best_routes() == {}
    sp, calls = make(tmp_path, time.monotonic)
    up_with(sp, open_line(2))
    t_down = time.monotonic()
    sp._on_event(api.StateEvent(BIRD, "down", "closing connection"))
    assert set(sp.best_routes()) == {P1, P2}
    # Nothing calls tick() here: only the speaker's own timer can flush them.
    await until(lambda: not sp.best_routes(), 15, "the 2 s restart timer to flush")
    # Not before the restart time (asyncio may fire a timer up to its clock resolution early).
    assert time.monotonic() - t_down >= 1.9
    await until(lambda: calls and calls[-1] == {}, 5, "the flush delivered")


async def test_stale_stays_until_stale_path_time_without_eor(tmp_path):
    clock = Clock()
    sp, calls = make(tmp_path, clock, gr_stale_path_time=10)
    up_with(sp, open_line(3))
    sp._on_event(api.StateEvent(BIRD, "down", "closing connection"))
    clock.t += 1
    up_with(sp, open_line(3), routes=(P1,))
    clock.t += 9.5
    sp.tick()
    assert set(sp.best_routes()) == {P1, P2}
    clock.t += 1
    sp.tick()
    assert set(sp.best_routes()) == {P1}


@pytest.mark.parametrize("reason", ["notification received (6,2)", "notification sent (4,0)",
                                    "stop, message [shutting down]"])
async def test_notification_or_admin_down_flushes(tmp_path, reason):
    sp, calls = make(tmp_path, Clock())
    up_with(sp, open_line(120))
    sp._on_event(api.StateEvent(BIRD, "down", reason))
    assert sp.best_routes() == {} and sp.status().peers[0].stale_routes == 0


async def test_recorded_peer_down_with_notification_flushes(tmp_path):
    sp, calls = make(tmp_path, Clock())
    feed(sp, "session_up.jsonl")
    feed(sp, "peer_down.jsonl")
    await asyncio.sleep(0)
    assert calls[-1] == {}


async def test_no_gr_capability_flushes(tmp_path):
    sp, _ = make(tmp_path, Clock())
    up_with(sp, open_line(0, with_gr=False))
    assert sp.status().peers[0].gr_restart_time is None
    sp._on_event(api.StateEvent(BIRD, "down", "closing connection"))
    assert sp.best_routes() == {}


async def test_fallback_restart_time_when_open_not_seen_or_time_missing(tmp_path):
    clock = Clock()
    sp, _ = make(tmp_path, clock, graceful_restart_time=7)
    # No OPEN seen (API helper respawned mid-session): our configured time.
    sp._on_event(api.StateEvent(BIRD, "up"))
    sp._on_event(api.UpdateEvent(BIRD, [(P1, BIRD, PathAttrs(BIRD))]))
    sp._on_event(api.StateEvent(BIRD, "down", "closing connection"))
    clock.t += 6.9
    sp.tick()
    assert P1 in sp.best_routes()
    clock.t += 0.2
    sp.tick()
    assert sp.best_routes() == {}
    # Capability present, time missing from the JSON: also ours.
    up_with(sp, open_line(None))
    sp._on_event(api.StateEvent(BIRD, "down", "closing connection"))
    clock.t += 6.9
    sp.tick()
    assert set(sp.best_routes()) == {P1, P2}
    clock.t += 0.2
    sp.tick()
    assert sp.best_routes() == {}


async def test_peer_returns_without_gr_drops_stale(tmp_path):
    sp, _ = make(tmp_path, Clock())
    up_with(sp, open_line(120))
    sp._on_event(api.StateEvent(BIRD, "down", "closing connection"))
    assert sp.status().peers[0].stale_routes == 2
    sp._on_event(ev(open_line(0, with_gr=False)))
    assert sp.best_routes() == {}


async def test_stop_flushes_stale(tmp_path):
    sp, calls = make(tmp_path, Clock())
    up_with(sp, open_line(120))
    sp._on_event(api.StateEvent(BIRD, "down", "closing connection"))
    await sp.stop()
    assert sp.best_routes() == {}

"""bgp.policy and the speaker's use of it: rejections counted per peer and reason."""
from __future__ import annotations

from ipaddress import IPv4Address as A, IPv4Network as N
from pathlib import Path
import asyncio

import pytest

from bgp_mirror import LocRibMirror
from bgp import api
from bgp.model import PathAttrs, PeerConfig, SpeakerConfig
from bgp.policy import ImportPolicy
from bgp.speaker import Speaker

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "exabgp"
BIRD, NODE = A("198.18.0.1"), A("198.18.0.2")
POLICY = ImportPolicy((N("198.19.0.0/16"),), (N("198.19.3.0/26"),), NODE)


@pytest.mark.parametrize("prefix,nh,reason", [
    ("198.19.1.0/26", BIRD, None),
    ("0.0.0.0/0", BIRD, "default"),
    ("203.0.113.0/24", BIRD, "outside_pool"),
    ("198.18.0.0/16", BIRD, "outside_pool"),
    ("198.0.0.0/8", BIRD, "outside_pool"),         # covers the pool, not inside it
    ("198.19.3.0/26", BIRD, "own_block"),
    ("198.19.3.0/28", BIRD, "own_block"),          # inside our block
    ("198.19.0.0/22", BIRD, "own_block"),          # covers our block
    ("198.19.1.0/26", NODE, "own_next_hop"),
])
def test_policy_reasons(prefix, nh, reason):
    assert POLICY.check(N(prefix), nh) == reason


def make_speaker(tmp_path, calls):
    cfg = SpeakerConfig(router_id=NODE, local_as=64512, local_address=NODE,
                        peers=(PeerConfig(BIRD, 64512),), announce=(N("198.19.3.0/26"),),
                        import_pools=(N("198.19.0.0/16"),), own_blocks=(N("198.19.3.0/26"),),
                        node_ip=NODE, state_dir=tmp_path)
    return Speaker(cfg, calls)


def feed(speaker, name):
    for line in (FIX / name).read_text().splitlines():
        ev = api.parse_line(line)
        if ev is not None:
            speaker._on_event(ev)


async def test_speaker_counts_rejections_and_coalesces(tmp_path):
    calls = LocRibMirror()
    sp = make_speaker(tmp_path, calls)
    feed(sp, "session_up.jsonl")
    await asyncio.sleep(0)  # on_changes runs on the next loop pass, once
    assert len(calls) == 1
    assert set(calls[0]) == {N("198.19.1.0/26"), N("198.19.2.0/26")}
    assert all(r.next_hops == (BIRD,) for r in calls[0].values())
    peer = sp.status().peers[0]
    assert peer.state == "established"
    assert (peer.prefixes_received, peer.prefixes_accepted, peer.prefixes_rejected) == (4, 2, 2)
    assert dict(peer.rejected_by_reason) == {"default": 1, "outside_pool": 1}
    assert sp.best_routes() == calls[0]

    feed(sp, "announce_withdraw.jsonl")  # add then withdraw 198.19.4.0/26 in one pass
    await asyncio.sleep(0)
    assert len(calls) == 2 and N("198.19.4.0/26") not in calls[1]

    feed(sp, "peer_down.jsonl")  # no withdraws arrive: the speaker flushes (pitfall 2)
    await asyncio.sleep(0)
    assert calls[-1] == {}
    peer = sp.status().peers[0]
    assert peer.state == "down" and peer.last_error == "closing connection"
    assert (peer.prefixes_received, peer.prefixes_rejected) == (0, 0)


async def test_accepted_route_later_rejected_is_withdrawn(tmp_path):
    calls = LocRibMirror()
    sp = make_speaker(tmp_path, calls)
    p = N("198.19.1.0/26")
    sp._on_event(api.UpdateEvent(BIRD, [(p, BIRD, PathAttrs(BIRD))]))
    await asyncio.sleep(0)
    assert p in calls[-1]
    sp._on_event(api.UpdateEvent(BIRD, [(p, NODE, PathAttrs(NODE))]))
    await asyncio.sleep(0)
    assert calls[-1] == {}
    assert dict(sp.status().peers[0].rejected_by_reason) == {"own_next_hop": 1}


async def test_one_update_accepted_rejected_accepted_without_prefix_limit(tmp_path):
    # No max_prefixes and no earlier rejection: the speaker's fast loop accepts until the
    # first rejection, then the general loop takes over for the rest of the UPDATE.
    calls = LocRibMirror()
    sp = make_speaker(tmp_path, calls)
    a, bad, c, own = N("198.19.1.0/26"), N("203.0.113.0/24"), N("198.19.2.0/26"), N("198.19.3.0/26")
    attrs = PathAttrs(BIRD)
    sp._on_event(api.UpdateEvent(BIRD, [(a, BIRD, attrs), (bad, BIRD, attrs), (c, BIRD, attrs),
                                        (own, BIRD, attrs)]))
    await asyncio.sleep(0)
    assert set(calls[-1]) == {a, c}
    peer = sp.status().peers[0]
    assert (peer.prefixes_received, peer.prefixes_accepted, peer.prefixes_rejected) == (4, 2, 2)
    assert dict(peer.rejected_by_reason) == {"outside_pool": 1, "own_block": 1}
    # A later UPDATE with rejections on record takes the general loop; re-announcing the
    # same paths changes nothing in the Loc-RIB (no delta handed on).
    before = len(calls)
    sp._on_event(api.UpdateEvent(BIRD, [(a, BIRD, attrs), (c, BIRD, attrs)]))
    await asyncio.sleep(0)
    assert len(calls) == before and set(sp.best_routes()) == {a, c}
    assert sp.status().peers[0].prefixes_rejected == 2

"""The speaker's production callback, ``on_changes``: key -> BestRoute|None deltas, consumed
as the agent does (tests/bgp_mirror.py), against the speaker's own Loc-RIB."""
from __future__ import annotations

import asyncio
import random
from ipaddress import IPv4Address as A, IPv4Network as N

from bgp_mirror import LocRibMirror

from bgp import api
from bgp.model import PathAttrs, PeerConfig, SpeakerConfig
from bgp.prefix import key_of
from bgp.speaker import Speaker

NODE = A("198.18.0.2")
PEERS = (A("198.18.0.1"), A("198.18.0.5"), A("198.18.0.6"))
POOL = N("198.19.0.0/16")


def make(tmp_path, **kw):
    cfg = SpeakerConfig(router_id=NODE, local_as=64512, local_address=NODE,
                        peers=tuple(PeerConfig(p, 64512) for p in PEERS),
                        announce=(N("198.19.3.0/26"),), import_pools=(POOL,),
                        own_blocks=(N("198.19.3.0/26"),), node_ip=NODE, state_dir=tmp_path, **kw)
    mirror = LocRibMirror()
    return Speaker(cfg, mirror), mirror


async def test_deltas_carry_only_what_changed(tmp_path):
    sp, mirror = make(tmp_path)
    bird = PEERS[0]
    p1, p2, p3 = N("198.19.1.0/26"), N("198.19.2.0/26"), N("198.19.4.0/26")
    sp._on_event(api.StateEvent(bird, "up"))
    sp._on_event(api.UpdateEvent(bird, [(p1, bird, PathAttrs(bird)), (p2, bird, PathAttrs(bird))]))
    await asyncio.sleep(0)
    assert set(mirror.deltas[-1]) == {key_of(p1), key_of(p2)}
    sp._on_event(api.UpdateEvent(bird, [(p3, bird, PathAttrs(bird))]))
    await asyncio.sleep(0)
    assert list(mirror.deltas[-1]) == [key_of(p3)] and mirror.deltas[-1][key_of(p3)].prefix == p3
    n = len(mirror)
    sp._on_event(api.UpdateEvent(bird, [(p3, bird, PathAttrs(bird))]))  # same path again
    await asyncio.sleep(0)
    assert len(mirror) == n                                           # no call at all
    # A raw withdrawal (prefix keys, bgp/exabgp_launch.py) is a None for that key.
    sp._on_event(api.UpdateEvent(bird, withdrawn_keys=[key_of(p1)]))
    await asyncio.sleep(0)
    assert mirror.deltas[-1] == {key_of(p1): None}
    assert mirror.loc_rib() == sp.best_routes() and set(mirror.loc_rib()) == {p2, p3}
    # End-of-RIB: a call with an empty delta (consumers waiting for convergence re-check).
    sp._on_event(api.EorEvent(bird, "ipv4", "unicast"))
    await asyncio.sleep(0)
    assert mirror.deltas[-1] == {}


async def test_rejected_paths_follow_raw_withdrawals_and_graceful_restart(tmp_path):
    sp, mirror = make(tmp_path)
    bird = PEERS[0]
    good, bad = N("198.19.1.0/26"), N("10.0.0.0/24")   # bad: outside the pool
    sp._on_event(api.StateEvent(bird, "up"))
    sp._on_event(api.UpdateEvent(bird, [(good, bird, PathAttrs(bird)),
                                        (bad, bird, PathAttrs(bird))]))
    await asyncio.sleep(0)
    st = sp.status().peers[0]
    assert (st.prefixes_accepted, st.prefixes_rejected) == (1, 1)
    assert dict(st.rejected_by_reason) == {"outside_pool": 1}
    assert set(sp.received_routes(bird)) == {good, bad}
    # Withdrawn by key, never decoded to a prefix: the rejected path goes and is not counted.
    sp._on_event(api.UpdateEvent(bird, withdrawn_keys=[key_of(bad)]))
    st = sp.status().peers[0]
    assert (st.prefixes_received, st.prefixes_rejected, st.rejected_by_reason) == (1, 0, ())
    # Kept across a graceful restart as stale, rejected paths included; the sweep at
    # End-of-RIB removes both halves.
    sp._on_event(api.UpdateEvent(bird, [(bad, bird, PathAttrs(bird))]))
    sp._on_event(api.StateEvent(bird, "down", "closing connection"))
    assert sp.status().peers[0].prefixes_received == 2
    sp._on_event(api.StateEvent(bird, "up"))
    sp._on_event(api.EorEvent(bird, "ipv4", "unicast"))
    await asyncio.sleep(0)
    st = sp.status().peers[0]
    assert (st.prefixes_received, st.stale_routes) == (0, 0)
    assert mirror.loc_rib() == {} == sp.best_routes()


async def test_mirror_of_deltas_equals_loc_rib_under_random_events(tmp_path):
    """Random UPDATEs (announce, re-announce with another next hop, decoded and raw
    withdrawals), policy changes, session flaps with and without graceful restart and
    End-of-RIB from three peers: after every loop pass the table rebuilt from the deltas is
    the speaker's Loc-RIB."""
    rng = random.Random(16)
    sp, mirror = make(tmp_path)
    prefixes = [N(f"198.19.{i}.0/26") for i in range(8, 40)] + [N("10.1.0.0/24")]
    hops = [A(f"198.18.0.{i}") for i in (10, 11, 12)] + [NODE]   # NODE: rejected next hop
    for p in PEERS:
        sp._on_event(api.StateEvent(p, "up"))
    for step in range(400):
        peer = rng.choice(PEERS)
        roll = rng.random()
        if roll < 0.5:
            nh = rng.choice(hops)
            attrs = PathAttrs(nh, local_pref=rng.choice((None, 200)))
            sp._on_event(api.UpdateEvent(peer, [(q, nh, attrs)
                                                for q in rng.sample(prefixes, rng.randint(1, 6))]))
        elif roll < 0.7:
            gone = rng.sample(prefixes, rng.randint(1, 4))
            if rng.random() < 0.5:
                sp._on_event(api.UpdateEvent(peer, withdrawn=gone))
            else:
                sp._on_event(api.UpdateEvent(peer, withdrawn_keys=[key_of(q) for q in gone]))
        elif roll < 0.8:
            block = rng.choice(prefixes[:-1]).supernet(new_prefix=24)
            sp.set_expected_next_hops({block: rng.choice(hops[:3])} if rng.random() < 0.7 else {})
        elif roll < 0.9:
            reason = rng.choice(("closing connection", "notification received (6,2)"))
            sp._on_event(api.StateEvent(peer, "down", reason))
            sp._on_event(api.StateEvent(peer, "up"))
        else:
            sp._on_event(api.EorEvent(peer, "ipv4", "unicast"))
        await asyncio.sleep(0)
        assert mirror.loc_rib() == sp.best_routes(), f"step {step}"
    await asyncio.sleep(0)
    assert mirror.loc_rib() == sp.best_routes() and len(mirror.deltas) > 50

"""Route reflection (RFC 4456): targets, ORIGINATOR_ID / CLUSTER_LIST, withdrawal on
client loss, and the per-neighbor commands the speaker sends (through a fake session)."""
from __future__ import annotations

from ipaddress import IPv4Address as A, IPv4Network as N

from bgp import api, reflector
from bgp.model import PathAttrs, PeerConfig, SpeakerConfig
from bgp.rib import Rib
from bgp.speaker import Speaker

C1, C2, NC = A("198.18.0.11"), A("198.18.0.12"), A("198.18.0.13")
EB = A("198.18.0.14")
NODE, CLUSTER = A("198.18.0.10"), A("198.18.0.100")
P = N("198.19.11.0/26")
CLIENTS = {C1: True, C2: True, NC: False}


def test_targets():
    assert reflector.targets(C1, CLIENTS) == [C2, NC]    # client -> everyone else
    assert reflector.targets(NC, CLIENTS) == [C1, C2]    # non-client -> clients only
    assert reflector.targets(NC, {NC: False, A("198.18.0.15"): False}) == []
    assert reflector.targets(EB, CLIENTS) == []          # eBGP-learned: not reflected


def test_originator_and_cluster_list():
    rib = Rib(64512)
    rib.set_peer(C1, 64512, A("10.0.0.1"))
    rib.update(C1, [(P, PathAttrs(C1, local_pref=100))])
    r = reflector.reflect(rib.best_path(P), P, CLUSTER)
    assert r.originator_id == A("10.0.0.1") and r.cluster_list == (CLUSTER,)
    assert r.attrs.next_hop == C1                         # unchanged
    # Already reflected once: ORIGINATOR_ID kept, our cluster prepended.
    rib.update(C1, [(P, PathAttrs(C1, originator_id=A("10.0.0.9"),
                                  cluster_list=(A("198.18.0.200"),)))])
    r = reflector.reflect(rib.best_path(P), P, CLUSTER)
    assert r.originator_id == A("10.0.0.9") and r.cluster_list == (CLUSTER, A("198.18.0.200"))
    # No OPEN seen: the peer address stands in for its BGP identifier.
    rib2 = Rib(64512)
    rib2.update(C2, [(P, PathAttrs(C2))])
    assert reflector.reflect(rib2.best_path(P), P, CLUSTER).originator_id == C2


def test_command_text():
    line = api.cmd_announce_path(P, PathAttrs(C1, local_pref=100, med=5,
                                              communities=("64512:1",)),
                                 C2, C1, (CLUSTER, A("198.18.0.200")))
    assert line == ("neighbor 198.18.0.12 announce route 198.19.11.0/26 next-hop 198.18.0.11 "
                    "origin igp local-preference 100 med 5 community [ 64512:1 ] "
                    "originator-id 198.18.0.11 cluster-list [ 198.18.0.100 198.18.0.200 ]")


class FakeSession:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.closed = False

    async def command(self, line: str) -> None:
        self.lines.append(line)


def rr_speaker(tmp_path):
    peers = (PeerConfig(C1, 64512, rr_client=True), PeerConfig(C2, 64512, rr_client=True),
             PeerConfig(NC, 64512), PeerConfig(EB, 65001))
    cfg = SpeakerConfig(router_id=NODE, local_as=64512, local_address=NODE, peers=peers,
                        announce=(), import_pools=(N("198.19.0.0/16"),), own_blocks=(),
                        node_ip=NODE, state_dir=tmp_path, route_reflector_cluster_id=CLUSTER)
    return Speaker(cfg, lambda r: None)


async def test_speaker_reflects_and_withdraws(tmp_path):
    sp = rr_speaker(tmp_path)
    s = FakeSession()
    q = N("198.19.12.0/26")
    sp._on_event(api.UpdateEvent(C1, [(P, C1, PathAttrs(C1))]))
    sp._on_event(api.UpdateEvent(NC, [(q, NC, PathAttrs(NC))]))
    await sp.rib_out.sync(s)
    refl = [ln for ln in s.lines if "originator-id" in ln]
    assert sorted(refl) == sorted([
        f"neighbor {C2} announce route {P} next-hop {C1} origin igp originator-id {C1} "
        f"cluster-list [ {CLUSTER} ]",
        f"neighbor {NC} announce route {P} next-hop {C1} origin igp originator-id {C1} "
        f"cluster-list [ {CLUSTER} ]",
        f"neighbor {C1} announce route {q} next-hop {NC} origin igp originator-id {NC} "
        f"cluster-list [ {CLUSTER} ]",
        f"neighbor {C2} announce route {q} next-hop {NC} origin igp originator-id {NC} "
        f"cluster-list [ {CLUSTER} ]"])
    assert not any(f"neighbor {EB}" in ln for ln in s.lines)
    st = {p.address: p.reflected_routes for p in sp.status().peers}
    assert st == {C1: 1, C2: 2, NC: 1, EB: 0}
    # Nothing changed: nothing re-sent.
    s.lines.clear()
    await sp.rib_out.sync(s)
    assert s.lines == []
    # Looped paths are dropped on import.
    sp._on_event(api.UpdateEvent(C2, [(N("198.19.13.0/26"), C2,
                                       PathAttrs(C2, cluster_list=(CLUSTER,)))]))
    sp._on_event(api.UpdateEvent(C2, [(N("198.19.14.0/26"), C2,
                                       PathAttrs(C2, originator_id=NODE))]))
    assert dict({p.address: p for p in sp.status().peers}[C2].rejected_by_reason) == {
        "cluster_loop": 1, "originator_loop": 1}
    # The client's session ends with a NOTIFICATION: what came from it is withdrawn.
    sp._on_event(api.StateEvent(C1, "up"))
    sp._on_event(api.StateEvent(C1, "down", "notification received (6,2)"))
    await sp.rib_out.sync(s)
    assert sorted(ln for ln in s.lines if "withdraw" in ln) == [
        f"neighbor {C2} withdraw attributes nlri {P}",
        f"neighbor {NC} withdraw attributes nlri {P}"]


async def test_set_peers_flushes_removed_and_replays_to_added(tmp_path):
    sp = rr_speaker(tmp_path)
    s = FakeSession()
    sp.set_announcements([N("198.19.10.0/26")])
    sp._on_event(api.UpdateEvent(C1, [(P, C1, PathAttrs(C1))]))
    await sp.rib_out.sync(s)
    new = A("198.18.0.16")
    sp.set_peers([PeerConfig(C2, 64512, rr_client=True), PeerConfig(NC, 64512),
                  PeerConfig(new, 64512, rr_client=True)])
    assert sp.best_routes() == {}                       # C1 removed: flushed
    assert {p.address for p in sp.status().peers} == {C2, NC, new}
    s.lines.clear()
    await sp.rib_out.sync(s)
    assert f"neighbor {C2} withdraw attributes nlri {P}" in s.lines
    assert f"neighbor {new} announce attributes next-hop self nlri 198.19.10.0/26" in s.lines
    # Events for the removed peer are ignored (no ghost status entry).
    sp._on_event(api.StateEvent(C1, "down", "stop, message [removed]"))
    assert C1 not in {p.address for p in sp.status().peers}

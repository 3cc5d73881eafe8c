"""Import policy additions (extra ranges, default, own node IP, wrong next hop, max
prefixes with reject/teardown, RFC 4456 loops), export commands and AS_SET length."""
from __future__ import annotations

import json
from ipaddress import IPv4Address as A, IPv4Network as N

import pytest

from bgp_mirror import LocRibMirror
from bgp import api
from bgp.errors import ConfigError
from bgp.model import ExportRoute, PathAttrs, PeerConfig, SpeakerConfig
from bgp.policy import ImportPolicy
from bgp.rib import Rib
from bgp.adj_rib_out import by_communities as _by_communities
from bgp.speaker import Speaker

BIRD, NODE, OTHER = A("198.18.0.1"), A("198.18.0.2"), A("198.18.0.5")
EBGP = A("198.18.0.9")
B5 = N("198.19.5.0/26")     # OTHER's block
POL = ImportPolicy((N("198.19.0.0/16"),), (N("198.19.3.0/26"),), NODE,
                   import_extra=(N("198.18.0.0/24"), N("10.96.0.0/12")),
                   expected_next_hops={B5: OTHER}, router_id=NODE, cluster_id=A("1.1.1.1"))


@pytest.mark.parametrize("prefix,nh,attrs,enforce,reason", [
    ("10.96.0.0/16", BIRD, None, False, None),                 # import_extra
    ("10.0.0.0/8", BIRD, None, False, "outside_pool"),
    ("198.18.0.0/24", BIRD, None, False, "own_node_ip"),       # contains our node IP
    ("198.18.0.2/32", BIRD, None, False, "own_node_ip"),
    ("198.18.0.8/30", BIRD, None, False, None),
    ("198.19.5.0/26", OTHER, None, True, None),
    ("198.19.5.0/26", BIRD, None, True, "wrong_next_hop"),
    ("198.19.5.16/28", BIRD, None, True, "wrong_next_hop"),    # inside the block
    ("198.19.5.0/26", BIRD, None, False, None),                # not enforced (eBGP)
    ("198.19.6.0/26", BIRD, None, True, None),                 # unknown block
    ("198.19.1.0/26", BIRD, PathAttrs(BIRD, originator_id=NODE), False, "originator_loop"),
    ("198.19.1.0/26", BIRD, PathAttrs(BIRD, cluster_list=(A("9.9.9.9"), A("1.1.1.1"))), False,
     "cluster_loop"),
    ("198.19.1.0/26", BIRD, PathAttrs(BIRD, cluster_list=(A("9.9.9.9"),)), False, None),
])
def test_policy_reasons(prefix, nh, attrs, enforce, reason):
    assert POL.check(N(prefix), nh, attrs, enforce_next_hop=enforce) == reason


def test_default_route_only_when_configured():
    assert POL.check(N("0.0.0.0/0"), BIRD) == "default"
    pol = ImportPolicy((N("198.19.0.0/16"),), (), NODE, accept_default=True)
    assert pol.check(N("0.0.0.0/0"), BIRD) is None
    assert pol.check(N("0.0.0.0/0"), NODE) == "own_next_hop"


def test_enforce_next_hop_default_follows_ibgp():
    assert PeerConfig(BIRD, 64512).enforces_next_hop(64512)
    assert not PeerConfig(BIRD, 65001).enforces_next_hop(64512)
    assert PeerConfig(BIRD, 65001, enforce_next_hop=True).enforces_next_hop(64512)


def make(tmp_path, peers, **kw):
    base = dict(router_id=NODE, local_as=64512, local_address=NODE, peers=peers,
                announce=(N("198.19.3.0/26"),), import_pools=(N("198.19.0.0/16"),),
                own_blocks=(N("198.19.3.0/26"),), node_ip=NODE, state_dir=tmp_path)
    base.update(kw)
    calls = LocRibMirror()
    return Speaker(SpeakerConfig(**base), calls), calls


def upd(peer, *routes):
    return api.UpdateEvent(peer, [(N(p), nh, PathAttrs(nh)) for p, nh in routes])


async def test_wrong_next_hop_counted_and_reevaluated(tmp_path):
    sp, calls = make(tmp_path, (PeerConfig(BIRD, 64512), PeerConfig(EBGP, 65001)),
                     expected_next_hops={B5: OTHER})
    sp._on_event(upd(BIRD, ("198.19.5.0/26", BIRD), ("198.19.6.0/26", A("198.18.0.6"))))
    sp._on_event(upd(EBGP, ("198.19.5.0/26", EBGP)))
    st = {p.address: p for p in sp.status().peers}
    assert dict(st[BIRD].rejected_by_reason) == {"wrong_next_hop": 1}
    assert st[EBGP].rejected_by_reason == ()
    assert sp.best_routes()[B5].next_hops == (EBGP,)
    # The datastore now says 198.19.6.0/26 is OTHER's and 198.19.5.0/26 is BIRD's.
    sp.set_expected_next_hops({N("198.19.6.0/26"): OTHER, B5: BIRD})
    st = {p.address: p for p in sp.status().peers}
    assert dict(st[BIRD].rejected_by_reason) == {"wrong_next_hop": 1}
    assert set(sp.best_routes()) == {B5}
    assert B5 in sp.rib_in.rib.adj_rib_in(BIRD)        # BIRD's path now accepted
    assert N("198.19.6.0/26") not in sp.rib_in.rib.adj_rib_in(BIRD)
    # Pre-policy: the accepted path and the one now rejected, with their attributes.
    assert set(sp.received_routes(BIRD)) == {B5, N("198.19.6.0/26")}
    assert sp.received_routes(BIRD)[N("198.19.6.0/26")].next_hop == A("198.18.0.6")
    # Withdrawing the rejected path forgets it, counts included.
    sp._on_event(api.UpdateEvent(BIRD, withdrawn=[N("198.19.6.0/26")]))
    assert set(sp.received_routes(BIRD)) == {B5}
    assert {p.address: p for p in sp.status().peers}[BIRD].rejected_by_reason == ()


async def test_max_prefixes_reject(tmp_path):
    sp, _ = make(tmp_path, (PeerConfig(BIRD, 64512, max_prefixes=2),))
    sp._on_event(upd(BIRD, *[(f"198.19.{i}.0/26", BIRD) for i in (10, 11, 12, 13)]))
    st = sp.status().peers[0]
    assert (st.prefixes_accepted, dict(st.rejected_by_reason)) == (2, {"max_prefixes": 2})
    assert st.max_prefixes_teardowns == 0
    # Re-announcing an accepted prefix is not a new one; withdrawing one makes room.
    sp._on_event(upd(BIRD, ("198.19.10.0/26", BIRD)))
    assert sp.status().peers[0].prefixes_accepted == 2
    sp._on_event(api.UpdateEvent(BIRD, withdrawn=[N("198.19.10.0/26")]))
    sp._on_event(upd(BIRD, ("198.19.14.0/26", BIRD)))
    st = sp.status().peers[0]
    assert st.prefixes_accepted == 2 and N("198.19.14.0/26") in sp.best_routes()
    assert not sp.rib_out.due.teardown


async def test_max_prefixes_teardown_queues_cease_once(tmp_path):
    sp, _ = make(tmp_path, (PeerConfig(BIRD, 64512, max_prefixes=1,
                                       max_prefixes_action="teardown"),))
    sp._on_event(api.StateEvent(BIRD, "up"))
    sp._on_event(upd(BIRD, ("198.19.10.0/26", BIRD), ("198.19.11.0/26", BIRD)))
    sp._on_event(upd(BIRD, ("198.19.12.0/26", BIRD)))
    st = sp.status().peers[0]
    assert st.max_prefixes_teardowns == 1 and sp.rib_out.due.teardown == {BIRD}
    assert dict(st.rejected_by_reason) == {"max_prefixes": 2}
    assert api.cmd_teardown(BIRD, 1) == "neighbor 198.18.0.1 teardown 1"
    # Our Cease makes ExaBGP report "notification sent (6,1)": flushed, no GR.
    sp._on_event(api.StateEvent(BIRD, "down", "notification sent (6,1)"))
    assert sp.best_routes() == {} and sp.status().peers[0].stale_routes == 0


def test_invalid_policy_config_rejected(tmp_path):
    from bgp.exabgp_config import render_config
    for peers in ((PeerConfig(BIRD, 64512, max_prefixes_action="drop"),),
                  (PeerConfig(BIRD, 65001, rr_client=True),)):
        with pytest.raises(ConfigError):
            render_config(SpeakerConfig(
                router_id=NODE, local_as=64512, local_address=NODE, peers=peers, announce=(),
                import_pools=(), own_blocks=(), node_ip=NODE, state_dir=tmp_path), tmp_path / "s")
    sp, _ = make(tmp_path, (PeerConfig(BIRD, 64512),))
    with pytest.raises(ConfigError):
        sp.set_exports([ExportRoute(N("10.96.0.0/12"), ("64512:100000",))])


def test_export_commands_grouped_by_communities():
    lines = api.cmds_bulk_announce([N("10.96.0.0/12")], communities=("64512:100", "64512:200"))
    assert lines == ["announce attributes next-hop self community [ 64512:100 64512:200 ] "
                     "nlri 10.96.0.0/12"]
    groups = _by_communities([N("10.96.0.0/12"), N("198.19.3.0/26"), N("10.100.0.0/16")],
                             {N("10.96.0.0/12"): ("64512:100",),
                              N("10.100.0.0/16"): ("64512:100",)})
    assert groups == [((), [N("198.19.3.0/26")]),
                      (("64512:100",), [N("10.96.0.0/12"), N("10.100.0.0/16")])]


def test_as_set_counts_one():
    line = json.dumps({"exabgp": "5.0.0", "type": "update", "neighbor": {
        "address": {"local": "198.18.0.2", "peer": "198.18.0.9"}, "message": {"update": {
            "attribute": {"as-path": {"0": {"element": "as-sequence", "value": [65001]},
                                      "1": {"element": "as-set", "value": [7, 8, 9]}}},
            "announce": {"ipv4 unicast": {"198.18.0.9": [{"nlri": "198.19.9.0/26"}]}}}}}})
    _, _, attrs = api.parse_line(line).announced[0]
    assert attrs.as_path == (65001, 7, 8, 9) and attrs.path_length() == 2
    rib = Rib(64512)
    rib.set_peer(EBGP, 65001)
    rib.set_peer(BIRD, 65002)
    p = N("198.19.9.0/26")
    rib.update(EBGP, [(p, attrs)])
    rib.update(BIRD, [(p, PathAttrs(BIRD, as_path=(65002, 1, 2)))])
    assert rib.loc_rib()[p].next_hops == (A("198.18.0.9"),)   # 2 < 3 thanks to the AS_SET

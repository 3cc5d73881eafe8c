"""bgp.rib: best-path selection (RFC 4271 §9.1.2.2 subset), ECMP, flush on session down."""
from __future__ import annotations

from ipaddress import IPv4Address as A, IPv4Network as N

from hypothesis import given, strategies as st

from bgp.model import PathAttrs
from bgp.prefix import key_of as K, parse
from bgp.rib import Rib

P = N("198.19.1.0/26")
R1, R2, R3 = A("198.18.0.11"), A("198.18.0.12"), A("198.18.0.13")
LOCAL_AS = 64512


def rib_with(*peers: tuple[A, int]) -> Rib:
    rib = Rib(LOCAL_AS)
    for addr, asn in peers:
        rib.set_peer(addr, asn)
    return rib


def attrs(nh: A, **kw) -> PathAttrs:
    return PathAttrs(next_hop=nh, **kw)


def test_single_path_and_withdraw():
    rib = rib_with((R1, LOCAL_AS))
    assert rib.update(R1, [(P, attrs(R1))]).keys() == {K(P)}
    best = rib.loc_rib()[P]
    assert best.next_hops == (R1,) and best.peers == (R1,)
    assert rib.update(R1, withdrawn=[K(P)]) == {K(P): None}
    assert rib.loc_rib() == {}
    assert rib.take_changes() == {K(P): None}      # the latest state of each changed key
    assert rib.take_changes() == {}


def test_tables_are_keyed_by_int_and_keep_the_announced_prefix_object():
    rib = rib_with((R1, LOCAL_AS), (R2, LOCAL_AS))
    p = parse("198.19.7.0/26")
    rib.update(R1, [(p, attrs(R1, local_pref=200))])
    rib.update(R2, [(P, attrs(R2))])
    rib.update(R2, [(N("198.19.7.0/26"), attrs(R2))])     # a plain IPv4Network works too
    assert set(rib._loc) == {K(p), K(P)} and all(type(k) is int for k in rib._loc)
    assert rib.loc_rib()[p].prefix is p
    delta = rib.update(R1, withdrawn=[K(p)])            # falls back to R2's path ...
    assert delta[K(p)].next_hops == (R2,) and delta[K(p)].prefix is p   # ... same object
    view = rib.loc_rib_view()
    assert view[N("198.19.7.0/26")].next_hops == (R2,) and P in view and len(view) == 2
    assert N("198.19.9.0/26") not in view and "x" not in view
    assert sorted(map(str, view)) == ["198.19.1.0/26", "198.19.7.0/26"]
    assert rib.adj_rib_in(R2) == {P: attrs(R2), p: attrs(R2)}
    assert rib.update(R1, withdrawn=[K(p)]) == {}       # nothing of R1's left there


def test_highest_local_pref_wins():
    rib = rib_with((R1, LOCAL_AS), (R2, LOCAL_AS))
    rib.update(R1, [(P, attrs(R1, local_pref=100))])
    rib.update(R2, [(P, attrs(R2, local_pref=200, as_path=(1, 2, 3)))])
    assert rib.loc_rib()[P].next_hops == (R2,)


def test_shortest_as_path_then_origin():
    rib = rib_with((R1, 65001), (R2, 65002), (R3, 65003))
    rib.update(R1, [(P, attrs(R1, as_path=(65001, 7)))])
    rib.update(R2, [(P, attrs(R2, as_path=(65002,), origin=2))])
    rib.update(R3, [(P, attrs(R3, as_path=(65003,), origin=0))])
    best = rib.loc_rib()[P]
    assert best.next_hops == (R3,) and best.as_path == (65003,)


def test_med_only_compared_within_same_neighbor_as():
    rib = rib_with((R1, 65001), (R2, 65001), (R3, 65003))
    rib.update(R1, [(P, attrs(R1, as_path=(65001,), med=50))])
    rib.update(R2, [(P, attrs(R2, as_path=(65001,), med=10))])
    rib.update(R3, [(P, attrs(R3, as_path=(65003,), med=99))])
    # R1 loses to R2 on MED; R3 is from another AS so its MED is not compared: ECMP R2+R3.
    assert rib.loc_rib()[P].next_hops == (R2, R3)


def test_ebgp_preferred_over_ibgp():
    rib = rib_with((R1, LOCAL_AS), (R2, 65002))
    rib.update(R1, [(P, attrs(R1))])
    rib.update(R2, [(P, attrs(R2, as_path=(65002,)))])
    # eBGP path is longer (1 vs 0) so iBGP wins on AS path first...
    assert rib.loc_rib()[P].next_hops == (R1,)
    rib.update(R1, [(P, attrs(R1, as_path=(65009,)))])
    # ...equal lengths: eBGP wins.
    assert rib.loc_rib()[P].next_hops == (R2,)


def test_ecmp_when_tied_before_router_id_and_deterministic_order():
    rib = rib_with((R2, LOCAL_AS), (R1, LOCAL_AS))
    rib.update(R2, [(P, attrs(R2))])
    rib.update(R1, [(P, attrs(R1))])
    best = rib.loc_rib()[P]
    assert best.next_hops == (R1, R2) and best.peers == (R1, R2)


def test_flush_peer_falls_back_and_removes():
    rib = rib_with((R1, LOCAL_AS), (R2, LOCAL_AS))
    q = N("198.19.2.0/26")
    rib.update(R1, [(P, attrs(R1, local_pref=300)), (q, attrs(R1))])
    rib.update(R2, [(P, attrs(R2))])
    assert rib.loc_rib()[P].next_hops == (R1,)
    assert rib.flush_peer(R1).keys() == {K(P), K(q)}
    assert rib.loc_rib()[P].next_hops == (R2,) and q not in rib.loc_rib()
    assert rib.adj_rib_in(R1) == {}
    assert rib.flush_peer(R1) == {}


def test_implicit_withdraw_replaces_path():
    rib = rib_with((R1, LOCAL_AS))
    rib.update(R1, [(P, attrs(R1))])
    rib.update(R1, [(P, attrs(R3))])
    assert rib.loc_rib()[P].next_hops == (R3,)
    assert len(rib.adj_rib_in(R1)) == 1


def test_unchanged_update_reports_no_change():
    rib = rib_with((R1, LOCAL_AS))
    rib.update(R1, [(P, attrs(R1))])
    assert rib.update(R1, [(P, attrs(R1))]) == {}


@given(st.lists(st.tuples(st.sampled_from([R1, R2, R3]), st.integers(0, 3),
                          st.integers(50, 300)), max_size=12))
def test_best_is_order_independent(ops):
    """Whatever order peers' paths arrive in, the Loc-RIB is the same."""
    def build(seq):
        rib = rib_with((R1, LOCAL_AS), (R2, LOCAL_AS), (R3, 65003))
        for peer, plen, lp in seq:
            rib.update(peer, [(P, attrs(peer, as_path=tuple(range(1, plen + 1)), local_pref=lp))])
        return rib.loc_rib()
    last = {}
    for peer, plen, lp in ops:
        last[peer] = (peer, plen, lp)
    assert build(list(last.values())) == build(list(reversed(list(last.values()))))

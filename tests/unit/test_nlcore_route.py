"""nlcore.route: the one encoder of route requests, for felix's FIB writes and cni's pod routes.

Golden bytes were captured from iproute2 6.1 (``strace -s 256 -xx -e trace=sendmsg,sendto ip -n
<ns> route ...`` in a throwaway namespace where h0 had ifindex 3); the adapters' goldens are in
test_felix_codec.py and test_cni_rtnl.py.
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from nlcore import route as R
from nlcore import wire as W

POD = 0xC6130105  # 198.19.1.5


def body(msg: bytes) -> str:
    length, *_ = struct.unpack_from("=IHHII", msg)
    assert length == len(msg)
    return msg[16:].hex()


@pytest.mark.parametrize("kwargs, payload", [
    # ip route show table main proto 90
    (dict(table=254, protocol=90), "02000000005a00000000000008000f00fe000000"),
    # ip route show table 1000 proto 90 dev h0
    (dict(table=1000, protocol=90, oif=3),
     "02000000005a00000000000008000f00e80300000800040003000000"),
])
def test_dump_request_matches_iproute2(kwargs, payload):
    msg = R.encode_route_dump(5, **kwargs)
    assert struct.unpack_from("=HHI", msg, 4) == (W.RTM_GETROUTE, W.NLM_F_REQUEST | W.NLM_F_DUMP, 5)
    assert body(msg) == payload


def test_felix_dump_request_is_the_iproute2_one():
    from felix import codec
    assert body(codec.encode_route_dump_request(seq=5, table=254, protocol=90)) == \
        "02000000005a00000000000008000f00fe000000"


def test_delete_without_device_matches_any_scope_and_next_hop():
    # ip route del 198.19.1.5/32 proto 90: scope NOWHERE, type UNSPEC, only RTA_DST
    msg = R.encode_route("delete", 1, POD, 32)
    assert body(msg) == "02200000fe5aff000000000008000100c6130105"
    # ip route del 198.19.1.5/32 dev h0 scope link proto 90: only the route through h0
    msg = R.encode_route("delete", 1, POD, 32, oif=3, scope=W.RT_SCOPE_LINK)
    assert body(msg) == "02200000fe5afd000000000008000100c61301050800040003000000"


def test_unknown_action_is_refused_by_both_encoders():
    for encode in (R.encode_route, R.encode_route_general):
        with pytest.raises(ValueError, match="unknown action 'frob'"):
            encode("frob", 1, POD, 32, gateway=1)


addrs = st.integers(0, 2**32 - 1)


@st.composite
def requests(draw):
    plen = draw(st.integers(0, 32))
    dst = draw(addrs) & ((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF)
    hops = draw(st.one_of(st.just(()), st.lists(
        st.builds(lambda g, o, on, w: R.nexthop(g, o, onlink=on, weight=w), addrs,
                  st.integers(0, 50), st.booleans(), st.integers(1, 256)), min_size=2, max_size=3)))
    return dict(
        action=draw(st.sampled_from(["add", "replace", "delete"])), seq=draw(addrs), dst=dst,
        dst_len=plen, gateway=draw(st.one_of(st.none(), addrs)),
        oif=draw(st.sampled_from([0, 0, 3, 70000])),
        scope=draw(st.sampled_from([None, None, W.RT_SCOPE_UNIVERSE, W.RT_SCOPE_LINK])),
        rtype=draw(st.sampled_from([W.RTN_UNICAST, W.RTN_BLACKHOLE])), onlink=draw(st.booleans()),
        metric=draw(st.sampled_from([0, 0, 1, 2**32 - 1])), multipath=hops,
        table=draw(st.sampled_from([254, 255, 1, 256, 1000])), protocol=draw(st.integers(0, 255)),
        pid=draw(st.sampled_from([0, 7])), ack=draw(st.booleans()))


@settings(max_examples=800, deadline=None)
@given(requests())
def test_one_call_packers_give_the_general_encoders_bytes(req):
    action, seq, dst, dst_len = req.pop("action"), req.pop("seq"), req.pop("dst"), req.pop("dst_len")
    assert R.encode_route(action, seq, dst, dst_len, **req) == \
        R.encode_route_general(action, seq, dst, dst_len, **req)


def test_the_fast_shapes_take_the_one_call_packers(monkeypatch):
    # Proves the property above compares two code paths for the shapes a route burst uses.
    calls = []
    monkeypatch.setattr(R, "encode_route_general", lambda *a, **k: calls.append(a))
    R.encode_route("delete", 1, POD, 32, ack=False)
    R.encode_route("replace", 1, POD, 32, gateway=POD + 1)
    R.encode_route("add", 1, POD, 32, gateway=POD + 1, oif=3, onlink=True)
    assert calls == []
    R.encode_route("replace", 1, POD, 32, oif=3, scope=W.RT_SCOPE_LINK)  # no gateway: general
    assert len(calls) == 1


def test_nexthop_layout():
    # nexthop via 198.18.0.3 dev d0 weight 3 (from the felix ECMP golden)
    assert R.nexthop(0xC6120003, 3, weight=3).hex() == "100000020300000008000500c6120003"

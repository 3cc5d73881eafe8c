"""nlcore.prefixkey: the one owner of the prefix key bgp's RIBs and felix's tables share."""
from __future__ import annotations

from ipaddress import IPv4Network

import pytest
from hypothesis import given, strategies as st

from nlcore import prefixkey as K


@st.composite
def networks(draw):
    plen = draw(st.integers(0, 32))
    mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
    return IPv4Network((draw(st.integers(0, 2**32 - 1)) & mask, plen))


@given(networks())
def test_key_roundtrip_and_the_users_agree(net):
    from bgp.prefix import Prefix, from_key, key_of, parse, unpack_keys
    from felix.routes import dst_key
    from felix import codec
    k = K.key(int(net.network_address), net.prefixlen)
    assert K.unkey(k) == (int(net.network_address), net.prefixlen)
    assert K.key_of(net) == dst_key(net) == key_of(net) == parse(str(net)).key == k
    assert from_key(k) == net and Prefix(str(net)).key == k
    nbytes = (net.prefixlen + 7) // 8
    assert unpack_keys(bytes([net.prefixlen]) + net.network_address.packed[:nbytes]) == [k]
    msg = codec.encode_route("delete", _Route(net), seq=1, ifindex={}.__getitem__)
    assert codec.dst_key_of(msg, 0, len(msg)) == k


class _Route:
    """Just what felix's delete encoder reads."""

    def __init__(self, dst):
        self.dst, self.metric, self.multipath = dst, 0, ()


def test_unique_and_dense():
    keys = {K.key(a << (32 - n) if n else 0, n) for n in range(0, 9) for a in range(1 << n)}
    assert keys == set(range(1, 1 << 9))


@pytest.mark.parametrize("bad", [0, -1, 1 << 33, "5", 2.0, True])
def test_unkey_refuses_what_no_prefix_has(bad):
    with pytest.raises(ValueError, match="not a prefix key"):
        K.unkey(bad)


class _Carrier(IPv4Network):
    def __init__(self, text, key):
        super().__init__(text)
        setattr(self, K.CARRIED, key)


def test_a_carried_key_is_shared_by_its_public_name_and_checked():
    net = IPv4Network("198.19.4.0/26")
    own = int(str(K.key_of(net)))  # an int object of the right value that nobody else holds
    assert K.key_of(_Carrier(str(net), own)) is own
    assert K.key_of(_Carrier(str(net), 12345)) == K.key_of(net) != 12345


def test_felix_gets_bgps_int_object_through_the_public_name():
    from bgp.prefix import parse
    from felix.routes import dst_key
    p = parse("198.19.4.64/26")
    assert dst_key(p) is p.key

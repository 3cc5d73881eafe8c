"""bgp.prefix: the cached-hash Prefix and its fast parser agree with ipaddress."""
from ipaddress import IPv4Network

import pytest
from hypothesis import given, strategies as st

from bgp import prefix as P


@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_parse_equals_ipaddress(addr, plen):
    net = IPv4Network((addr, plen), strict=False)
    p = P.parse(str(net))
    assert isinstance(p, IPv4Network)
    assert p == net and net == p and hash(p) == hash(net)
    assert str(p) == str(net) and p.prefixlen == plen
    assert p.broadcast_address == net.broadcast_address
    assert {net: 1}[p] == 1 and p in {net}


@pytest.mark.parametrize("text", ["10.1.2.1/26", "10.1.2/26", "10.1.2.0/33", "x/2", "10.1.2.0",
                                  "10.1.2.0/-1", "256.1.1.0/24", "10.1.2.010/32", "0x0a.0.0.0/8",
                                  "10.1.2.0/ 2", ""])
def test_parse_rejects_noncanonical_text_naming_it(text):
    with pytest.raises(ValueError, match="not an IPv4 prefix") as ei:
        P.parse(text)
    assert repr(text) in str(ei.value)


def test_fast_builder_is_proven_on_this_interpreter_and_public_one_agrees():
    assert P._SELF_CHECK  # CPython 3.11 (Debian 12): the fast path is in use
    for text in ("10.0.0.0/8", "198.19.1.64/26", "0.0.0.0/0"):
        net = IPv4Network(text)
        a = P._build(int(net.network_address), net.prefixlen)
        b = P._build_public(int(net.network_address), net.prefixlen)
        assert a == b == net and hash(a) == hash(b) == hash(net)
    with pytest.raises(ValueError):
        P._build(int(IPv4Network("10.0.0.0/8").network_address) + 1, 8)


@given(st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_fast_eq_agrees_with_ipaddress(a, alen, b, blen):
    x, y = (IPv4Network((a, alen), strict=False), IPv4Network((b, blen), strict=False))
    px, py = P.parse(str(x)), P.parse(str(y))
    assert (px == py) == (x == y) and (px == y) == (x == y) and (x == py) == (x == y)
    assert (px != py) == (x != y)
    assert px == P.parse(str(x)) and px is not P.parse(str(x))


def test_build_rejects_out_of_range_values():
    for net, plen in ((0, 33), (0, -1), (2**32, 0), (-64, 26), (2**32 + 64, 26)):
        with pytest.raises(ValueError):
            P._build(net, plen)


@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_key_is_the_heap_number_and_round_trips(addr, plen):
    net = IPv4Network((addr, plen), strict=False)
    p = P.parse(str(net))
    key = P.key_of(net)
    assert key == p.key == P.key_of(p) == (1 << plen | int(net.network_address) >> (32 - plen))
    assert type(key) is int and 1 <= key < 2**33 and key.bit_length() - 1 == plen
    back = P.from_key(key)
    assert back == net and str(back) == str(net) and back.key == key and hash(back) == hash(net)


def test_keys_are_unique_and_consecutive_for_consecutive_blocks():
    nets = [IPv4Network((0xC6130000 + i * 64, 26)) for i in range(300)]
    keys = [P.key_of(n) for n in nets]
    assert keys == list(range(keys[0], keys[0] + 300))     # dense: no dict slot collisions
    every = {P.key_of(IPv4Network((a << (32 - n), n))) for n in range(0, 9) for a in range(1 << n)}
    assert len(every) == sum(1 << n for n in range(9))    # one key per prefix, lengths 0..8


@pytest.mark.parametrize("bad", [0, -1, 2**33, 1.0, "5", True])
def test_from_key_rejects_what_no_prefix_has(bad):
    with pytest.raises(ValueError, match="not a prefix key"):
        P.from_key(bad)

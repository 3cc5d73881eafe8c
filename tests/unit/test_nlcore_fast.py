"""nlcore.fast: the hot-path helpers give what the public APIs give, and they are the only
place in the product packages that reads CPython's ipaddress internals or writes a frozen
dataclass through its slots' member descriptors."""
from __future__ import annotations

import ast
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from nlcore import fast

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("nlcore", "felix", "cni", "bgp", "ipip", "podroute")
PRIVATE = {"_ip", "_prefixlen", "_make_netmask"}


def test_internals_are_in_use_on_this_interpreter():
    assert fast.IPADDRESS_INTERNALS  # CPython 3.11 (Debian 12)
    assert fast.net_len is fast._net_len and fast.new_network is fast._new_network


@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_fast_and_public_versions_agree(addr, plen):
    net = IPv4Network((addr, plen), strict=False)
    n = int(net.network_address)
    assert fast._net_len(net) == fast._net_len_public(net) == (n, plen)
    gw = IPv4Address(addr)
    assert fast._net_len_addr(net, gw) == fast._net_len_addr_public(net, gw) == (n, plen, addr)
    a, b = fast._new_network(IPv4Network, n, plen), fast._new_network_public(IPv4Network, n, plen)
    assert a == b == net and hash(a) == hash(b) == hash(net) and str(a) == str(net)
    assert a.broadcast_address == net.broadcast_address and a.netmask == net.netmask


@pytest.mark.parametrize("build", [fast._new_network, fast._new_network_public])
@pytest.mark.parametrize("net,plen", [(1, 24), (0, 33), (0, -1), (2**32, 0), (2**32 + 256, 24)])
def test_new_network_rejects_bad_values(build, net, plen):
    with pytest.raises(ValueError):
        build(IPv4Network, net, plen)


def test_slot_setters_write_a_frozen_dataclass_and_refuse_non_slots():
    @dataclass(frozen=True, slots=True)
    class S:
        a: int
        b: str

    @dataclass(frozen=True)
    class D:
        a: int

    set_a, set_b = fast.slot_setters(S, "a", "b")
    s = fast.new(S)
    set_a(s, 1)
    set_b(s, "x")
    assert s == S(1, "x")
    with pytest.raises(TypeError, match="D.a is not a slot"):
        fast.slot_setters(D, "a")
    with pytest.raises(TypeError, match="S.c is not a slot"):
        fast.slot_setters(S, "c")


def test_only_nlcore_fast_uses_the_tricks():
    wrong = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "nlcore/fast.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), rel)):
                # x._ip / x._prefixlen read or written; X.__dict__[...] (a member descriptor)
                if isinstance(node, ast.Attribute) and node.attr in PRIVATE:
                    wrong.append((rel, node.lineno, node.attr))
                elif (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
                      and node.value.attr == "__dict__"):
                    wrong.append((rel, node.lineno, "__dict__[...]"))
    assert wrong == []

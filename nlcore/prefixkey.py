"""The integer key of an IPv4 prefix: the one contract every route table of podroute shares.

``key(network, length) = 1 << length | network >> (32 - length)``: the prefix's number in a
complete binary trie numbered like a heap (1 for 0.0.0.0/0, 2..3 for the /1s, ...; unique per
prefix, below 2**33). bgp's Adj-RIB-In and Loc-RIB, the delta handed to the FIB and felix's
desired, actual and verified tables are all dicts keyed by it, and felix's resync computes it
from a kernel route message without building an IPv4Network. One int hashes and compares in C,
where an IPv4Network key costs a Python-level ``__hash__`` per probe; consecutive blocks of one
length get consecutive keys, which an int-keyed dict (an int hashes to itself) spreads over its
slots without collisions.

Carried keys: an IPv4Network subclass may hold its key in a public attribute named
:data:`CARRIED` (``bgp.prefix.Prefix.key``). :func:`key_of` returns that very int object when
it equals the computed key, so the tables of a 100k-route FIB share one int per route instead
of holding equal copies.
"""
from __future__ import annotations

from ipaddress import IPv4Network

from .fast import net_len as _net_len

CARRIED = "key"
"""Name of the attribute through which an IPv4Network subclass offers its key to :func:`key_of`."""


def key(network: int, length: int) -> int:
    """The key of ``network/length`` (``network`` the 32-bit address as an int, host bits
    clear, ``length`` 0..32); not validated."""
    return 1 << length | network >> (32 - length)


def unkey(k: int) -> tuple[int, int]:
    """``(network, length)`` of key ``k``. Raises ValueError for an int that is no key
    (outside 1..2**33-1) or a non-int."""
    if type(k) is not int or not 1 <= k < 1 << 33:
        raise ValueError(f"not a prefix key: {k!r}")
    length = k.bit_length() - 1
    return (k ^ 1 << length) << (32 - length), length


def key_of(dst: IPv4Network) -> int:
    """The key of ``dst``: the object it carries as :data:`CARRIED` when that equals the key
    computed from its address and length (a wrong carried value is ignored), else the
    computed int."""
    net, plen = _net_len(dst)  # nlcore.fast: int() and .prefixlen are Python-level calls
    k = 1 << plen | net >> (32 - plen)
    # getattr, not __dict__: reading an instance's __dict__ makes CPython 3.11+ build one for
    # it (its attributes live inline until then), ~60 bytes per prefix.
    carried = getattr(dst, "key", None)  # CARRIED, spelled out: a global lookup costs ~20 ns
    return carried if carried == k else k

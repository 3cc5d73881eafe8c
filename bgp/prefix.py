"""IPv4 prefixes and their integer keys, for the route pipeline's dictionaries.

Every table on the BGP->FIB path (Adj-RIB-In, Loc-RIB, the delta handed to the FIB, felix's
desired and actual tables) is keyed by a prefix's **key**, one Python int: ``1 << length |
network >> (32 - length)``, the prefix's number in a complete binary trie numbered like a heap,
owned by :mod:`nlcore.prefixkey` (felix's tables use the same keys). An int hashes and
compares in C; an ``IPv4Network`` key costs a Python-level ``__hash__`` per probe and, in a
100k-route table, a cache miss on the object and its ``__dict__`` before the probe can start
(measured: 0.9 us against 0.23 us per random lookup at 100k entries). Consecutive blocks get
consecutive keys, which an int-keyed dict spreads over its slots without collisions. A
withdrawal arriving as wire bytes is decoded straight to keys (:func:`unpack_keys`) and never
becomes an object.

:class:`Prefix` is the ``IPv4Network`` a learned route carries (BestRoute.prefix, the felix
Route's dst): equal to, and hashing like, one built from the same text, so mixed use stays
correct. It holds its key, built once, so every table shares one int object per route.
"""
from __future__ import annotations

from ipaddress import IPv4Network
from socket import inet_aton, inet_ntoa

from nlcore.fast import IPADDRESS_INTERNALS, net_len as _net_len, new_network as _new_network
from nlcore.prefixkey import key as _prefix_key, unkey as _unkey


class Prefix(IPv4Network):
    """An immutable ``IPv4Network`` that carries its key (see module doc) from construction.
    Raises ValueError (``AddressValueError``/``NetmaskValueError``) like IPv4Network on bad
    text. Its hash is IPv4Network's own, computed on each call: the pipeline's tables are
    keyed by the key itself, and a cached hash would cost another int per route."""

    def __init__(self, address, strict: bool = True) -> None:
        super().__init__(address, strict)
        self._key = _prefix_key(*_net_len(self))

    @property
    def key(self) -> int:
        """The prefix's key (:func:`nlcore.prefixkey.key`), one int object for the prefix's
        life: the public attribute (``nlcore.prefixkey.CARRIED``) through which
        :func:`nlcore.prefixkey.key_of` (felix's ``dst_key``) shares that object."""
        return self._key

    def __hash__(self) -> int:
        return IPv4Network.__hash__(self)

    def __eq__(self, other: object) -> bool:
        # ipaddress's __eq__ costs four Python-level calls; route equality (felix compares a
        # new Route with the one it holds) lands here.
        if type(other) is Prefix:
            return self._key == other._key
        return IPv4Network.__eq__(self, other)

    def __reduce__(self):
        return (Prefix, (str(self),))


def _build(net: int, plen: int) -> Prefix:
    # nlcore.fast.new_network: no text formatting and re-parsing (3x faster than the public
    # constructor, measured there). Raises ValueError on a bad length or host bits set.
    p = _new_network(Prefix, net, plen)
    p._key = _prefix_key(net, plen)
    return p


def _build_public(net: int, plen: int) -> Prefix:
    return Prefix((net, plen))


_SELF_CHECK = IPADDRESS_INTERNALS  # True: _build takes nlcore.fast's path (see there)


def key_of(net: IPv4Network) -> int:
    """The key (module doc) of any IPv4Network: read from a Prefix, computed otherwise."""
    if type(net) is Prefix:
        return net._key  # type: ignore[attr-defined]
    return _prefix_key(int(net.network_address), net.prefixlen)


def from_key(key: int) -> Prefix:
    """The Prefix a key stands for. Raises ValueError on a key no prefix has."""
    return _build(*_unkey(key))


def unpack_keys(field: bytes) -> list[int]:
    """Decode an IPv4 NLRI or Withdrawn Routes field (RFC 4271 §4.3: one octet of prefix
    length in bits, then the fewest octets that hold it) into prefix keys, in wire order.
    Trailing bits past the length are ignored, as §4.3 says they are irrelevant. Raises
    ValueError naming the offset on a length over 32 or a prefix running past the end."""
    out: list[int] = []
    append = out.append
    from_bytes, key = int.from_bytes, _prefix_key
    i, end = 0, len(field)
    while i < end:
        plen = field[i]
        k = (plen + 7) >> 3
        j = i + 1 + k
        if plen > 32 or j > end:
            raise ValueError(f"malformed NLRI at octet {i}: prefix length {plen}, "
                             f"{end - i - 1} octets left")
        # The k octets are the network's top 8k bits (trailing ones past plen dropped by key).
        append(key(from_bytes(field[i + 1:j], "big") << (32 - 8 * k), plen))
        i = j
    return out


def unpack_nlri(field: bytes) -> list[Prefix]:
    """:func:`unpack_keys` as Prefixes. Same errors."""
    return [from_key(k) for k in unpack_keys(field)]


def parse(text: str) -> Prefix:
    """``"a.b.c.d/len"`` (canonical dotted quad, no host bits: what ExaBGP prints for an
    NLRI) as a :class:`Prefix`, ~3x faster than ``IPv4Network(text)``. Raises ValueError
    naming the text on anything else."""
    addr, sep, length = text.partition("/")
    try:
        packed = inet_aton(addr)
        # inet_aton also takes "10.1", octal and hex forms: accept only the canonical one.
        if not sep or not length.isdigit() or inet_ntoa(packed) != addr:
            raise ValueError
        return _build(int.from_bytes(packed, "big"), int(length))
    except (OSError, ValueError):
        raise ValueError(f"not an IPv4 prefix a.b.c.d/len without host bits: {text!r}") from None

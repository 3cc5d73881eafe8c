"""IPv4 prefixes with a cached hash, for the route pipeline's dictionaries.

``ipaddress.IPv4Network`` recomputes its hash on every call (two ``int()`` conversions in
Python, ~0.5 µs). A learned route's prefix is a dictionary key in the Adj-RIB-In, the
Loc-RIB, the delta handed to the FIB and felix's desired/actual tables: profiling a
10k-route burst showed ~50 hash calls per route, the largest single cost of the BGP→FIB
path. :class:`Prefix` is an ``IPv4Network`` (equal to, and hashing like, one built from the
same text, so mixed use stays correct) whose hash is computed once. One object is created
per received NLRI and then shared by every table, so lookups mostly hit on identity.
"""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from socket import inet_aton, inet_ntoa

class Prefix(IPv4Network):
    """An immutable ``IPv4Network`` with its hash cached at construction. Raises ValueError
    (``AddressValueError``/``NetmaskValueError``) like IPv4Network on bad text."""

    def __init__(self, address, strict: bool = True) -> None:
        super().__init__(address, strict)
        self._hash = IPv4Network.__hash__(self)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        # Dictionary probes with an equal Prefix that is not the stored object (a withdrawal
        # parsed anew, for one) land here: ipaddress's __eq__ costs four Python-level calls.
        if type(other) is Prefix:
            return (self._hash == other._hash and self._prefixlen == other._prefixlen
                    and self.network_address._ip == other.network_address._ip)
        return IPv4Network.__eq__(self, other)

    def __reduce__(self):
        return (Prefix, (str(self),))


def _build(net: int, plen: int) -> Prefix:
    # What IPv4Network((net, plen)) stores, without re-parsing: CPython's ipaddress keeps
    # network_address, netmask and _prefixlen in the instance dict (3.3 to 3.13).
    # _SELF_CHECK below proves it on this interpreter, else the public constructor is used.
    if not 0 <= plen <= 32:
        raise ValueError("prefix length outside 0..32")
    netmask, mask = _MASKS[plen]
    if net & mask != net:  # also catches net outside 0..2**32-1 (mask has 32 bits)
        raise ValueError("host bits set")
    addr = _new(IPv4Address)
    _set_ip(addr, net)
    p = _new(Prefix)
    p.network_address = addr
    p.netmask, p._prefixlen = netmask, plen
    p._hash = hash(net ^ mask)
    return p


def _build_public(net: int, plen: int) -> Prefix:
    return Prefix((net, plen))


def _self_check() -> bool:
    try:
        for text in ("10.1.2.0/26", "0.0.0.0/0", "198.19.255.255/32"):
            a, _, n = text.partition("/")
            fast, ref = _build(int.from_bytes(inet_aton(a), "big"), int(n)), IPv4Network(text)
            if not (fast == ref and hash(fast) == hash(ref) and str(fast) == text
                    and fast.broadcast_address == ref.broadcast_address and fast.subnet_of(ref)):
                return False
        return True
    except Exception:  # noqa: BLE001 - any surprise means: use the public constructor
        return False


_make_netmask = IPv4Network._make_netmask
_new = object.__new__
# IPv4Address keeps its value in the slot _ip (CPython 3.3 to 3.13); its __init__ re-checks
# type and range in Python, which _build already did.
_set_ip = IPv4Address.__dict__["_ip"].__set__
_MASKS = [(_make_netmask(n)[0], int(_make_netmask(n)[0])) for n in range(33)]
_SELF_CHECK = _self_check()
if not _SELF_CHECK:
    _build = _build_public  # noqa: F811


def unpack_nlri(field: bytes) -> list[Prefix]:
    """Decode an IPv4 NLRI or Withdrawn Routes field (RFC 4271 §4.3: one octet of prefix
    length in bits, then the fewest octets that hold it) into Prefixes, in wire order.
    Trailing bits past the length are ignored, as §4.3 says they are irrelevant. Raises
    ValueError naming the offset on a length over 32 or a prefix running past the end."""
    out: list[Prefix] = []
    append = out.append
    i, end = 0, len(field)
    while i < end:
        plen = field[i]
        k = (plen + 7) >> 3
        j = i + 1 + k
        if plen > 32 or j > end:
            raise ValueError(f"malformed NLRI at octet {i}: prefix length {plen}, "
                             f"{end - i - 1} octets left")
        append(_build((int.from_bytes(field[i + 1:j], "big") << (32 - 8 * k)) & _MASKS[plen][1],
                      plen))
        i = j
    return out


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

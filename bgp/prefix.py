"""Interned IPv4 prefixes with a cached hash, for the route pipeline's dictionaries.

``ipaddress.IPv4Network`` recomputes its hash on every call (two ``int()`` conversions in
Python, ~0.5 µs) and compares by value in Python (~0.5 µs). A learned route's prefix is a
dictionary key in the Adj-RIB-In, the Loc-RIB, the delta handed to the FIB and felix's
desired/actual tables: profiling a 10k-route burst showed ~50 hash calls per route, the
largest single cost of the BGP→FIB path. :class:`Prefix` is an ``IPv4Network`` (equal to,
and hashing like, one built from the same text, so mixed use stays correct) whose hash is
computed once; :func:`intern` returns one shared object per prefix, so dictionary lookups
mostly hit on identity and one object, not one per table, is kept in memory.
"""
from __future__ import annotations

from ipaddress import IPv4Network

# Bounded so a long-running speaker that sees churn cannot grow it forever; clearing only
# loses sharing for prefixes seen before, never correctness.
MAX_INTERNED = 1 << 20


class Prefix(IPv4Network):
    """An immutable ``IPv4Network`` with its hash cached at construction. Raises ValueError
    (``AddressValueError``/``NetmaskValueError``) like IPv4Network on bad text."""

    def __init__(self, address, strict: bool = True) -> None:
        super().__init__(address, strict)
        self._hash = IPv4Network.__hash__(self)

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self):
        return (Prefix, (str(self),))


_interned: dict[str, Prefix] = {}


def intern(text: str) -> Prefix:
    """The shared :class:`Prefix` for ``text`` ("a.b.c.d/len", strict: no host bits).
    Raises ValueError on bad text (nothing is cached then)."""
    p = _interned.get(text)
    if p is None:
        if len(_interned) >= MAX_INTERNED:
            _interned.clear()
        p = _interned[text] = Prefix(text)
    return p

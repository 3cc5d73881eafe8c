"""Hot-path helpers that step around public Python APIs: the only module that does.

Each helper is used on a path that runs once per route (100k routes in a full table) and
each docstring names the micro-benchmark that justifies it: ``timeit``, CPython 3.11, the
best of 9 runs over 1k objects (cache-resident) and over 100k shuffled objects (a full
table, cache-missing), on the project's 2-core test VM. The script is
``bench/micro_fast.py`` (``python -m bench.micro_fast``); rerun it when the interpreter
changes.

Two kinds of trick:

- **CPython's ipaddress internals** (:func:`net_len`, :func:`net_len_addr`,
  :func:`new_network`): ``IPv4Address`` keeps its value in the slot ``_ip`` and
  ``IPv4Network`` keeps ``network_address``, ``netmask`` and ``_prefixlen`` in its instance
  dict (3.3 to 3.13). The import-time self-check :data:`IPADDRESS_INTERNALS` proves that on
  this interpreter; when it fails, every helper here is replaced by its public-API
  equivalent, which gives the same results, only slower.
- **Frozen slotted dataclasses built without ``__init__``** (:func:`slot_setters`): the
  slots' member descriptors write a field in C, where the frozen ``__init__`` goes through
  ``object.__setattr__`` per field and runs ``__post_init__`` validation. For values the
  caller has already validated (or decoded from a kernel message whose shape it checked).

Per-call cost: a Python-level function call costs ~35 ns here (1k: reading a prefix's
address and length inline 19 ns, through :func:`net_len` 55 ns, publicly 95 ns). The slot
setters are therefore handed out as bound C callables (the member descriptors' ``__set__``)
that the caller aliases at module level and calls inline: building an object through them
costs no frame beyond the caller's own. The ipaddress helpers are one frame each, called
from per-route functions costing 0.2-2 us; the route encoder, the hottest, reads its three
ints in one call (:func:`net_len_addr`).
"""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from types import MemberDescriptorType
from typing import Callable, TypeVar

__all__ = ["IPADDRESS_INTERNALS", "net_len", "net_len_addr", "new", "new_network", "slot_setters"]

N = TypeVar("N", bound=IPv4Network)

new = object.__new__
"""``object.__new__``: an instance whose slots the :func:`slot_setters` then fill."""


def slot_setters(cls: type, *names: str) -> tuple[Callable[[object, object], None], ...]:
    """The C-level setters of ``cls``'s slots ``names``, in order: ``set(obj, value)`` writes
    the field even when ``cls`` is a frozen dataclass (the member descriptor bypasses its
    ``__setattr__``), and nothing validates the value. Build with ``obj = new(cls)`` then
    one setter per field; every field must be set (an unset slot raises AttributeError on
    read). Raises TypeError at import time when a name is not a slot of ``cls`` (a class
    without ``slots=True``), so a changed class fails loudly instead of silently slowly.

    Measured (``Route``, 8 fields; ``RouteOp``, 4 fields; per object, 1k / 100k):
     - ``Route(...)``: 2.2 / 2.4 us; ``new`` + 8 slot setters inline: 0.34 / 0.50 us;
       ``new`` + ``object.__setattr__`` per field: 0.48 / 0.61 us (a ``**fields`` loop of
       ``object.__setattr__``: 1.05 / 1.24 us).
     - a copy of a Route with two fields replaced (``felix.routes._replace``, for
       ``Route.satisfied_by``): 0.37 / 0.54 us; a ``getattr``/``object.__setattr__`` loop
       over the dataclass fields: 0.91 / 1.04 us; ``dataclasses.replace``: 2.6 us.
     - ``RouteOp(...)``: 0.34 / 0.51 us; ``felix.dataplane.new_op`` (one frame, 4 setters):
       0.21 / 0.35 us.
    """
    out = []
    for name in names:
        d = cls.__dict__.get(name)
        if type(d) is not MemberDescriptorType:
            raise TypeError(f"{cls.__name__}.{name} is not a slot (dataclass(slots=True) needed)")
        out.append(d.__set__)
    return tuple(out)


def _net_len(net: IPv4Network) -> tuple[int, int]:
    return net.network_address._ip, net._prefixlen  # type: ignore[attr-defined]


def _net_len_public(net: IPv4Network) -> tuple[int, int]:
    return int(net.network_address), net.prefixlen


def _net_len_addr(net: IPv4Network, addr: IPv4Address) -> tuple[int, int, int]:
    return net.network_address._ip, net._prefixlen, addr._ip  # type: ignore[attr-defined]


def _net_len_addr_public(net: IPv4Network, addr: IPv4Address) -> tuple[int, int, int]:
    return int(net.network_address), net.prefixlen, int(addr)


_set_ip = IPv4Address.__dict__["_ip"].__set__ if "_ip" in IPv4Address.__dict__ else None
_MASKS = [(IPv4Network._make_netmask(n)[0], int(IPv4Network._make_netmask(n)[0]))  # type: ignore[attr-defined]
          for n in range(33)]


def _new_network(cls: type[N], net: int, plen: int) -> N:
    if not 0 <= plen <= 32:
        raise ValueError("prefix length outside 0..32")
    netmask, mask = _MASKS[plen]
    if net & mask != net:  # also catches net outside 0..2**32-1 (mask has 32 bits)
        raise ValueError("host bits set")
    addr = new(IPv4Address)
    _set_ip(addr, net)
    p = new(cls)
    p.network_address = addr
    p.netmask, p._prefixlen = netmask, plen  # type: ignore[attr-defined]
    return p


def _new_network_public(cls: type[N], net: int, plen: int) -> N:
    p = new(cls)
    IPv4Network.__init__(p, (net, plen))
    return p


def _self_check() -> bool:
    try:
        for text in ("10.1.2.0/26", "0.0.0.0/0", "198.19.255.255/32"):
            ref = IPv4Network(text)
            fast = _new_network(IPv4Network, int(ref.network_address), ref.prefixlen)
            if not (fast == ref and hash(fast) == hash(ref) and str(fast) == text
                    and fast.broadcast_address == ref.broadcast_address and fast.subnet_of(ref)
                    and _net_len(ref) == _net_len_public(ref)
                    and _net_len_addr(ref, ref.network_address)
                    == _net_len_addr_public(ref, ref.network_address)):
                return False
        return True
    except Exception:  # noqa: BLE001 - any surprise means: use the public API
        return False


IPADDRESS_INTERNALS: bool = _set_ip is not None and _self_check()
"""True when this interpreter's ipaddress stores what the helpers below read and write (so
they use it); False: they are the public-API versions."""

net_len: Callable[[IPv4Network], tuple[int, int]] = _net_len if IPADDRESS_INTERNALS else _net_len_public
"""``net_len(net) -> (network address as int, prefix length)``.

Measured per prefix, 1k / 100k: inline private reads 19 / 250-330 ns; ``net_len`` 55 /
530-670 ns; public ``int(net.network_address), net.prefixlen`` 95 / 565-710 ns (``int()``
and ``.prefixlen`` are Python-level calls; at 100k the first touch of each object's dict
dominates). Worth it where the caller is itself a function per route: the prefix key
(:func:`nlcore.prefixkey.key_of`: 163 ns against 213 ns public at 1k), the route encoder,
bgp import policy and the pool match of podroute's routing. Inline private reads would save
another ~35 ns per call; no caller runs in a loop where that shows in the bench."""

net_len_addr: Callable[[IPv4Network, IPv4Address], tuple[int, int, int]] = (
    _net_len_addr if IPADDRESS_INTERNALS else _net_len_addr_public)
"""``net_len_addr(net, addr) -> (network as int, prefix length, addr as int)``: :func:`net_len`
and the address's int in one call, for the route encoder's "dst via gateway" shape, which
needs all three per route. Measured per route at 1k: inline reads 49 ns, ``net_len_addr``
71 ns, public ``int()``/``.prefixlen`` 172 ns. Encoding 20k such routes
(``felix.codec.encode_route``): 11.1 ms with the reads inline in the encoder, 12.3 ms
through this one call, ~1 ms more through two calls (:func:`net_len`, then the address's).
The ~50 ns a route this costs over inline reads is under 0.5% of a route's FIB write
(~14 us a route in ``python -m bench --only fib``)."""

new_network: Callable[[type[N], int, int], N] = _new_network if IPADDRESS_INTERNALS else _new_network_public
"""``new_network(cls, net, plen)``: an instance of ``cls`` (IPv4Network or a subclass; its
``__init__`` is not run) for ``net``/``plen``, without formatting and re-parsing text.
Raises ValueError for a length outside 0..32 or host bits set (``net`` outside 32 bits
counts as host bits). Measured per prefix from its key (``bgp.prefix.from_key``, 1k / 100k):
0.52 / 0.53 us; ``Prefix((net, plen))``: 1.16 / 1.18 us. ``felix.codec.decode_route`` builds
each decoded dst with it (with the slot setters, decoding 20k routes takes 59-66 ms; with
``IPv4Network((net, plen))`` and ``object.__setattr__`` per field, 93-103 ms)."""

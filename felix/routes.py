"""Desired-state route values owned by felix (IPv4 only).

A ``Route`` is what felix wants in (or reads from) one FIB table. It is a frozen, hashable value
with ``ipaddress`` types; ``__post_init__`` validates it and raises ``felix.errors.InvalidRoute``
naming the offending field. String arguments are coerced (``Route("198.19.0.0/26", ...)``).

Shapes mirror what the kernel stores for an IPv4 route (rtnetlink(7), struct rtmsg + RTA_*):
 - unicast via a gateway:   ``198.19.1.0/26 via 198.18.0.2 [dev eth0] [onlink]``
 - device (scope link):     ``198.19.0.5/32 dev pr1234 scope link``      (Calico workload route)
 - blackhole:               ``blackhole 198.19.0.0/26``                   (Calico local block)
 - ECMP:                    ``198.19.2.0/26 nexthop via A weight 1 nexthop via B weight 1``
``metric`` is RTA_PRIORITY (0 = the kernel default; it is part of the route's identity in the FIB).

``PODROUTE_PROTO`` (the rtm_protocol felix's routes carry), ``MAIN_TABLE`` (RT_TABLE_MAIN) and
``dst_key`` (a destination's int key, :func:`nlcore.prefixkey.key_of`, what felix's tables are
keyed by) are nlcore's, named here for felix's callers.
"""
from __future__ import annotations

import enum
from collections import abc
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Iterable

from nlcore.fast import new as _new, slot_setters as _slot_setters
from nlcore.prefixkey import key_of as dst_key
from nlcore.route import PODROUTE_PROTO
from nlcore.wire import RT_SCOPE_LINK, RT_SCOPE_UNIVERSE, RTN_BLACKHOLE, RTN_UNICAST
from nlcore.wire import RT_TABLE_MAIN as MAIN_TABLE

from .errors import InvalidRoute

IFNAMSIZ = 16


class RouteType(enum.IntEnum):
    """rtm_type values felix programs (linux/rtnetlink.h RTN_*)."""

    UNICAST = RTN_UNICAST
    BLACKHOLE = RTN_BLACKHOLE


class Scope(enum.IntEnum):
    """rtm_scope values felix programs (linux/rtnetlink.h RT_SCOPE_*)."""

    UNIVERSE = RT_SCOPE_UNIVERSE
    LINK = RT_SCOPE_LINK


def _ifname_ok(name: str | None) -> bool:
    return name is None or (isinstance(name, str) and 0 < len(name) < IFNAMSIZ and "/" not in name
                            and not any(c.isspace() for c in name))


@dataclass(frozen=True, slots=True)  # slots: 100k+ of these in a full table
class NextHop:
    """One ECMP next hop (struct rtnexthop + RTA_GATEWAY). ``weight`` 1..256 (rtnh_hops = weight-1)."""

    gateway: IPv4Address
    ifname: str | None = None
    onlink: bool = False
    weight: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.gateway, IPv4Address):
            try:
                object.__setattr__(self, "gateway", IPv4Address(self.gateway))
            except ValueError as e:
                raise InvalidRoute("gateway", str(e)) from None
        if not _ifname_ok(self.ifname):
            raise InvalidRoute("ifname", f"invalid interface name {self.ifname!r}")
        if not isinstance(self.weight, int) or not 1 <= self.weight <= 256:
            raise InvalidRoute("weight", f"must be 1..256, got {self.weight!r}")
        if self.onlink and self.ifname is None:
            raise InvalidRoute("onlink", "onlink next hop needs an ifname")


@dataclass(frozen=True, slots=True)  # slots: 100k+ of these in a full table
class Route:
    """One IPv4 route in a FIB table; identity in the table is (dst, metric). See module doc."""

    dst: IPv4Network
    type: RouteType = RouteType.UNICAST
    gateway: IPv4Address | None = None
    ifname: str | None = None
    scope: Scope = Scope.UNIVERSE
    onlink: bool = False
    multipath: tuple[NextHop, ...] = ()
    metric: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.dst, IPv4Network):
            try:
                object.__setattr__(self, "dst", IPv4Network(self.dst))
            except ValueError as e:
                raise InvalidRoute("dst", str(e)) from None
        if self.gateway is not None and not isinstance(self.gateway, IPv4Address):
            try:
                object.__setattr__(self, "gateway", IPv4Address(self.gateway))
            except ValueError as e:
                raise InvalidRoute("gateway", str(e)) from None
        try:
            object.__setattr__(self, "type", RouteType(self.type))
        except ValueError:
            raise InvalidRoute("type", f"unsupported route type {self.type!r}") from None
        try:
            object.__setattr__(self, "scope", Scope(self.scope))
        except ValueError:
            raise InvalidRoute("scope", f"unsupported scope {self.scope!r}") from None
        if not isinstance(self.multipath, tuple):
            object.__setattr__(self, "multipath", tuple(self.multipath))
        if not _ifname_ok(self.ifname):
            raise InvalidRoute("ifname", f"invalid interface name {self.ifname!r}")
        if not isinstance(self.metric, int) or not 0 <= self.metric <= 0xFFFFFFFF:
            raise InvalidRoute("metric", f"must be a u32, got {self.metric!r}")
        if self.type is RouteType.BLACKHOLE:
            for name in ("gateway", "ifname", "multipath"):
                if getattr(self, name):
                    raise InvalidRoute(name, "a blackhole route has no next hop")
            if self.onlink:
                raise InvalidRoute("onlink", "a blackhole route cannot be onlink")
            if self.scope is not Scope.UNIVERSE:
                raise InvalidRoute("scope", "a blackhole route has scope universe")
            return
        if self.multipath:
            if self.gateway is not None:
                raise InvalidRoute("gateway", "gateway and multipath are mutually exclusive")
            if self.ifname is not None:
                raise InvalidRoute("ifname", "set ifname per NextHop with multipath")
            if self.onlink:
                raise InvalidRoute("onlink", "set onlink per NextHop with multipath")
            if len(self.multipath) < 2:
                raise InvalidRoute("multipath", "needs at least 2 next hops (the kernel stores 1 as a plain route)")
            if not all(isinstance(h, NextHop) for h in self.multipath):
                raise InvalidRoute("multipath", "items must be NextHop")
            if len(set(self.multipath)) != len(self.multipath):
                raise InvalidRoute("multipath", "duplicate next hop")
            if self.scope is not Scope.UNIVERSE:
                raise InvalidRoute("scope", "a multipath route has scope universe")
            return
        if self.gateway is None and self.ifname is None:
            raise InvalidRoute("gateway", "a unicast route needs a gateway, an ifname or multipath")
        if self.onlink and (self.gateway is None or self.ifname is None):
            raise InvalidRoute("onlink", "onlink needs both gateway and ifname")
        if self.scope is Scope.LINK and self.gateway is not None:
            raise InvalidRoute("scope", "scope link routes have no gateway")

    # -- constructors ---------------------------------------------------------------------------
    @classmethod
    def via(cls, dst: IPv4Network | str, gw: IPv4Address | str, ifname: str | None = None,
            onlink: bool = False, *, metric: int = 0) -> "Route":
        """``dst via gw [dev ifname] [onlink]`` (scope universe). Raises InvalidRoute."""
        return cls(dst=dst, gateway=gw, ifname=ifname, onlink=onlink, metric=metric)  # type: ignore[arg-type]

    @classmethod
    def via_hop(cls, dst: IPv4Network, hop: NextHop, *, metric: int = 0) -> "Route":
        """``dst via hop.gateway [dev hop.ifname] [onlink]`` from an already validated NextHop
        (a NextHop's fields were checked when it was built): the BGP->FIB path builds one
        Route per learned prefix from a few hundred shared hops, and re-validating each would
        be a third of its cost. Raises InvalidRoute unless ``dst`` is an IPv4Network, ``hop`` a
        NextHop with a gateway and ``metric`` a u32."""
        if type(hop) is not NextHop or hop.gateway is None or hop.weight != 1:
            raise InvalidRoute("hop", f"expected a NextHop with a gateway and weight 1, got {hop!r}")
        if not isinstance(dst, IPv4Network):
            raise InvalidRoute("dst", f"expected IPv4Network, got {type(dst).__name__}")
        if type(metric) is not int or not 0 <= metric <= 0xFFFFFFFF:
            raise InvalidRoute("metric", f"must be a u32, got {metric!r}")
        r = _new(cls)
        _set_dst(r, dst)
        _set_type(r, RouteType.UNICAST)
        _set_gateway(r, hop.gateway)
        _set_ifname(r, hop.ifname)
        _set_scope(r, Scope.UNIVERSE)
        _set_onlink(r, hop.onlink)
        _set_multipath(r, ())
        _set_metric(r, metric)
        return r

    @classmethod
    def blackhole(cls, dst: IPv4Network | str, *, metric: int = 0) -> "Route":
        """``blackhole dst`` (RTN_BLACKHOLE, Calico's local-block route). Raises InvalidRoute."""
        return cls(dst=dst, type=RouteType.BLACKHOLE, metric=metric)  # type: ignore[arg-type]

    @classmethod
    def device(cls, dst: IPv4Network | str, ifname: str, *, metric: int = 0) -> "Route":
        """``dst dev ifname scope link`` (Calico's workload /32). Raises InvalidRoute."""
        return cls(dst=dst, ifname=ifname, scope=Scope.LINK, metric=metric)  # type: ignore[arg-type]

    @classmethod
    def ecmp(cls, dst: IPv4Network | str, hops: Iterable[NextHop], *, metric: int = 0) -> "Route":
        """``dst nexthop via A ... nexthop via B ...`` (RTA_MULTIPATH, ≥2 hops). Raises InvalidRoute."""
        return cls(dst=dst, multipath=tuple(hops), metric=metric)  # type: ignore[arg-type]

    # -- comparison -----------------------------------------------------------------------------
    def satisfied_by(self, actual: "Route") -> bool:
        """True if the kernel's ``actual`` route is what this desired route asks for.

        ``ifname=None`` in a desired route means "the kernel picks the device from the gateway", so
        any device the kernel reports is accepted; every other field must be equal.
        """
        if self == actual:
            return True
        if self.ifname is None and self.gateway is not None and actual.ifname is not None:
            return self == _replace(actual, None, actual.multipath)
        if self.multipath and len(self.multipath) == len(actual.multipath):
            hops = tuple(
                NextHop(a.gateway, None if d.ifname is None else a.ifname, a.onlink, a.weight)
                for d, a in zip(self.multipath, actual.multipath))
            return self.multipath == hops and _replace(actual, actual.ifname, ()) == _replace(self, self.ifname, ())
        return False

    def __str__(self) -> str:
        parts = ["blackhole" if self.type is RouteType.BLACKHOLE else "", str(self.dst)]
        if self.gateway is not None:
            parts += ["via", str(self.gateway)]
        if self.ifname:
            parts += ["dev", self.ifname]
        for h in self.multipath:
            parts += ["nexthop via", str(h.gateway)] + (["dev", h.ifname] if h.ifname else []) + \
                     (["onlink"] if h.onlink else []) + ["weight", str(h.weight)]
        if self.scope is Scope.LINK:
            parts += ["scope", "link"]
        if self.onlink:
            parts.append("onlink")
        if self.metric:
            parts += ["metric", str(self.metric)]
        return " ".join(p for p in parts if p)


class DstView(abc.Mapping):
    """A read-only live view of a dst_key-indexed table of Routes, indexed by dst."""

    __slots__ = ("_d",)

    def __init__(self, d: dict[int, Route]) -> None:
        self._d = d

    def __getitem__(self, dst: IPv4Network) -> Route:
        if not isinstance(dst, IPv4Network):
            raise KeyError(dst)
        return self._d[dst_key(dst)]

    def __contains__(self, dst: object) -> bool:
        return isinstance(dst, IPv4Network) and dst_key(dst) in self._d

    def __iter__(self):
        return (r.dst for r in self._d.values())

    def __len__(self) -> int:
        return len(self._d)

    def values(self):
        return self._d.values()


# nlcore.fast.slot_setters: Routes built from checked values skip __init__ (a quarter of its
# cost, measured there).
_set_dst, _set_type, _set_gateway, _set_ifname, _set_scope, _set_onlink, _set_multipath, _set_metric = \
    _slot_setters(Route, "dst", "type", "gateway", "ifname", "scope", "onlink", "multipath", "metric")


def _replace(r: Route, ifname: str | None, multipath: tuple[NextHop, ...]) -> Route:
    # A copy of ``r`` with ifname and multipath replaced, for comparison only.
    new = _new(Route)
    _set_dst(new, r.dst)
    _set_type(new, r.type)
    _set_gateway(new, r.gateway)
    _set_ifname(new, ifname)
    _set_scope(new, r.scope)
    _set_onlink(new, r.onlink)
    _set_multipath(new, multipath)
    _set_metric(new, r.metric)
    return new


__all__ = ["PODROUTE_PROTO", "MAIN_TABLE", "RouteType", "Scope", "NextHop", "Route", "DstView", "dst_key"]

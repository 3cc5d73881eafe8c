"""The seam between the route table and the kernel: a Protocol, its op/failure values.

Implementations: ``felix.netlink.NetlinkDataplane`` (real, rtnetlink) and ``felix.fake.FakeDataplane``
(in memory, with fault injection). Mirrors the split in Calico's routetable.go (the table logic
talks to a ``netlinkshim.Interface``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Protocol, Sequence, runtime_checkable

from nlcore.fast import new as _new, slot_setters as _slot_setters

from .routes import MAIN_TABLE, PODROUTE_PROTO, Route

Action = Literal["add", "replace", "delete"]


@dataclass(frozen=True, slots=True)
class RouteOp:
    """One write. ``action``:
     - ``"add"``     RTM_NEWROUTE NLM_F_CREATE|NLM_F_EXCL: fails with EEXIST if *any* route (any
                     protocol) holds (dst, metric) — how felix avoids clobbering foreign routes;
     - ``"replace"`` RTM_NEWROUTE NLM_F_CREATE|NLM_F_REPLACE: used only where our own route was seen;
     - ``"delete"``  RTM_DELROUTE matching dst, metric, table and protocol (any next hop); ESRCH
                     (already gone) counts as success.
    """

    action: Action
    route: Route
    table: int = MAIN_TABLE
    protocol: int = PODROUTE_PROTO


# nlcore.fast.slot_setters: a burst builds one op per route; new_op costs two thirds of
# RouteOp's __init__ (measured there).
_set_action, _set_route, _set_table, _set_protocol = _slot_setters(RouteOp, "action", "route", "table", "protocol")


def new_op(action: Action, route: Route, table: int, protocol: int) -> RouteOp:
    """``RouteOp(action, route, table, protocol)`` without the dataclass __init__, for
    values the caller already holds checked (felix.routetable's own table and protocol)."""
    op = _new(RouteOp)
    _set_action(op, action)
    _set_route(op, route)
    _set_table(op, table)
    _set_protocol(op, protocol)
    return op


@dataclass(frozen=True)
class RouteFailure:
    """A failed op or dump. ``errno`` positive (errno module values); ``route`` None for a failure
    not tied to one route (a dump); ``action`` the op's action or "dump"."""

    route: Route | None
    errno: int
    message: str
    action: str = ""


class RouteSink(Protocol):
    """Receives the routes a verified dump decodes, as it reads them (so each can be judged and
    dropped at once instead of the table being held decoded)."""

    def restart(self) -> None:
        """The dump starts (again, after an interrupted attempt): forget everything delivered."""
        ...

    def route(self, key: int, digest: int, route: Route) -> None:
        """One route of ours whose digest did not match: its dst key, digest, decoded form."""
        ...


@runtime_checkable
class RouteDataplane(Protocol):
    """What RouteTable needs from the kernel."""

    def dump_routes(self, *, table: int, protocol: int) -> list[Route]:
        """All IPv4 routes in ``table`` whose rtm_protocol is ``protocol``.
        Raises felix.errors.DataplaneError when the dump fails (nothing partial is returned)."""
        ...

    def dump_routes_verified(self, *, table: int, protocol: int, verified: Mapping[int, int],
                             sink: RouteSink) -> set[int]:
        """The same routes as dump_routes, sorted by whether they changed. A route whose dst key
        (``felix.routes.dst_key``) maps in ``verified`` to its current digest (an opaque int this
        dataplane derives from the route's full kernel state) is not decoded: its key is in the
        returned set. Every other route goes to ``sink.route(key, digest, route)`` while the dump
        is read. Lets a no-op resync skip decoding and comparing the whole table, with nothing
        cached but two ints per route. Raises felix.errors.DataplaneError like dump_routes."""
        ...

    def write(self, ops: Sequence[RouteOp]) -> list[RouteFailure]:
        """Apply ``ops`` in order; every op is acknowledged individually. Returns one RouteFailure per
        failed op (empty list = all applied). Never raises for per-route kernel errors
        (EEXIST/ENODEV/ENETUNREACH/EINVAL...); raises DataplaneError only if the channel is unusable."""
        ...

    def close(self) -> None:
        """Release the kernel socket(s). Idempotent."""
        ...

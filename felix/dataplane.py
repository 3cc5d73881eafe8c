"""The seam between the route table and the kernel: a Protocol, its op/failure values.

Implementations: ``felix.netlink.NetlinkDataplane`` (real, rtnetlink) and ``felix.fake.FakeDataplane``
(in memory, with fault injection). Mirrors the split in Calico's routetable.go (the table logic
talks to a ``netlinkshim.Interface``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping, Protocol, Sequence, runtime_checkable

from .routes import MAIN_TABLE, PODROUTE_PROTO, Route

Action = Literal["add", "replace", "delete"]


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class RouteFailure:
    """A failed op or dump. ``errno`` positive (errno module values); ``route`` None for a failure
    not tied to one route (a dump); ``action`` the op's action or "dump"."""

    route: Route | None
    errno: int
    message: str
    action: str = ""


@dataclass
class VerifiedDump:
    """Result of ``RouteDataplane.dump_routes_verified``: ``unchanged`` holds the dst keys
    (``felix.routes.dst_key``) of routes whose kernel state matched the caller's digest and were
    not decoded; ``decoded`` is ``(dst key, digest, route)`` for every other route of ours."""

    unchanged: set[int] = field(default_factory=set)
    decoded: list[tuple[int, int, Route]] = field(default_factory=list)


@runtime_checkable
class RouteDataplane(Protocol):
    """What RouteTable needs from the kernel."""

    def dump_routes(self, *, table: int, protocol: int) -> list[Route]:
        """All IPv4 routes in ``table`` whose rtm_protocol is ``protocol``.
        Raises felix.errors.DataplaneError when the dump fails (nothing partial is returned)."""
        ...

    def dump_routes_verified(self, *, table: int, protocol: int,
                             verified: Mapping[int, int]) -> VerifiedDump:
        """The same routes as dump_routes, sorted by whether they changed: a route whose dst key
        maps in ``verified`` to its current digest (an opaque int this dataplane derives from
        the route's full kernel state) is only counted as unchanged. Lets a no-op resync skip
        decoding and comparing the whole table, with nothing cached but two ints per route.
        Raises felix.errors.DataplaneError like dump_routes."""
        ...

    def write(self, ops: Sequence[RouteOp]) -> list[RouteFailure]:
        """Apply ``ops`` in order; every op is acknowledged individually. Returns one RouteFailure per
        failed op (empty list = all applied). Never raises for per-route kernel errors
        (EEXIST/ENODEV/ENETUNREACH/EINVAL...); raises DataplaneError only if the channel is unusable."""
        ...

    def close(self) -> None:
        """Release the kernel socket(s). Idempotent."""
        ...

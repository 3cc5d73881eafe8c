"""In-memory RouteDataplane with fault injection, for unit tests (no root, no kernel).

Models one kernel FIB closely enough to catch reconciler bugs: entries keyed by
(table, dst, metric) and tagged with a protocol; "add" fails with EEXIST whatever protocol holds
the key, "replace" overwrites whatever is there (as the kernel would clobber a foreign route — so a
test can see if RouteTable ever asked for that), "delete" matches protocol and fails with ESRCH
(reported as success, like the real adapter). Devices named by a route must be in ``links``
(else ENODEV); gateways must be inside ``reachable`` when that is set (else ENETUNREACH), unless onlink.
``block()`` makes dumps and writes wait, as a netlink call waits on the RTNL lock under veth churn.
"""
from __future__ import annotations

import copy
import errno as E
import threading
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Callable, Iterable, Mapping, Sequence

from .dataplane import RouteFailure, RouteOp, RouteSink
from .errors import DataplaneError
from .routes import MAIN_TABLE, PODROUTE_PROTO, Route, dst_key

Match = "IPv4Network | str | Callable[[RouteOp], bool] | None"


@dataclass
class FakeEntry:
    protocol: int
    route: Route


@dataclass
class _Fault:
    errno: int
    times: int
    match: Callable[[RouteOp], bool] | None
    message: str


def _matcher(match) -> Callable[[RouteOp], bool] | None:
    if match is None or callable(match):
        return match
    dst = IPv4Network(match)
    return lambda op: op.route.dst == dst


class FakeDataplane:
    """See module doc. Public state for assertions:
    ``routes`` {(table, dst, metric): FakeEntry}; ``links`` set of device names; ``reachable``
    list of IPv4Network or None (= every gateway reachable); ``calls`` [("dump"|"write"|"close", arg)];
    ``batches`` [tuple[RouteOp, ...]] one per write() call; ``dumps`` count.
    """

    def __init__(self, links: Iterable[str] = ("eth0",), reachable: Iterable[IPv4Network | str] | None = None):
        self.routes: dict[tuple[int, IPv4Network, int], FakeEntry] = {}
        self.links: set[str] = set(links)
        self.reachable = None if reachable is None else [IPv4Network(n) for n in reachable]
        self.calls: list[tuple[str, object]] = []
        self.batches: list[tuple[RouteOp, ...]] = []
        self.dumps = 0
        self.closed = False
        self._faults: list[_Fault] = []
        self._dump_faults: list[_Fault] = []
        self._gate = threading.Event()
        self._gate.set()
        self._block_max_s = 0.0
        self.waiting = threading.Event()  # set while a dump or write waits in block()

    # -- blocking (the kernel holding a call) ---------------------------------------------------
    def block(self, max_s: float = 30.0) -> None:
        """Make every dump and write wait until ``unblock()``, at most ``max_s`` seconds (then
        the call fails with ETIMEDOUT, so a test cannot hang). ``waiting`` is set meanwhile."""
        self._block_max_s = max_s
        self._gate.clear()

    def unblock(self) -> None:
        self._gate.set()

    def _wait_gate(self, what: str) -> None:
        if self._gate.is_set():
            return
        self.waiting.set()
        try:
            if not self._gate.wait(self._block_max_s):
                raise DataplaneError(E.ETIMEDOUT, f"fake {what} blocked for {self._block_max_s} s")
        finally:
            self.waiting.clear()

    # -- test helpers -----------------------------------------------------------------------------
    def fail_next(self, errno: int, times: int = 1, match: Match = None, message: str = "") -> None:
        """The next ``times`` write ops matching ``match`` (a dst, or a predicate on RouteOp, or None =
        any op) fail with ``errno`` instead of being applied."""
        self._faults.append(_Fault(errno, times, _matcher(match), message or f"injected errno {errno}"))

    def fail_dump_next(self, errno: int, times: int = 1, message: str = "") -> None:
        """The next ``times`` dump_routes() calls raise DataplaneError(errno)."""
        self._dump_faults.append(_Fault(errno, times, None, message or f"injected dump errno {errno}"))

    def add_foreign(self, route: Route, protocol: int = 12, table: int = MAIN_TABLE) -> None:
        """Insert a route of another protocol (e.g. BIRD's 12, kernel 2) as someone else would."""
        self.routes[(table, route.dst, route.metric)] = FakeEntry(protocol, route)

    def delete_by_hand(self, dst: IPv4Network | str, table: int = MAIN_TABLE, metric: int = 0) -> None:
        """Remove a route behind felix's back (``ip route del``). KeyError if absent."""
        del self.routes[(table, IPv4Network(dst), metric)]

    def remove_link(self, name: str) -> None:
        """Delete a device; like the kernel, silently flush every route through it."""
        self.links.discard(name)
        for key, e in list(self.routes.items()):
            if name in _devices(e.route):
                del self.routes[key]

    def ours(self, table: int = MAIN_TABLE, protocol: int = PODROUTE_PROTO) -> dict[IPv4Network, Route]:
        """{dst: route} of the given protocol in ``table`` (lowest metric wins on duplicates)."""
        out: dict[IPv4Network, Route] = {}
        for (t, dst, metric), e in sorted(self.routes.items(), key=lambda kv: -kv[0][2]):
            if t == table and e.protocol == protocol:
                out[dst] = e.route
        return out

    @property
    def written_ops(self) -> list[RouteOp]:
        return [op for b in self.batches for op in b]

    # -- RouteDataplane ---------------------------------------------------------------------------
    def dump_routes(self, *, table: int, protocol: int) -> list[Route]:
        self._wait_gate("dump")
        self.calls.append(("dump", (table, protocol)))
        self.dumps += 1
        for f in self._dump_faults:
            if f.times > 0:
                f.times -= 1
                raise DataplaneError(f.errno, f.message)
        # Copies, as a kernel dump decodes new objects: identity must not leak through the fake.
        return [copy.deepcopy(e.route) for (t, _d, _m), e in sorted(self.routes.items(), key=lambda kv: (kv[0][1], kv[0][2]))
                if t == table and e.protocol == protocol]

    def dump_routes_verified(self, *, table: int, protocol: int, verified: Mapping[int, int],
                             sink: RouteSink) -> set[int]:
        """dump_routes sorted by ``verified`` (see RouteDataplane); the digest is hash(route)."""
        unchanged: set[int] = set()
        routes = self.dump_routes(table=table, protocol=protocol)
        sink.restart()
        for route in routes:
            key, digest = dst_key(route.dst), hash(route)
            if verified.get(key) == digest:
                unchanged.add(key)
            else:
                sink.route(key, digest, route)
        return unchanged

    def write(self, ops: Sequence[RouteOp]) -> list[RouteFailure]:
        self._wait_gate("write")
        ops = tuple(ops)
        self.calls.append(("write", ops))
        self.batches.append(ops)
        failures = []
        for op in ops:
            err = self._apply(op)
            if err is not None:
                failures.append(RouteFailure(op.route, err[0], err[1], op.action))
        return failures

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closed = True

    # -- kernel model -----------------------------------------------------------------------------
    def _apply(self, op: RouteOp) -> tuple[int, str] | None:
        for f in self._faults:
            if f.times > 0 and (f.match is None or f.match(op)):
                f.times -= 1
                return f.errno, f.message
        r = op.route
        if op.action == "delete":
            cands = sorted(k for k, e in self.routes.items()
                           if k[0] == op.table and k[1] == r.dst and e.protocol == op.protocol
                           and (r.metric == 0 or k[2] == r.metric))
            if cands:
                del self.routes[cands[0]]
            return None  # ESRCH on delete counts as success
        for name in _devices(r):
            if name not in self.links:
                return E.ENODEV, f"no device named {name!r}"
        if self.reachable is not None:
            for gw, onlink in _gateways(r):
                if not onlink and not any(gw in n for n in self.reachable):
                    return E.ENETUNREACH, "Nexthop has invalid gateway"
        key = (op.table, r.dst, r.metric)
        if op.action == "add" and key in self.routes:
            return E.EEXIST, "File exists"
        self.routes[key] = FakeEntry(op.protocol, r)
        return None


def _devices(r: Route) -> list[str]:
    names = [r.ifname] if r.ifname else []
    return names + [h.ifname for h in r.multipath if h.ifname]


def _gateways(r: Route) -> list[tuple[IPv4Address, bool]]:
    gws = [(r.gateway, r.onlink)] if r.gateway is not None else []
    return gws + [(h.gateway, h.onlink) for h in r.multipath]

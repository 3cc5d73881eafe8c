"""Desired-vs-actual reconciliation of felix's routes in one FIB table (Calico Felix's routetable).

Owners ("workloads", "blocks", "bgp", ...) each set their desired routes; ``apply()`` resolves
conflicts between owners, diffs the winners against the kernel's routes of our protocol, and
writes only the difference. See ``RouteTable`` for the complications handled.
"""
from __future__ import annotations

import errno as E
import logging
import time
from dataclasses import dataclass
from ipaddress import IPv4Network
from types import MappingProxyType
from typing import Iterable, Mapping, ValuesView

from .dataplane import RouteDataplane, RouteFailure, RouteOp
from .errors import DataplaneError, InvalidRoute
from .plan import Plan, ResyncSink, as_tuple, plan_general, plan_incremental
from .routes import MAIN_TABLE, PODROUTE_PROTO, DstView, Route, dst_key

OWNER_PRIORITY: Mapping[str, int] = MappingProxyType({"workloads": 300, "blocks": 200, "bgp": 100})
"""Who wins when owners want the same dst: workloads (local pod /32) > blocks (local block
blackhole / IPIP block routes) > bgp (learned). Unknown owners rank 0; ties go to the owner name
that sorts first. Mirrors Calico, where a local workload route beats everything and the local
block's blackhole beats a BGP-learned route for the same prefix."""


@dataclass(frozen=True)
class ApplyResult:
    """Outcome of one ``apply()``: ops that succeeded by kind, the failures (route None = the dump
    failed), wall time in seconds, whether the kernel was re-read (``full_sync``), and how many of
    our kernel routes that re-read decoded and compared (``checked``; the rest were verified
    unchanged by digest)."""

    added: int
    replaced: int
    deleted: int
    errors: tuple[RouteFailure, ...]
    duration_s: float
    full_sync: bool = False
    checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def changes(self) -> int:
        return self.added + self.replaced + self.deleted


class RouteTable:
    """Owns every IPv4 route with rtm_protocol ``protocol`` in FIB ``table``; never touches others.

    Setters (``set_routes``/``set_route``/``remove_route``) only change desired state and remember
    which dsts changed; ``apply()`` then writes, in batches of ``batch_size`` ops (deletes first,
    then adds/replaces), only what differs. While the table is not dirty, apply() trusts its cache of
    the kernel and looks only at changed dsts (cheap no-op when nothing changed); when dirty (at
    start, after ``mark_dirty()``, after any failure) it re-dumps our routes and diffs everything.

    Real-world complications handled (after Calico's routetable.go):
     - routes deleted or changed by hand / by another tool using our protocol: the monitor (or the
       agent's periodic resync) calls ``mark_dirty()``; the next apply restores them;
     - kernel-added and other daemons' routes (proto kernel/boot/static, BIRD 12, ...) are never
       dumped as ours, never replaced or deleted: new routes are written with NLM_F_EXCL ("add"),
       so a foreign route holding the same (dst, metric) yields EEXIST, reported as a conflict for
       that dst and retried later — NLM_F_REPLACE is only used where our own route was seen;
     - interfaces that do not exist yet (workload veth being created) or flap: ENODEV /
       ENETUNREACH / ENETDOWN are reported per route, the route stays desired and is retried on the
       next apply; the kernel silently flushes routes of a deleted or downed device (no
       RTM_DELROUTE), which the monitor's link events plus mark_dirty cover;
     - partial batch failure: each op is acked separately, the others are applied and cached;
     - a failed dump writes nothing and leaves the table dirty;
     - duplicates of our route for one dst at other metrics are deleted; our routes of shapes felix
       would not create are replaced;
     - ``ifname=None`` in a desired route accepts whatever device the kernel chose for the gateway;
     - a periodic full resync of a large table: a route the last dump found satisfying its desired
       route is remembered as (dst key, digest of its kernel bytes) and, while neither side
       changes, is counted and skipped by the next dump without being decoded; no decoded copy of
       the table is kept between resyncs (at 100k routes a copy costs ~60 MB).
     - large tables: every table here is keyed by ``dst_key`` (one int per dst), not by the
       IPv4Network: an int hashes and compares in C, an IPv4Network calls Python per probe
       and, at 100k routes, misses the cache on the object before the probe starts.
    Not handled: routes at a non-zero TOS, IPv6, routes added with ``ip route append`` that share
    (dst, metric) with ours (REPLACE would hit the first one).

    ``apply()`` is synchronous and single-threaded (the agent runs it on one felix thread,
    ``felix.worker``); it never raises for dataplane errors, only reports them in
    ApplyResult.errors, and logs them at debug level only: a route that keeps failing fails at
    every apply, and the caller decides what to log (the agent rate-limits it, ``felix.backoff``).
    """

    def __init__(self, dataplane: RouteDataplane, *, protocol: int = PODROUTE_PROTO, table: int = MAIN_TABLE,
                 batch_size: int = 1000, log: logging.Logger = logging.getLogger("felix.routetable")) -> None:
        if not 1 <= protocol <= 255:
            raise ValueError(f"protocol must be 1..255, got {protocol}")
        if not 1 <= table <= 0xFFFFFFFF or table in (0, 255):
            raise ValueError(f"bad table id {table}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._dp = dataplane
        self.protocol = protocol
        self.table = table
        self.batch_size = batch_size
        self._log = log
        # Every table is keyed by dst_key(dst) (class doc).
        self._by_owner: dict[str, dict[int, Route]] = {}
        self._ranked: list[dict[int, Route]] = []
        self._ranked_names: list[str] = []
        self._desired: dict[int, Route] = {}
        # Our routes in the kernel per dst: the Route itself in the common case of one, a
        # tuple when several metrics exist (a 1-tuple per route would cost ~5 MB at 100k).
        self._actual: dict[int, Route | tuple[Route, ...]] = {}
        # Changed dsts since the last apply -> their desired route now (None: none).
        self._pending: dict[int, Route | None] = {}
        # dst_key -> the dataplane's digest of the one kernel route that satisfied the desired
        # route at the last full dump; dropped when either side changes. See apply().
        self._verified: dict[int, int] = {}
        self._unverified: set[int] = set()  # dsts changed since: their digests go at the next dump
        self._dirty = True
        self.last_result: ApplyResult | None = None

    # -- desired state ----------------------------------------------------------------------------
    def set_routes(self, owner: str, routes: Iterable[Route]) -> None:
        """Replace all desired routes of ``owner``. Raises InvalidRoute on a non-Route item or two
        routes for the same dst (state unchanged then). Writes nothing."""
        new: dict[int, Route] = {}
        for r in routes:
            if not isinstance(r, Route):
                raise InvalidRoute("route", f"expected Route, got {type(r).__name__}")
            key = dst_key(r.dst)
            if key in new and new[key] != r:
                raise InvalidRoute("dst", f"owner {owner!r} gave two routes for {r.dst}")
            new[key] = r
        old = self._by_owner.get(owner, {})
        changed = {d for d in old.keys() | new.keys() if old.get(d) != new.get(d)}
        if new:
            self._by_owner[owner] = new
        else:
            self._by_owner.pop(owner, None)
        self._rank()
        for dst in changed:
            self._resolve(dst)

    def set_route(self, owner: str, route: Route, key: int | None = None) -> None:
        """Add or replace ``owner``'s desired route for ``route.dst``. Writes nothing.

        ``key``: ``dst_key(route.dst)`` when the caller already holds that int (the BGP path
        passes its Loc-RIB key, so one int object per route serves every table); checked
        against the route, InvalidRoute if it differs."""
        if not isinstance(route, Route):
            raise InvalidRoute("route", f"expected Route, got {type(route).__name__}")
        if key is None:
            key = dst_key(route.dst)
        elif key != dst_key(route.dst):
            raise InvalidRoute("dst", f"key {key!r} is not the dst key of {route.dst}")
        routes = self._by_owner.get(owner)
        if routes is None:
            routes = self._by_owner[owner] = {}
            self._rank()
        old = routes.get(key)
        if old is route or (old is not None and old == route):
            return
        routes[key] = route
        self._resolve(key)

    def remove_route(self, owner: str, dst: IPv4Network | str) -> None:
        """Drop ``owner``'s desired route for ``dst`` (no-op if it had none). Writes nothing.
        Raises ValueError on text that is not an IPv4 network."""
        if not isinstance(dst, IPv4Network):
            dst = IPv4Network(dst)
        self.remove_key(owner, dst_key(dst))

    def remove_key(self, owner: str, key: int) -> None:
        """``remove_route`` by ``dst_key(dst)`` (the BGP path holds keys, not prefixes)."""
        routes = self._by_owner.get(owner)
        if routes and routes.pop(key, None) is not None:
            if not routes:
                del self._by_owner[owner]
                self._rank()
            self._resolve(key, routes)

    def _rank(self) -> None:
        # Owners' tables, highest priority first (ties: name order), rebuilt when an owner
        # appears or disappears: the winner for a dst is the first table holding it.
        self._ranked_names = sorted(self._by_owner, key=lambda o: (-OWNER_PRIORITY.get(o, 0), o))
        self._ranked = [self._by_owner[o] for o in self._ranked_names]

    def _winner(self, key: int) -> str | None:
        for name, routes in zip(self._ranked_names, self._ranked):
            if key in routes:
                return name
        return None

    def _resolve(self, key: int, without: dict[int, Route] | None = None) -> None:
        # ``without``: the owner table ``key`` was just popped from (a sure miss; at 100k
        # routes a probe of the BGP owner's table is a cache miss).
        for routes in self._ranked:
            if routes is without:
                continue
            route = routes.get(key)
            if route is not None:
                break
        else:
            if self._desired.pop(key, None) is not None:
                self._pending[key] = None
            return
        cur = self._desired.get(key)
        if cur is None or (cur is not route and cur != route):
            self._desired[key] = route
            self._pending[key] = route

    def desired(self) -> Mapping[IPv4Network, Route]:
        """Read-only live view {dst: winning Route} after owner-priority resolution."""
        return DstView(self._desired)

    def owned(self, owner: str) -> Mapping[IPv4Network, Route]:
        """The routes ``owner`` asked for (read-only view), whether or not they won priority."""
        return DstView(self._by_owner.get(owner, {}))

    def actual_entries(self) -> ValuesView[Route | tuple[Route, ...]]:
        """Our routes in the kernel per dst (a tuple where several metrics exist) as the last
        apply left them; re-read at every full sync. Owner thread only (felix.worker.submit)."""
        return self._actual.values()

    def owner_of(self, dst: IPv4Network | str) -> str | None:
        """The owner whose route for ``dst`` won, or None."""
        return self._winner(dst_key(dst if isinstance(dst, IPv4Network) else IPv4Network(dst)))

    def mark_dirty(self) -> None:
        """Make the next apply() re-read our routes from the kernel and diff everything."""
        self._dirty = True

    @property
    def dirty(self) -> bool:
        return self._dirty

    def is_expected(self, route: Route, deleted: bool) -> bool:
        """For the monitor: True if a kernel notification about our ``route`` (``deleted`` =
        RTM_DELROUTE) is consistent with desired state (an echo of our own write), False if it
        means drift that needs an apply."""
        want = self._desired.get(dst_key(route.dst))
        if deleted:
            return want is None or not want.satisfied_by(route)
        return want is not None and want.satisfied_by(route)

    # -- reconciliation ---------------------------------------------------------------------------
    def apply(self) -> ApplyResult:
        """Make the kernel match desired state; see the class doc. Idempotent: a second call with
        no changes in between writes nothing. Returns ApplyResult; never raises DataplaneError.

        Steps: drop the digests of dsts that changed (:meth:`_forget_digests`); when dirty,
        re-read our routes (:meth:`_full_sync`), else plan the pending dsts against the cache
        (felix.plan.plan_incremental); plan what neither settled (felix.plan.plan_general);
        write and record (:meth:`_write`)."""
        t0 = time.perf_counter()
        full = self._dirty
        self._forget_digests(full)
        if full:
            try:
                plan, checked = self._full_sync()
            except DataplaneError as e:
                self._log.debug("route dump failed, nothing written: %s", e)
                res = ApplyResult(0, 0, 0, (RouteFailure(None, e.errno, f"dump failed: {e.message}", "dump"),),
                                  time.perf_counter() - t0, True)
                self.last_result = res
                return res
        else:
            plan, checked = plan_incremental(self._pending, self._actual, self.table, self.protocol), 0
        plan_general(plan, self.table, self.protocol)
        counts, failures, n_ops = self._write(plan)
        if failures:
            self._dirty = True
            self._log.debug("apply: %d of %d route ops failed, first: %s %s: %s", len(failures), n_ops,
                            failures[0].action, failures[0].route, failures[0].message)
        else:
            self._dirty = False
        res = ApplyResult(counts["add"], counts["replace"], counts["delete"], tuple(failures),
                          time.perf_counter() - t0, full, checked)
        if res.changes or failures:
            self._log.log(logging.INFO if res.changes else logging.DEBUG, "apply: +%d ~%d -%d, %d errors, %.1f ms%s",
                          res.added, res.replaced, res.deleted, len(failures), res.duration_s * 1e3,
                          " (full sync)" if full else "")
        self.last_result = res
        return res

    def _forget_digests(self, full: bool) -> None:
        # A digest certifies "the kernel route satisfied the desired one at the last dump".
        # Every pending dst's desired route changed since, so its digest must not be trusted
        # by the next dump, the digests' only reader; the dump drops them (a pop per
        # withdrawn dst here is a cache miss on a key the dump allocated, at 100k routes).
        # Nothing else needs dropping: incremental writes are all to pending dsts, and a full
        # sync writes only dsts its dump could not settle, which are never verified.
        verified = self._verified
        if verified and self._pending:
            self._unverified.update(self._pending)
            if len(self._unverified) > len(verified):
                # More changed than verified (churn between resyncs): the set would outgrow
                # the table it guards. Forget every digest; the next dump decodes it all.
                verified.clear()
                self._unverified = set()
        if full and self._unverified:
            pop = verified.pop
            for key in self._unverified:
                pop(key, None)
            self._unverified = set()

    def _full_sync(self) -> tuple[Plan, int]:
        """Re-read our routes (a verified dump, felix.plan.ResyncSink), rebuild ``_actual``
        and plan the dsts the dump could not settle plus the desired dsts the kernel lacks.
        Returns (plan with only ``pairs``, routes decoded). Raises DataplaneError (nothing
        changed then)."""
        verified = self._verified
        sink = ResyncSink(self._desired)
        unchanged = self._dp.dump_routes_verified(table=self.table, protocol=self.protocol,
                                                  verified=verified, sink=sink)
        # Verified routes the kernel still holds byte for byte keep their entry (the desired
        # Route object itself) and are not looked at again: neither side changed since.
        old = self._actual
        if len(unchanged) != len(verified):
            self._verified = verified = {k: verified[k] for k in unchanged}
        if len(unchanged) == len(old):
            actual = old  # verified keys are a subset of old's dsts: all of them are intact
        else:
            actual = {k: e for k, e in old.items() if k in unchanged} if unchanged else {}
        verified.update(sink.verified)
        for key, entry in sink.fresh.items():
            prev = actual.get(key)
            if prev is None:
                actual[key] = entry
            else:  # another route appeared next to a verified one
                actual[key] = as_tuple(prev) + as_tuple(entry)
                verified.pop(key, None)
                sink.needs.add(key)
        self._actual = actual
        desired = self._desired
        plan = Plan()
        plan.pairs = [(key, desired.get(key), as_tuple(actual[key])) for key in sink.needs]
        plan.pairs += [(key, want, ()) for key, want in desired.items() if key not in actual]
        return plan, sink.count

    def _write(self, plan: Plan) -> tuple[dict[str, int], list[RouteFailure], int]:
        """Write ``plan`` in batches of ``batch_size``, record each success in ``_actual``,
        keep failed dsts pending. Returns (successes by action, failures, ops written)."""
        failures: list[RouteFailure] = []
        failed_keys: list[int] = []
        counts = {"add": 0, "replace": 0, "delete": 0}
        ops, keys = plan.ops()
        n_cleared = len(plan.cleared)
        record = self._record
        size = self.batch_size
        for start in range(0, len(ops), size):
            chunk = ops[start:start + size]
            try:
                failed = self._dp.write(chunk)
            except DataplaneError as e:
                failed = [RouteFailure(op.route, e.errno, e.message, op.action) for op in chunk]
            chunk_keys = keys[start:start + size]
            pre = min(max(n_cleared - start, 0), len(chunk))  # leading ops already cleared
            if failed:
                bad = {(f.action, f.route) for f in failed}
                failures.extend(self._explain(f) for f in failed)
                for j, (key, op) in enumerate(zip(chunk_keys, chunk)):
                    if (op.action, op.route) in bad:
                        failed_keys.append(key)
                        if j < pre:  # still there, as far as we know
                            self._actual[key] = op.route
                    else:
                        counts[op.action] += 1
                        if j >= pre:
                            record(key, op)
            else:
                counts["delete"] += pre
                for key, op in zip(chunk_keys[pre:], chunk[pre:]):
                    counts[op.action] += 1
                    record(key, op)
        desired = self._desired
        self._pending = {key: desired.get(key) for key in failed_keys}
        return counts, failures, len(ops)

    def _record(self, key: int, op: RouteOp) -> None:
        r = op.route
        actual = self._actual
        # The common case is one probe: this op's route is, or was, our only route at dst.
        if op.action == "delete":
            cur = actual.pop(key, None)
            if cur is None or (type(cur) is not tuple and cur.metric == r.metric):
                return
            have = tuple(x for x in as_tuple(cur) if x.metric != r.metric)
        else:
            cur = actual.get(key)
            if cur is None or (type(cur) is not tuple and cur.metric == r.metric):
                actual[key] = r
                return
            have = tuple(x for x in as_tuple(cur) if x.metric != r.metric) + (r,)
        if have:
            actual[key] = have[0] if len(have) == 1 else have

    def _explain(self, f: RouteFailure) -> RouteFailure:
        if f.errno == E.EEXIST and f.action == "add":
            return RouteFailure(f.route, f.errno,
                                f"conflict: a route of another protocol holds {f.route.dst if f.route else '?'}"
                                f" in table {self.table}; left alone ({f.message})", f.action)
        return f

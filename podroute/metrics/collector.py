"""The scrape-time collector: gauges and counters read from the agent's own state when
Prometheus scrapes, so the hot paths pay nothing for them.

Three owners, three ways in (:meth:`AgentCollector.collect` runs on the listener's thread):

- the event loop's state (the speaker's per-peer status, felix's driver counters, the loop
  lag, the datastore watch): one function run on the loop (``loop.call_soon_threadsafe``),
  waited on for at most :data:`LOOP_ANSWER_S`. A loop that does not answer (blocked) leaves
  those families out of that scrape rather than serve stale values; the loop-lag gauge is
  then read from the listener's thread and shows the stall;
- felix's kernel view (routes by kind): counted on felix's own thread
  (:meth:`felix.worker.RouteTableWorker.submit`), at most once per completed apply (cached
  until the next), waited on for :data:`FELIX_ANSWER_S`. Counting 100k routes takes ~20-35
  ms of that thread, so while felix is busy (a convergence) the previous count is served
  instead of queueing a count between its applies: the gauge may lag a burst by a scrape;
- IPAM usage: read on the listener's thread (the IPAM's own locks).

Families and labels are listed in :data:`podroute.metrics.names.DOC` (the README table).
Labels are bounded: peer, reason, kind, owner, errno, block, state; never a prefix or a pod.
"""
from __future__ import annotations

import concurrent.futures
import errno as E
import logging
import time
from typing import Any, Callable, Iterator, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from felix.routes import Route, RouteType, Scope
from felix.routetable import RouteTable
from ipip.devices import TUNL0, VXLAN_IFNAME
from podroute.metrics.names import DOC, FIB_KINDS

log = logging.getLogger("podroute.metrics")
T = TypeVar("T")

LOOP_ANSWER_S = 2.0
FELIX_ANSWER_S = 2.0
SESSION_STATES = ("idle", "connect", "established", "down")
FIB_OWNERS = ("workloads", "blocks", "bgp")
_TUNNELS = frozenset((TUNL0, VXLAN_IFNAME))


def route_kind(r: Route) -> str:
    """One of FIB_KINDS: ``blackhole`` (a local block), ``workload`` (a pod's /32 on its veth:
    a device route without gateway), ``tunnel`` (a remote block over tunl0 or the VXLAN
    device), ``remote`` (a remote block routed natively)."""
    if r.type is RouteType.BLACKHOLE:
        return "blackhole"
    if r.multipath:
        return "tunnel" if any(h.ifname in _TUNNELS for h in r.multipath) else "remote"
    if r.ifname in _TUNNELS:
        return "tunnel"
    if r.gateway is None and r.scope is Scope.LINK:
        return "workload"
    return "remote"


def count_kinds(rt: RouteTable) -> dict[str, int]:
    """Our routes in the kernel by kind (felix's thread: it iterates the table)."""
    counts = dict.fromkeys(FIB_KINDS, 0)
    for e in rt.actual_entries():
        for r in (e if type(e) is tuple else (e,)):
            counts[route_kind(r)] += 1
    return counts


def on_loop(loop: Any, fn: Callable[[], T], timeout: float) -> T | None:
    """``fn()`` run on ``loop`` (from another thread), or None if the loop did not run it
    within ``timeout`` s or is closed. ``fn``'s own exception propagates."""
    fut: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if fut.set_running_or_notify_cancel():
            try:
                fut.set_result(fn())
            except Exception as e:  # noqa: BLE001 - handed to the waiting thread
                fut.set_exception(e)
    try:
        loop.call_soon_threadsafe(run)
    except RuntimeError:
        return None  # the loop is closed
    try:
        return fut.result(timeout)
    except concurrent.futures.TimeoutError:
        fut.cancel()  # not run yet: it never will be
        return None


def _g(name: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, DOC[name], labels=list(labels))


def _c(name: str, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, DOC[name], labels=list(labels))


class AgentCollector:
    """A prometheus_client custom collector over ``agent`` (:class:`podroute.agent.Agent`)
    and its ``health``. :meth:`bind` gives it the agent's loop (before that, the loop's
    families are left out)."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.loop: Any = None
        self.loop_answer_s = LOOP_ANSWER_S
        self._kinds: tuple[object, dict[str, int]] | None = None  # (the apply counted, counts)

    def bind(self, loop: Any) -> None:
        self.loop = loop

    def describe(self) -> list[Metric]:
        return []  # no collect() at registration: the agent is not running yet

    # -- collect (the listener's thread) --------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        state = on_loop(self.loop, self._loop_state, self.loop_answer_s) if self.loop is not None else None
        yield from self._health()
        yield from self._loop(state)
        if state is not None:
            yield from self._bgp(state)
            yield from self._fib_loop(state)
            yield from self._datastore(state)
        yield from self._fib_kinds()
        yield from self._ipam()

    def _loop_state(self) -> dict[str, Any]:
        """Everything read on the loop, as plain values (runs on the loop)."""
        a = self.agent
        f = a.felix
        return {"speaker": a.speaker.status(), "loc_rib": len(a.speaker.best_routes_view()),
                "drifts": f.drifts, "timer_resyncs": f.resyncs,
                "failing": f.failures.failing_by_errno(),
                "desired": {o: len(a.routes.owned(o)) for o in FIB_OWNERS},
                "loop": a.looplag.status(), "stalls": a.looplag.stalls,
                "datastore": a.cluster.status() if a.cluster is not None else None}

    def _health(self) -> Iterator[Metric]:
        rep = self.agent.health.served()
        ready = _g("podroute_ready")
        ready.add_metric([], 1.0 if rep.ok else 0.0)
        yield ready
        checks = _g("podroute_health_check", ("check",))
        for name, c in {**rep.checks, **self.agent.health.liveness().checks}.items():
            checks.add_metric([name], 1.0 if c.ok else 0.0)
        yield checks

    def _loop(self, state: dict[str, Any] | None) -> Iterator[Metric]:
        overdue = self.agent.looplag.overdue_s() or 0.0
        lag = _g("podroute_event_loop_lag_seconds")
        lag.add_metric([], max(overdue, state["loop"]["lag_s"] if state else 0.0))
        yield lag
        if state is not None:
            worst = _g("podroute_event_loop_lag_worst_seconds")
            worst.add_metric([], state["loop"]["worst_s"])
            yield worst
            stalls = _c("podroute_event_loop_stalls_total")
            stalls.add_metric([], state["stalls"])
            yield stalls

    def _bgp(self, state: dict[str, Any]) -> Iterator[Metric]:
        sp = state["speaker"]
        now = time.time()
        fams = {n: _g(n, ("peer",)) for n in (
            "podroute_bgp_session_up", "podroute_bgp_session_state_seconds", "podroute_bgp_prefixes_received",
            "podroute_bgp_prefixes_accepted", "podroute_bgp_stale_routes", "podroute_bgp_end_of_rib_received")}
        st = _g("podroute_bgp_session_state", ("peer", "state"))
        rejected = _g("podroute_bgp_prefixes_rejected", ("peer", "reason"))
        counters = {n: _c(n, ("peer",)) for n in (
            "podroute_bgp_updates_received_total", "podroute_bgp_session_flaps_total",
            "podroute_bgp_max_prefixes_teardowns_total")}
        for p in sp.peers:
            peer = [str(p.address)]
            fams["podroute_bgp_session_up"].add_metric(peer, 1.0 if p.state == "established" else 0.0)
            fams["podroute_bgp_session_state_seconds"].add_metric(peer, max(0.0, now - p.since))
            fams["podroute_bgp_prefixes_received"].add_metric(peer, p.prefixes_received)
            fams["podroute_bgp_prefixes_accepted"].add_metric(peer, p.prefixes_accepted)
            fams["podroute_bgp_stale_routes"].add_metric(peer, p.stale_routes)
            fams["podroute_bgp_end_of_rib_received"].add_metric(peer, 1.0 if p.eor_received else 0.0)
            for s in SESSION_STATES:
                st.add_metric(peer + [s], 1.0 if p.state == s else 0.0)
            for reason, n in p.rejected_by_reason:
                rejected.add_metric(peer + [reason], n)
            counters["podroute_bgp_updates_received_total"].add_metric(peer, p.updates_received)
            counters["podroute_bgp_session_flaps_total"].add_metric(peer, p.flaps)
            counters["podroute_bgp_max_prefixes_teardowns_total"].add_metric(peer, p.max_prefixes_teardowns)
        yield from fams.values()
        yield st
        yield rejected
        yield from counters.values()
        sent = _c("podroute_bgp_prefixes_sent_total", ("action",))
        for action in ("announce", "withdraw"):
            sent.add_metric([action], sp.prefixes_sent.get(action, 0))
        yield sent
        restarts = _c("podroute_exabgp_restarts_total")
        restarts.add_metric([], sp.exabgp_restarts)
        yield restarts
        up = _g("podroute_exabgp_running")
        up.add_metric([], 0.0 if sp.exabgp_pid is None else 1.0)
        yield up
        rib = _g("podroute_bgp_loc_rib_routes")
        rib.add_metric([], state["loc_rib"])
        yield rib

    def _fib_loop(self, state: dict[str, Any]) -> Iterator[Metric]:
        desired = _g("podroute_fib_desired_routes", ("owner",))
        for owner, n in state["desired"].items():
            desired.add_metric([owner], n)
        yield desired
        pods = _g("podroute_cni_pods")
        pods.add_metric([], state["desired"]["workloads"])
        yield pods
        drift = _c("podroute_fib_drift_repairs_total")
        drift.add_metric([], state["drifts"])
        yield drift
        timer = _c("podroute_fib_periodic_resyncs_total")
        timer.add_metric([], state["timer_resyncs"])
        yield timer
        failing = state["failing"]
        conflict = _g("podroute_fib_conflict_routes")
        conflict.add_metric([], failing.get(E.EEXIST, 0))
        yield conflict
        fail = _g("podroute_fib_failing_routes", ("errno",))
        for no, n in sorted(failing.items()):
            fail.add_metric([E.errorcode.get(no, str(no))], n)
        yield fail

    def _datastore(self, state: dict[str, Any]) -> Iterator[Metric]:
        ds = state["datastore"]
        if ds is None:
            return
        up = _g("podroute_datastore_connected")
        up.add_metric([], 1.0 if ds["available"] else 0.0)
        yield up
        ev = _c("podroute_datastore_watch_events_total")
        ev.add_metric([], ds["watch_events"])
        yield ev
        err = _c("podroute_datastore_errors_total")
        err.add_metric([], ds["errors"])
        yield err
        rev = _g("podroute_datastore_revision")
        rev.add_metric([], ds["revision"])
        yield rev

    def _fib_kinds(self) -> Iterator[Metric]:
        routes = self.agent.routes
        fam = _g("podroute_fib_routes", ("kind",))
        cached = self._kinds[1] if self._kinds is not None else None
        if cached is not None and routes.busy_for() is not None:
            counts = cached  # felix is applying: do not hold its next apply back (module doc)
        else:
            try:
                counts = routes.submit(self._count).result(FELIX_ANSWER_S)
            except concurrent.futures.TimeoutError:
                counts = cached
        if counts is None:
            return  # felix has been busy since start: nothing counted yet
        for kind in FIB_KINDS:
            fam.add_metric([kind], counts[kind])
        yield fam

    def _count(self, rt: RouteTable) -> dict[str, int]:
        # felix's thread: recount only after another apply (nothing else changes the table's
        # view of the kernel).
        cached = self._kinds
        if cached is not None and cached[0] is rt.last_result:
            return cached[1]
        counts = count_kinds(rt)
        self._kinds = (rt.last_result, counts)
        return counts

    def _ipam(self) -> Iterator[Metric]:
        try:
            usage = self.agent.ipam.block_usage()
        except Exception as e:  # noqa: BLE001 - unreadable IPAM state: the other families still go out
            log.warning("could not read IPAM usage for the metrics", extra={"kv": {"error": str(e)}})
            return
        blocks = _g("podroute_ipam_blocks")
        blocks.add_metric([], len(usage))
        yield blocks
        addrs = _g("podroute_ipam_block_addresses", ("block", "state"))
        for cidr, (used, free) in sorted(usage.items()):
            addrs.add_metric([str(cidr), "used"], used)
            addrs.add_metric([str(cidr), "free"], free)
        yield addrs

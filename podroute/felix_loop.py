"""Felix's driver in the agent: when to apply, the periodic resync, drift, and who waits on a route.

Every event (a BGP delta, a workload, drift seen by the netlink monitor, a retry timer) kicks
the loop. A kick that finds felix idle waits :data:`DEBOUNCE_S` so a burst becomes one batch; a
kick that arrived while an apply ran is applied as soon as that apply ends (the apply was its
batching window), and a kick with a CNI request waiting on its route is not delayed. Applies run
on felix's own thread (:mod:`felix.worker`): dumps and writes wait on the kernel, never on the event loop. A
full resync every ``resync_s`` seconds is the safety net (kube-router's immediate apply plus
periodic sync). Routes that keep failing are retried with backoff and logged once, then
summarised (:mod:`felix.backoff`).

:meth:`FelixDriver.wait_programmed` is how a caller learns that felix wrote (or removed) a
route: the future resolves after the first apply that took in every setter queued before the
call and read the kernel, with None if that apply reported no failure for the dst, or
:class:`RouteNotProgrammed`. An apply whose route dump failed decides nothing: the waiter
stays for the next one.
"""
from __future__ import annotations

import asyncio
import logging
import time
from ipaddress import IPv4Network
from typing import Any, Callable

from felix.backoff import FailureBackoff, Outcome
from felix.dataplane import RouteFailure
from felix.routetable import ApplyResult
from felix.worker import RouteTableWorker

log = logging.getLogger("podroute.agent")  # the name operators filter the FIB log lines by

DEBOUNCE_S = 0.005
DUMP_RETRY_S = 0.05  # a waiter's next try after a failed dump: a dump retried at once meets the same churn
STATUS_ERRORS = 100  # failures listed in last_apply: a status call stays cheap


class RouteNotProgrammed(Exception):
    """Felix's apply reported a failure for the route waited on (``str()`` says which, why)."""


class FelixDriver:
    """See module doc. ``before_apply`` runs on the loop before each apply (the restart hold's
    check); ``stopping()`` true means shutdown: applies stop (routes stay in the FIB across a
    restart, as Calico's Felix) and waiters fail."""

    def __init__(self, routes: RouteTableWorker, *, before_apply: Callable[[], Any] = lambda: None,
                 stopping: Callable[[], bool] = lambda: False, resync_s: float = 90.0) -> None:
        self.routes = routes
        self._before_apply = before_apply
        self._stopping = stopping
        self.resync_s = resync_s
        self.failures = FailureBackoff()
        self.last_apply: dict[str, Any] | None = None
        self.resyncs = 0
        self.drifts = 0
        # time.time() of the first apply that read the kernel and wrote (no failed dump):
        # the FIB is programmed from then on (readiness, podroute.health).
        self.synced_at: float | None = None
        # Called on the loop with each ApplyResult (the agent's metrics; None: nobody).
        self.on_apply: Callable[[ApplyResult], None] | None = None
        self._kick = asyncio.Event()
        self._waiting: dict[IPv4Network, list[asyncio.Future[None]]] = {}

    def kick(self) -> None:
        self._kick.set()

    def on_drift(self) -> None:
        """The monitor saw someone touch our routes: re-read the kernel at the next apply."""
        self.drifts += 1
        self.routes.mark_dirty()
        self.kick()

    def wait_programmed(self, dst: IPv4Network) -> asyncio.Future[None]:
        """A future for the next apply's verdict on ``dst`` (see module doc); kicks felix."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(dst, []).append(fut)
        self.kick()
        return fut

    async def run(self) -> None:
        """Start felix's thread and apply after each kick until cancelled; the thread is
        stopped on the way out."""
        self.routes.start()
        try:
            await self._apply_loop()
        finally:
            self.routes.stop()
            self._fail_waiters(self._take_waiters(), "the agent is stopping")

    async def _apply_loop(self) -> None:
        loop = asyncio.get_running_loop()
        retry: asyncio.TimerHandle | None = None
        busy = False  # a kick arrived while the previous apply ran
        while True:
            await self._kick.wait()
            # Debounce only a kick that found felix idle: one that came during an apply has
            # already waited out that apply, and sleeping again would hold the tail of a burst
            # (the last ~1,000 of a 10k withdrawal) back by DEBOUNCE_S for nothing. A CNI
            # request waiting on its route is not made to wait longer either.
            if not busy and not self._waiting:
                await asyncio.sleep(DEBOUNCE_S)
            self._kick.clear()
            if self._stopping():
                self._fail_waiters(self._take_waiters(), "the agent is stopping")
                continue
            self._before_apply()
            waiters = self._take_waiters()  # their setters are queued: this apply takes them in
            try:
                res = await self.routes.apply()
            except BaseException:
                self._fail_waiters(waiters, "felix's apply failed")
                raise
            busy = self._kick.is_set()
            self._settle(waiters, res)
            self.last_apply = {"added": res.added, "replaced": res.replaced, "deleted": res.deleted,
                               "errors": [f"{f.route.dst if f.route else 'dump'}: {f.message}"
                                          for f in res.errors[:STATUS_ERRORS]],
                               "duration_s": round(res.duration_s, 6), "at": time.time()}
            if self.synced_at is None and all(f.route is not None for f in res.errors):
                self.synced_at = self.last_apply["at"]
            if self.on_apply is not None:
                self.on_apply(res)
            out = self.failures.observe(res, time.monotonic())
            _log_apply(res, out)
            if retry is not None:
                retry.cancel()  # one retry timer: each failed apply used to start another chain
            retry = loop.call_later(out.retry_in, self.kick) if out.retry_in is not None else None

    async def resync_loop(self) -> None:
        """Mark felix dirty every ``resync_s`` seconds (a full re-read of the kernel)."""
        while True:
            await asyncio.sleep(self.resync_s)
            self.resyncs += 1
            self.routes.mark_dirty()
            self.kick()

    def _take_waiters(self) -> dict[IPv4Network, list[asyncio.Future[None]]]:
        waiters, self._waiting = self._waiting, {}
        return waiters

    def _settle(self, waiters: dict[IPv4Network, list[asyncio.Future[None]]], res: ApplyResult) -> None:
        """Resolve each waiter from ``res``: None if its dst had no failure, RouteNotProgrammed
        naming the failure if it had one. A failed dump (route None: the kernel's route dump was
        interrupted, NLM_F_DUMP_INTR, or overran) wrote nothing and says nothing about any dst,
        so those waiters stay queued for the next apply, kicked after :data:`DUMP_RETRY_S`;
        their caller bounds the total wait."""
        if not waiters:
            return
        failed: dict[IPv4Network, RouteFailure] = {}
        dump_failed = False
        for f in res.errors:
            if f.route is None:
                dump_failed = True
            else:
                failed.setdefault(f.route.dst, f)
        requeued = False
        for dst, futs in waiters.items():
            f = failed.get(dst)
            if f is None and dump_failed:
                live = [fut for fut in futs if not fut.done()]
                if live:
                    self._waiting.setdefault(dst, []).extend(live)
                    requeued = True
                continue
            exc = None if f is None else RouteNotProgrammed(f"{dst}: {f.message}")
            for fut in futs:
                if not fut.done():
                    if exc is None:
                        fut.set_result(None)
                    else:
                        fut.set_exception(exc)
        if requeued:
            asyncio.get_running_loop().call_later(DUMP_RETRY_S, self.kick)

    @staticmethod
    def _fail_waiters(waiters: dict[IPv4Network, list[asyncio.Future[None]]], why: str) -> None:
        for dst, futs in waiters.items():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(RouteNotProgrammed(f"{dst}: {why}"))


def _log_apply(res: ApplyResult, out: Outcome) -> None:
    if res.changes or out.new:
        log.info("FIB applied", extra={"kv": {"added": res.added, "replaced": res.replaced,
                                              "deleted": res.deleted, "errors": len(res.errors),
                                              "duration_s": round(res.duration_s, 6)}})
    for f in out.new[:10]:
        log.warning("route not programmed", extra={"kv": {
            "dst": f.route.dst if f.route else "dump", "errno": f.errno, "error": f.message,
            "retry_in_s": out.retry_in}})
    if len(out.new) > 10:
        log.warning("more routes not programmed", extra={"kv": {"count": len(out.new) - 10}})
    if out.recovered:
        log.info("failing routes recovered", extra={"kv": {
            "count": len(out.recovered), "first": out.recovered[0][0] or "dump",
            "failed_attempts": out.recovered[0][1]}})
    if out.summary is not None:
        log.warning("routes still not programmed", extra={"kv": {**out.summary, "retry_in_s": out.retry_in}})

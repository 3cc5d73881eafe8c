"""One dedicated thread that owns a RouteTable, so the asyncio event loop never waits on the kernel.

``RouteTable.apply()`` dumps and writes over netlink: a 100k-route dump takes ~0.3 s, and a
write can wait on the RTNL lock for as long as veth deletions hold it. RouteTable is not
thread-safe (its apply() reads and rewrites the tables the setters change), so it gets one
owner thread, and the loop talks to it through :class:`RouteTableWorker`:

 - setters (the RouteTable API: ``set_routes``, ``set_route``, ``remove_route``, ``remove_key``,
   ``mark_dirty``) are queued on the caller's side as plain tuples (cheaper than the setters
   themselves, which matters on the BGP path at 100k routes) and handed to the thread in
   batches; the thread runs them in call order;
 - ``await apply()`` hands over the queued setters, then an apply request; it resolves with
   the ApplyResult once the thread has run every setter queued before it and then apply();
 - ``await call(fn)`` runs ``fn(routetable)`` on the thread the same way (a read that must
   iterate a table);
 - reads (``desired()``, ``owned()``, ``is_expected()``) look at the thread's RouteTable
   directly. Each is a single dict lookup or ``len()`` on dicts keyed by int, which the GIL
   makes atomic against the thread's writes; no read iterates a table. They see the state
   the thread has taken in, which may lag the queued setters by one batch: the monitor's
   ``is_expected`` may then call an echo drift (one extra apply) or, in a contrived race, let a
   hand-made change wait for the periodic resync.

Before :meth:`start` (the agent's constructor) there is one thread and no worker: setters
and reads go straight to the RouteTable, so what a constructor sets it can read back at once.
Setters and ``apply`` are called from one thread (the event loop's) after start.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from ipaddress import IPv4Network
from typing import Any, Callable, Iterable, Mapping, TypeVar

from .routes import Route
from .routetable import ApplyResult, RouteTable

log = logging.getLogger("felix.worker")
T = TypeVar("T")

_SET, _REMOVE, _CALL = 0, 1, 2  # queued setter kinds
_TAKE, _CALL_JOB, _SUBMIT, _STOP = "take", "call", "submit", "stop"  # jobs for the owner thread
_FLUSH_AT = 4096  # queued setters handed to the thread at once: it takes them in while the loop works on


class RouteTableWorker:
    """See module doc. ``routetable`` is the owned RouteTable; ``table``/``protocol`` are its FIB
    table id and rtm_protocol. ``op_errors`` counts queued setters that raised in the thread
    (e.g. InvalidRoute; each is logged with the call and skipped, as a direct call would have
    raised and changed nothing)."""

    def __init__(self, routetable: RouteTable, *, name: str = "felix") -> None:
        self.routetable = routetable
        self.table = routetable.table
        self.protocol = routetable.protocol
        self.name = name
        self.op_errors = 0
        self._ops: list[tuple] = []
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._busy_since: float | None = None
        self._applies = 0

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the owner thread (once). From here on setters are queued."""
        if self._thread is not None:
            raise RuntimeError("worker already started")
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def stop(self) -> None:
        """Ask the thread to exit after the job it is on (queued setters not yet applied are
        dropped with it). Does not wait: the job may be a write waiting on the kernel. The
        thread is a daemon thread, so a stuck one does not keep the process alive."""
        if self._thread is not None:
            self._jobs.put((_STOP,))

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to exit (blocking: call from a worker thread, not the loop).
        True if it has exited (or never started)."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def busy_for(self, now: float | None = None) -> float | None:
        """Seconds the thread has spent on its current job (time.monotonic), None when idle."""
        since = self._busy_since
        return None if since is None else (now if now is not None else time.monotonic()) - since

    def stats(self) -> dict[str, Any]:
        """{"busy_s": seconds on the current job or None, "queued_ops": setters not yet handed
        over, "applies": apply() calls completed, "op_errors": see class doc}."""
        busy = self.busy_for()
        return {"busy_s": None if busy is None else round(busy, 6), "queued_ops": len(self._ops),
                "applies": self._applies, "op_errors": self.op_errors}

    # -- setters (RouteTable's API) ---------------------------------------------------------------
    def set_route(self, owner: str, route: Route, key: int | None = None) -> None:
        """RouteTable.set_route, queued after start (see module doc)."""
        if self._thread is None:
            return self.routetable.set_route(owner, route, key)
        ops = self._ops
        ops.append((_SET, owner, route, key))
        if len(ops) >= _FLUSH_AT:
            self._flush()

    def remove_key(self, owner: str, key: int) -> None:
        """RouteTable.remove_key, queued after start."""
        if self._thread is None:
            return self.routetable.remove_key(owner, key)
        ops = self._ops
        ops.append((_REMOVE, owner, key, None))
        if len(ops) >= _FLUSH_AT:
            self._flush()

    def set_routes(self, owner: str, routes: Iterable[Route]) -> None:
        """RouteTable.set_routes, queued after start (``routes`` is copied now)."""
        self._call(self.routetable.set_routes, owner, list(routes))

    def remove_route(self, owner: str, dst: IPv4Network | str) -> None:
        """RouteTable.remove_route, queued after start."""
        self._call(self.routetable.remove_route, owner, dst)

    def mark_dirty(self) -> None:
        """RouteTable.mark_dirty, queued after start (so it lands between the right applies)."""
        self._call(self.routetable.mark_dirty)

    def _call(self, fn, *args) -> None:
        if self._thread is None:
            fn(*args)
            return
        self._ops.append((_CALL, None, fn, args))

    def _flush(self) -> None:
        if self._ops:
            self._jobs.put((_TAKE, self._ops))
            self._ops = []

    # -- apply --------------------------------------------------------------------------------------
    async def apply(self) -> ApplyResult:
        """Run every queued setter, then ``RouteTable.apply()``, on the owner thread; the result
        (or the exception apply() raised, a bug: it reports dataplane errors in the result).
        Requires :meth:`start`. Cancelling the await does not stop the thread's apply."""
        res = await self.call(RouteTable.apply)
        self._applies += 1
        return res

    async def call(self, fn: Callable[[RouteTable], T]) -> T:
        """``fn(routetable)`` on the owner thread after every queued setter: its result or its
        exception. For reads that iterate the tables (a snapshot of ``desired()``), which
        are not safe from the loop while the thread runs. Requires :meth:`start`."""
        if self._thread is None:
            raise RuntimeError("worker not started")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._flush()
        self._jobs.put((_CALL_JOB, loop, fut, fn))
        return await fut

    def submit(self, fn: Callable[[RouteTable], T]) -> "concurrent.futures.Future[T]":
        """``fn(routetable)`` on the owner thread, from any thread (the metrics listener's):
        a concurrent Future with its result or exception. It runs between jobs, so it sees
        the table as the last apply left it; setters still queued on the loop's side are not
        handed over (that list belongs to the loop). Before :meth:`start`, runs ``fn`` now."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        if self._thread is None:
            try:
                fut.set_result(fn(self.routetable))
            except Exception as e:  # noqa: BLE001 - handed to the caller
                fut.set_exception(e)
            return fut
        self._jobs.put((_SUBMIT, fut, fn))
        return fut

    # -- reads (see module doc for why these are safe from the loop) ------------------------------
    def desired(self) -> Mapping[IPv4Network, Route]:
        return self.routetable.desired()

    def owned(self, owner: str) -> Mapping[IPv4Network, Route]:
        return self.routetable.owned(owner)

    def is_expected(self, route: Route, deleted: bool) -> bool:
        return self.routetable.is_expected(route, deleted)

    # -- the owner thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        get = self._jobs.get
        while True:
            job = get()
            kind = job[0]
            if kind == _STOP:
                return
            self._busy_since = time.monotonic()
            try:
                if kind == _TAKE:
                    self._take(job[1])
                elif kind == _SUBMIT:
                    _run_submitted(self.routetable, job[1], job[2])
                else:
                    self._run_call(*job[1:])
            except Exception:  # noqa: BLE001 - a dead owner thread would stall every later apply
                log.exception("felix worker job failed")
            finally:
                self._busy_since = None

    def _take(self, ops: list[tuple]) -> None:
        rt = self.routetable
        set_route, remove_key = rt.set_route, rt.remove_key
        for kind, owner, a, b in ops:
            try:
                if kind == _SET:
                    set_route(owner, a, b)
                elif kind == _REMOVE:
                    remove_key(owner, a)
                else:
                    a(*b)
            except Exception:  # noqa: BLE001 - one bad setter must not stop the FIB owner
                self.op_errors += 1
                log.exception("felix setter failed and was skipped: %s",
                              ("set_route", "remove_key", getattr(a, "__name__", "call"))[kind])

    def _run_call(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future, fn) -> None:
        try:
            res, exc = fn(self.routetable), None
        except Exception as e:  # noqa: BLE001 - handed to the awaiting task
            res, exc = None, e
        self._busy_since = None  # before the caller can see the result
        try:
            loop.call_soon_threadsafe(_deliver, fut, res, exc)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more


def _run_submitted(rt: RouteTable, fut: concurrent.futures.Future, fn) -> None:
    if not fut.set_running_or_notify_cancel():
        return
    try:
        fut.set_result(fn(rt))
    except Exception as e:  # noqa: BLE001 - handed to the caller
        fut.set_exception(e)


def _deliver(fut: asyncio.Future, res: Any, exc: BaseException | None) -> None:
    if fut.done():
        return  # the awaiting task was cancelled
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(res)

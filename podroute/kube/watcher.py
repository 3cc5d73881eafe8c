"""One collection's watch stream in its own thread, feeding the event loop through an
:class:`Inbox`.

``GET <collection>?watch=true&resourceVersion=<rv>&allowWatchBookmarks=true&timeoutSeconds=300``:
each line is one watch event (ADDED, MODIFIED, DELETED, BOOKMARK or ERROR). The thread decodes
the objects (:mod:`podroute.kube.codec`) and puts one :class:`Item` per event in the inbox;
``put`` blocks while the inbox is full, so a slow consumer slows the reader instead of growing
memory. When the server ends the stream (``timeoutSeconds``) the thread watches again from the
last resourceVersion it saw; it ends on :meth:`Watcher.halt`, on 410 Gone (an ``expired`` item:
the caller lists again) and on any other failure (an ``error`` item carrying the seam's error).
HTTP 429 (the API server's watch cache is still initialising after a restart) is waited out
for up to :data:`RETRY_429_S` before it counts as a failure.

Threads, not ``asyncio.to_thread``: a watch blocks for minutes, and the default executor's few
workers are for short calls.
"""
from __future__ import annotations

import asyncio
import json
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from podroute.datastore.api import DatastoreError, Unavailable
from podroute.kube.codec import NODES, Decoded, Kind, decode, key_for, node_pod_cidr_key, resource_version
from podroute.kube.rest import Rest, lines, map_error

WATCH_TIMEOUT_S = 300   # the server ends a watch after this; the thread re-watches from where it was
READ_TIMEOUT_S = 150    # silence longer than this is a dead stream (the watch cache bookmarks about every minute)
RETRY_429_S = 15.0      # how long "too many requests" (cache initialising) is retried before it is Unavailable
PUT_POLL_S = 0.5        # how often a thread blocked on a full inbox checks whether it was halted


@dataclass(frozen=True)
class Item:
    """One thing a watch thread saw. ``what``: "started" (the server accepted the first watch
    request), "event" (``puts``/``deletes`` at ``rv``), "bookmark" (``rv`` only), "expired"
    (410 Gone) or "error" (``error``)."""
    generation: int
    kind: Kind
    what: str
    rv: int = 0
    puts: tuple[Decoded, ...] = ()
    deletes: tuple[str, ...] = ()
    error: DatastoreError | None = field(default=None, compare=False)


class Inbox:
    """A bounded hand-over from threads to one coroutine: a thread-safe queue plus a wake-up
    set on the loop (``call_soon_threadsafe``). No coroutine is ever made on a thread, so a
    loop that closes while threads still report leaves nothing pending behind."""

    def __init__(self, maxsize: int) -> None:
        self.loop = asyncio.get_running_loop()
        self._items: queue.Queue[Item] = queue.Queue(maxsize)
        self._wake = asyncio.Event()

    def put(self, item: Item, halted: threading.Event) -> bool:
        """From a thread: block until there is room (False when ``halted`` first, or the loop is gone)."""
        while True:
            try:
                self._items.put(item, timeout=PUT_POLL_S)
                break
            except queue.Full:
                if halted.is_set():
                    return False
        try:
            self.loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:       # the loop is closed: nobody is listening any more
            return False
        return True

    async def get(self, timeout: float | None = None) -> Item | None:
        """The next item; None after ``timeout`` seconds without one."""
        while True:
            try:
                return self._items.get_nowait()
            except queue.Empty:
                pass
            self._wake.clear()
            try:                  # again: a put may have come between the try and the clear
                return self._items.get_nowait()
            except queue.Empty:
                pass
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                return None


class Watcher(threading.Thread):
    """Watches ``kind`` from ``rv`` into ``inbox`` until halted or failed."""

    def __init__(self, rest: Rest, kind: Kind, rv: int, generation: int, inbox: Inbox,
                 use_pod_cidr: bool = False) -> None:
        super().__init__(name=f"kube-watch-{kind.plural}", daemon=True)
        self.rest, self.kind, self.rv, self.generation = rest, kind, rv, generation
        self.inbox, self.use_pod_cidr = inbox, use_pod_cidr
        self.halted = threading.Event()
        self._resp: Any = None
        self._resp_lock = threading.Lock()

    # --- control, from the event loop ---------------------------------------------------------
    def halt(self) -> None:
        """Stop soon: a blocked read is woken by shutting the socket down."""
        if self.halted.is_set():
            return
        self.halted.set()
        with self._resp_lock:
            resp = self._resp
        if resp is not None:
            _shutdown(resp)

    # --- the thread ---------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except DatastoreError as e:
            self._put(Item(self.generation, self.kind, "error", error=e))
        except Exception as e:  # noqa: BLE001 - a thread must report, not die silently
            if not self.halted.is_set():
                self._put(Item(self.generation, self.kind, "error",
                               error=Unavailable(f"watch {self.kind.plural}: {type(e).__name__}: {e}"[:500])))

    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        busy_since: float | None = None
        started = False
        while not self.halted.is_set():
            try:
                resp = self.rest.open("GET", self.kind.path, read_timeout_s=READ_TIMEOUT_S, query={
                    "watch": "true", "resourceVersion": str(self.rv), "allowWatchBookmarks": "true",
                    "timeoutSeconds": str(WATCH_TIMEOUT_S)})
            except ApiException as e:
                if e.status == 410:
                    self._put(Item(self.generation, self.kind, "expired"))
                    return
                if e.status == 429:
                    busy_since = busy_since or time.monotonic()
                    if time.monotonic() - busy_since < RETRY_429_S:
                        self.halted.wait(0.5)
                        continue
                raise map_error(e, "watch", self.kind, self.kind.plural) from None
            except (HTTPError, OSError) as e:
                raise map_error(e, "watch", self.kind, self.kind.plural) from None
            busy_since = None
            with self._resp_lock:
                self._resp = resp
            if not started:
                started = self._put(Item(self.generation, self.kind, "started", self.rv))
            try:
                if self.halted.is_set():
                    return
                for line in lines(resp):
                    if not self._event(json.loads(line)):
                        return
            except (HTTPError, OSError, ValueError) as e:
                if self.halted.is_set():
                    return
                raise map_error(e if not isinstance(e, ValueError) else OSError(str(e)), "watch", self.kind,
                                self.kind.plural) from None
            finally:
                with self._resp_lock:
                    self._resp = None
                # Closed, not just released: a stream left unread would go back to the pool
                # and the next request on that connection would read its remains (a hang).
                resp.close()
                resp.release_conn()
            # the server ended the stream after timeoutSeconds: watch again from self.rv

    def _event(self, ev: dict[str, Any]) -> bool:
        """Queue one watch event; False when the thread should end."""
        what, obj = ev.get("type"), ev.get("object") or {}
        if what == "ERROR":
            if obj.get("code") == 410:
                self._put(Item(self.generation, self.kind, "expired"))
                return False
            raise Unavailable(f"watch {self.kind.plural}: {obj.get('code')} {obj.get('message', '')}"[:500])
        self.rv = resource_version(obj)
        if what == "BOOKMARK":
            return self._put(Item(self.generation, self.kind, "bookmark", self.rv))
        if what == "DELETED":
            name = (obj.get("metadata") or {}).get("name", "?")
            deletes = [key_for(self.kind, name)]
            if self.kind is NODES and self.use_pod_cidr and (block := node_pod_cidr_key(obj)) is not None:
                deletes.append(block)
            return self._put(Item(self.generation, self.kind, "event", self.rv, deletes=tuple(deletes)))
        return self._put(Item(self.generation, self.kind, "event", self.rv,
                              puts=tuple(decode(self.kind, obj, self.use_pod_cidr))))

    def _put(self, item: Item) -> bool:
        return self.inbox.put(item, self.halted)


def _shutdown(resp: Any) -> None:
    """Wake a thread blocked reading ``resp`` (urllib3's ``shutdown()`` where it has one)."""
    try:
        resp.shutdown()
        return
    except (AttributeError, ValueError, RuntimeError, OSError):
        pass           # an older urllib3, or the response is already closed
    sock = getattr(getattr(resp, "connection", None), "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

"""A revisioned key space in memory, with etcd's watch semantics, shared by the fake and the
file datastore.

Every write bumps one global revision (etcd's store revision); the history of events is kept
from ``compacted`` on, so a watch from a revision below it gets a :class:`Resync`, as an etcd
watch on a compacted revision does (``ErrCompacted``). The history is trimmed to
``history_limit`` events by compacting automatically.
"""
from __future__ import annotations

import asyncio
import bisect
from typing import AsyncIterator, Callable, Iterable

from podroute.datastore.api import Changes, Delete, Event, Invalid, InvalidData, Put, Resync, Snapshot, WatchItem
from podroute.datastore.model import Resource, Stored, key_of

HISTORY_LIMIT = 10_000


class MemoryStore:
    """Keys -> :class:`Stored`, a revision, an event history and watchers. Not thread-safe:
    use from one event loop. ``check`` is called before every read and on every watch wake-up
    (fault injection raises from it)."""

    def __init__(self, history_limit: int = HISTORY_LIMIT, check: Callable[[], None] = lambda: None) -> None:
        self.items: dict[str, Stored] = {}
        self.invalid: dict[str, InvalidData] = {}
        self.revision = 1
        self.compacted = 1       # watches from below this revision get a Resync
        self._revs: list[int] = []
        self._events: list[Event] = []
        self._limit = history_limit
        self._check = check
        self._changed = asyncio.Event()

    # --- writes -------------------------------------------------------------------------
    def commit(self, puts: Iterable[Resource] = (), deletes: Iterable[str] = (),
               invalid: Iterable[InvalidData] = ()) -> int:
        """Apply one atomic change at a new revision; returns it (the current one if nothing
        changed: identical puts and deletes of missing keys are no-ops)."""
        rev = self.revision + 1
        events: list[Event] = []
        for key in deletes:
            if self.items.pop(key, None) is not None or self.invalid.pop(key, None) is not None:
                events.append(Delete(key, rev))
        for res in puts:
            key = key_of(res)
            old = self.items.get(key)
            if old is not None and old.value == res and key not in self.invalid:
                continue
            self.invalid.pop(key, None)
            self.items[key] = st = Stored(key, res, rev, old.created if old is not None else rev)
            events.append(Put(st))
        for err in invalid:
            self.invalid[err.key] = err
            events.append(Invalid(err, rev))
        if not events:
            return self.revision
        self.revision = rev
        self._revs.extend([rev] * len(events))
        self._events.extend(events)
        if len(self._events) > self._limit:
            self.compact(self._revs[len(self._events) - self._limit])
        self.wake()
        return rev

    def compact(self, revision: int | None = None) -> None:
        """Forget history up to ``revision`` (default: now), like etcd compaction."""
        revision = self.revision if revision is None else revision
        cut = bisect.bisect_right(self._revs, revision - 1)
        del self._revs[:cut], self._events[:cut]
        self.compacted = max(self.compacted, revision)

    def wake(self) -> None:
        """Wake every watcher (after a write, or to make them see a fault)."""
        self._changed.set()
        self._changed = asyncio.Event()

    # --- reads --------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        self._check()
        return Snapshot(self.revision, dict(self.items), tuple(self.invalid.values()))

    async def watch(self, revision: int) -> AsyncIterator[WatchItem]:
        pos = revision
        while True:
            self._check()
            if pos < self.compacted - 1 or pos > self.revision:
                snap = self.snapshot()
                yield Resync(snap)
                pos = snap.revision
                continue
            i = bisect.bisect_right(self._revs, pos)
            if i < len(self._events):
                # one Changes per revision, as etcd batches a txn's events
                j = bisect.bisect_right(self._revs, self._revs[i])
                rev = self._revs[i]
                batch = tuple(self._events[i:j])
                pos = rev
                yield Changes(rev, batch)
                continue
            await self._changed.wait()

"""Watching a key prefix from a revision, across short etcd outages.

The list-then-watch contract (as Kubernetes reflectors and Calico's watchersyncer use it): list with
``EtcdClient.get_prefix``, then ``watch_prefix(client, prefix, listing.revision + 1)``. Events arrive in
etcd revision order, each exactly once, also across a reconnect: after a broken stream the watch is
re-created from the last revision seen (not + 1, since a transaction's events share one revision and
the stream may have broken inside it), skipping the events of that revision already yielded.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import AsyncIterator

from podroute.etcd.client import EtcdClient, map_error
from podroute.etcd.errors import EtcdCompacted, EtcdUnavailable
from podroute.etcd.types import WatchEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reconnect:
    """Backoff of a broken watch: the wait doubles from ``first_s`` up to ``max_s``; once etcd has been
    unreachable for ``give_up_after_s`` the watch raises EtcdUnavailable and the caller decides
    (typically: report it, then list again and watch anew when etcd answers)."""

    first_s: float = 0.1
    max_s: float = 2.0
    give_up_after_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.max_s or self.give_up_after_s <= 0:
            raise ValueError(f"bad watch reconnect policy {self!r}")


def _event(ev) -> WatchEvent:
    kv = ev.kv
    kind = "put" if ev.kind == "PUT" else "delete"
    return WatchEvent(kind=kind, key=kv.key.decode("utf-8", "surrogateescape"),
                      value=bytes(kv.value) if kind == "put" else b"",
                      mod_revision=kv.mod_revision, version=kv.version,
                      create_revision=kv.create_revision if kind == "put" else 0)


async def watch_prefix(client: EtcdClient, prefix: str, start_revision: int,
                       reconnect: Reconnect = Reconnect()) -> AsyncIterator[WatchEvent]:
    """Every put and delete under ``prefix`` from etcd revision ``start_revision`` on (inclusive), in
    order, until the consumer stops iterating.

    Errors: EtcdCompacted when ``start_revision`` (or the resume point after a reconnect) is older
    than etcd's compaction: list again. EtcdUnavailable when etcd stayed unreachable for
    ``reconnect.give_up_after_s``. A shorter outage (an etcd restart) is bridged: the watch reconnects
    with backoff and resumes where it stopped, logging the outage and the recovery once each.
    """
    if not prefix:
        raise ValueError("etcd watch_prefix: empty prefix would watch the whole keyspace")
    if start_revision < 1:
        raise ValueError(f"etcd watch_prefix: start_revision must be >= 1, got {start_revision!r}")
    resume_rev = start_revision
    seen_at_resume: set[tuple[str, str]] = set()   # (kind, key) yielded at revision resume_rev
    down_since: float | None = None
    delay = reconnect.first_s
    while True:
        watch = None
        try:
            watch = await client._open_watch(prefix, resume_rev)
            if down_since is not None:
                log.warning("etcd watch on %r resumed at revision %d after %.1f s",
                            prefix, resume_rev, time.monotonic() - down_since)
                down_since, delay = None, reconnect.first_s
            async for raw in watch:
                ev = _event(raw)
                if ev.mod_revision == resume_rev and (ev.kind, ev.key) in seen_at_resume:
                    continue
                if ev.mod_revision != resume_rev:
                    resume_rev, seen_at_resume = ev.mod_revision, set()
                seen_at_resume.add((ev.kind, ev.key))
                yield ev
            # aetcd ends the iteration without an error only when the watch was cancelled.
            raise EtcdUnavailable(f"etcd watch on {prefix!r} ended by the server")
        except asyncio.CancelledError:
            raise
        except Exception as e:
            err = map_error(e, f"watch {prefix!r}")
            if isinstance(err, EtcdCompacted) or not isinstance(err, EtcdUnavailable):
                raise err from e
            now = time.monotonic()
            if down_since is None:
                down_since = now
                log.warning("etcd watch on %r lost (%s); reconnecting from revision %d", prefix, err, resume_rev)
            if now - down_since >= reconnect.give_up_after_s:
                raise EtcdUnavailable(f"etcd watch on {prefix!r}: etcd unreachable for "
                                      f"{now - down_since:.1f} s ({err})") from e
            await asyncio.sleep(delay)
            delay = min(delay * 2, reconnect.max_s)
        finally:
            if watch is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(watch.cancel(), 1.0)


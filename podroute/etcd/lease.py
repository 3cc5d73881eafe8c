"""Keeping an etcd lease alive from a guarded task, as flannel renews its subnet leases.

A node registers itself under a lease (podroute/etcd/__init__.py, key layout); while the keeper runs
the lease is renewed every ``ttl/3`` s. If etcd is unreachable the keeper retries more often (at most
every ``ttl/6`` s, at least every 0.2 s) and keeps going: it does not declare the lease lost on its own
clock, because etcd extends every lease by its TTL when a member becomes leader (a restarted etcd
keeps the leases that existed before), so only etcd can say a lease is gone. It is lost when etcd
answers that it no longer exists (TTL 0 / not found): the keeper then stops, sets ``lost`` and calls
``on_lost`` once; the owner must grant a new lease and re-register.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from podroute.etcd.client import EtcdClient
from podroute.etcd.errors import EtcdError, EtcdLeaseNotFound, EtcdUnavailable
from podroute.etcd.types import Lease

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews ``lease`` on ``client`` until :meth:`stop` or until etcd says the lease is gone.

    State for status reports: ``lost`` (an asyncio.Event), ``lost_reason``, ``renewing`` (False while
    renewals fail), ``last_renewed`` (time.time() of the last good renewal, None before the first).
    ``on_lost(lease, reason)`` is called once on loss; an exception from it is logged, not raised.
    """

    def __init__(self, client: EtcdClient, lease: Lease,
                 on_lost: Callable[[Lease, str], None] | None = None) -> None:
        self.client, self.lease, self.on_lost = client, lease, on_lost
        self.lost = asyncio.Event()
        self.lost_reason: str | None = None
        self.renewing = True
        self.last_renewed: float | None = None
        self._task: asyncio.Task | None = None

    @property
    def interval_s(self) -> float:
        return max(self.lease.ttl_s / 3, 0.2)

    @property
    def retry_s(self) -> float:
        return max(self.lease.ttl_s / 6, 0.2)

    def start(self) -> LeaseKeeper:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"etcd-lease-{self.lease.id:x}")
        return self

    async def stop(self) -> None:
        """Stop renewing (the lease then expires after its TTL unless revoked). Idempotent."""
        t, self._task = self._task, None
        if t is not None and not t.done():
            t.cancel()
            try:
                await t
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        failing_since: float | None = None
        while True:
            try:
                await self.client.keepalive_once(self.lease)
            except EtcdLeaseNotFound as e:
                self._lose(str(e))
                return
            except EtcdUnavailable as e:
                if failing_since is None:
                    failing_since = time.monotonic()
                    self.renewing = False
                    log.warning("etcd lease %x: renewal failed (%s); retrying every %.1f s",
                                self.lease.id, e, self.retry_s)
                await asyncio.sleep(self.retry_s)
                continue
            except EtcdError as e:
                # Not a transport failure and not "gone": etcd rejected the request. Retrying the same
                # request will not help, and silently keeping a stale registration is worse than
                # reporting it, so this ends the keeper as a loss.
                self._lose(f"renewal rejected: {e}")
                return
            except Exception as e:   # guard: a bug here must be reported, not kill the task silently
                log.exception("etcd lease %x: keeper failed", self.lease.id)
                self._lose(f"keeper failed: {type(e).__name__}: {e}")
                return
            self.last_renewed = time.time()
            if failing_since is not None:
                log.warning("etcd lease %x: renewed again after %.1f s", self.lease.id,
                            time.monotonic() - failing_since)
                failing_since, self.renewing = None, True
            await asyncio.sleep(self.interval_s)

    def _lose(self, reason: str) -> None:
        self.renewing = False
        self.lost_reason = reason
        self.lost.set()
        log.error("etcd lease %x lost: %s", self.lease.id, reason)
        if self.on_lost is not None:
            try:
                self.on_lost(self.lease, reason)
            except Exception:
                log.exception("etcd lease %x: on_lost callback failed", self.lease.id)

"""The etcd v3 adapter: key-value reads, compare-and-swap writes and leases on aetcd (asyncio gRPC).

Every call is a coroutine on the running loop (gRPC aio; nothing blocks it) with a deadline of
``timeout_s``. aetcd's and grpc's exceptions are mapped here, and only here, to podroute's
(podroute/etcd/errors.py). Watches live in podroute/etcd/watch.py, lease keep-alive in
podroute/etcd/lease.py.
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import Awaitable, Callable, TypeVar

import aetcd
import aetcd.exceptions as aex
import grpc

from podroute.etcd.errors import (EtcdCompacted, EtcdConflict, EtcdError, EtcdLeaseNotFound,
                                  EtcdUnavailable)
from podroute.etcd.types import KeyValue, Lease, Listing

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 5.0
# gRPC's own reconnect backoff grows to 120 s by default: after a one-minute etcd outage the channel
# could sit idle for another minute. Cap it so a restarted etcd is seen within about 2 s.
_CHANNEL_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 2000,
    # A half-open TCP connection (peer host gone) is noticed by keep-alive pings, not by a hang. etcd
    # refuses pings more often than every 5 s (--grpc-keepalive-min-time).
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
}


def map_error(e: BaseException, what: str) -> EtcdError:
    """podroute's exception for an aetcd/grpc exception ``e`` raised while doing ``what``."""
    if isinstance(e, EtcdError):
        return e
    if isinstance(e, aex.RevisionCompactedError):
        return EtcdCompacted(e.compacted_revision)
    if isinstance(e, (aex.ConnectionFailedError, aex.ConnectionTimeoutError, aex.WatchTimeoutError,
                      asyncio.TimeoutError, ConnectionError)):
        return EtcdUnavailable(f"etcd unavailable during {what}: {e}")
    cause = e.__cause__ if isinstance(e.__cause__, grpc.RpcError) else e
    code = cause.code() if isinstance(cause, grpc.aio.AioRpcError) else None
    if code == grpc.StatusCode.NOT_FOUND or "lease not found" in str(e):
        return EtcdLeaseNotFound(f"etcd {what}: {e}")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return EtcdUnavailable(f"etcd unavailable during {what}: {e}")
    return EtcdError(f"etcd {what} failed: {type(e).__name__}: {e}")


def _kv(kv) -> KeyValue:
    return KeyValue(key=kv.key.decode("utf-8", "surrogateescape"), value=bytes(kv.value),
                    create_revision=kv.create_revision, mod_revision=kv.mod_revision,
                    version=kv.version, lease=kv.lease)


def _prefix_end(prefix: bytes) -> bytes:
    """etcd's range end for "every key starting with prefix" (clientv3.GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


class EtcdClient:
    """One connection (a gRPC channel) to the etcd member at ``host:port``.

    Errors: every method raises only podroute's EtcdError family. aetcd takes one endpoint; for a
    multi-member cluster point it at a local member or a load balancer. Use ``async with`` or
    :meth:`close`.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 2379, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if not 0 < timeout_s <= 60:
            raise ValueError(f"etcd timeout_s must be in (0, 60], got {timeout_s!r}")
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._c = aetcd.Client(host=host, port=port, timeout=timeout_s, options=dict(_CHANNEL_OPTIONS),
                               connect_wait_timeout=max(1, int(timeout_s)))

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._c.close(), self.timeout_s)

    async def _call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        # The outer wait_for bounds the parts of a call that gRPC's deadline does not cover
        # (aetcd's connect, its watcher start-up).
        try:
            result = await asyncio.wait_for(op(), self.timeout_s + 1.0)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            raise map_error(e, what) from e
        # Python 3.11's wait_for returns the result when a cancellation arrives just as the call
        # completes, and the cancellation is lost (CPython gh-86296, fixed in 3.12): a LeaseKeeper
        # being stopped then renewed on forever and its stop() never returned. The request is still
        # pending on the task (Task.cancelling()), so honour it here.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError(f"cancelled during etcd {what}")
        return result

    # -- reads ---------------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        """The key, or None when absent."""
        r = await self._call(f"get {key!r}", lambda: self._c.get(key.encode()))
        return None if r is None else _kv(r)

    async def get_prefix(self, prefix: str) -> Listing:
        """Every key under ``prefix`` (sorted by key) and the revision of this read (one linearizable
        Range request, so the items and the revision are consistent)."""
        if not prefix:
            raise ValueError("etcd get_prefix: empty prefix would read the whole keyspace")
        p = prefix.encode()

        async def op():
            return await self._c.get_range(p, _prefix_end(p), sort_target="key", sort_order="ascend")

        r = await self._call(f"get prefix {prefix!r}", op)
        return Listing(items=tuple(_kv(kv) for kv in r), revision=r.header.revision)

    # -- compare-and-swap writes ---------------------------------------------------------------------

    async def _txn(self, what: str, key: str, compare, ops: list) -> tuple[bool, KeyValue | None]:
        """Run ``If(compare) Then(ops; Get key) Else(Get key)`` as one transaction: (succeeded, the key
        as the transaction left it, None if absent). Reading back inside the transaction gives the
        new mod_revision, or the holder on a conflict, without a second round trip or a race."""
        t = self._c.transactions
        k = key.encode()

        async def op():
            return await self._c.transaction(compare=[compare], success=[*ops, t.get(k)], failure=[t.get(k)])

        ok, responses = await self._call(what, op)
        got = responses[-1] if responses else []
        return ok, (_kv(got[0][1]) if got else None)

    async def create(self, key: str, value: bytes, lease: Lease | None = None) -> int:
        """Put ``key`` only if it does not exist (``If(Version(key) == 0)``, as flannel's subnet claims
        and Calico's etcdv3 Create); returns its mod_revision. EtcdConflict (with the holder as
        ``current``) if it exists; EtcdLeaseNotFound if ``lease`` has expired."""
        t = self._c.transactions
        k = key.encode()
        ok, kv = await self._txn(
            f"create {key!r}", key, t.version(k) == 0, [t.put(k, bytes(value), lease.id if lease else None)])
        if not ok:
            raise EtcdConflict(key, kv)
        return kv.mod_revision

    async def update(self, key: str, value: bytes, mod_revision: int, lease: Lease | None = None) -> int:
        """Put ``key`` only if its ModRevision is still ``mod_revision`` (Calico's etcdv3 Update);
        returns the new mod_revision. EtcdConflict (with the current key, or None if it was deleted)
        otherwise. The key keeps no lease unless ``lease`` is given (etcd's put semantics)."""
        if mod_revision <= 0:
            raise ValueError(f"etcd update {key!r}: mod_revision must be > 0, got {mod_revision!r}")
        t = self._c.transactions
        k = key.encode()
        ok, kv = await self._txn(
            f"update {key!r}", key, t.mod(k) == mod_revision, [t.put(k, bytes(value), lease.id if lease else None)])
        if not ok:
            raise EtcdConflict(key, kv, mod_revision)
        return kv.mod_revision

    async def delete(self, key: str, mod_revision: int | None = None) -> bool:
        """Delete ``key``. Without ``mod_revision``: unconditional, True if it existed. With it:
        only if its ModRevision is still that (Calico's etcdv3 Delete); EtcdConflict otherwise
        (including when the key is already gone)."""
        k = key.encode()
        if mod_revision is None:
            r = await self._call(f"delete {key!r}", lambda: self._c.delete(k))
            return r is not None
        t = self._c.transactions
        ok, kv = await self._txn(f"delete {key!r}", key, t.mod(k) == mod_revision, [t.delete(k)])
        if not ok:
            raise EtcdConflict(key, kv, mod_revision)
        return True

    # -- leases --------------------------------------------------------------------------------------

    async def grant_lease(self, ttl_s: int) -> Lease:
        """A new lease of ``ttl_s`` seconds (etcd may grant more: its minimum TTL). Keep it alive with
        podroute.etcd.lease.LeaseKeeper; keys put under it vanish when it expires."""
        if not isinstance(ttl_s, int) or not 1 <= ttl_s <= 9_000_000_000:
            raise ValueError(f"etcd lease TTL must be a whole number of seconds >= 1, got {ttl_s!r}")
        r = await self._call(f"lease grant ttl={ttl_s}", lambda: self._c.lease(ttl_s))
        return Lease(id=r.id, ttl_s=r.ttl)

    async def keepalive_once(self, lease: Lease) -> int:
        """Renew ``lease`` once; returns the TTL etcd reset it to. EtcdLeaseNotFound when it has
        expired or was revoked (etcd answers TTL 0)."""
        r = await self._call(f"lease keepalive {lease.id:x}", lambda: self._c.refresh_lease(lease.id))
        if r is None or r.TTL <= 0:
            raise EtcdLeaseNotFound(f"etcd lease {lease.id:x} has expired or was revoked")
        return r.TTL

    async def revoke(self, lease: Lease) -> bool:
        """Revoke ``lease`` (its keys are deleted at once). Idempotent: False if it was already gone."""
        try:
            await self._call(f"lease revoke {lease.id:x}", lambda: self._c.revoke_lease(lease.id))
        except EtcdLeaseNotFound:
            return False
        return True

    # -- watch plumbing (used by podroute.etcd.watch) -------------------------------------------------

    async def _open_watch(self, prefix: str, start_revision: int):
        p = prefix.encode()
        return await self._call(f"watch {prefix!r} from {start_revision}",
                                lambda: self._c.watch(p, range_end=_prefix_end(p), start_revision=start_revision))

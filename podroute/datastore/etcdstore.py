"""The ``etcd`` datastore: the :class:`podroute.datastore.api.Datastore` seam on etcd v3, through
:mod:`podroute.etcd` (aetcd; nothing here imports aetcd or grpc).

Key layout, under one prefix (default ``/podroute/``; the model owns the relative keys,
:func:`podroute.datastore.model.key_of`, :class:`podroute.etcd.keys.KeyLayout` adds the prefix);
every value is one JSON object (:mod:`podroute.datastore.codec`, Calico's field names):

=================================================  ======================================  =====================
key                                                holds                                   written by
=================================================  ======================================  =====================
``/podroute/nodes/<name>``                         Node: address, AS, RR cluster ID,       the node, under its
                                                   labels, tunnel addresses                lease (TTL leaseTTL)
``/podroute/ipamblocks/<198-19-1-0-26>``           IPAMBlock: CIDR, ``host:<node>``,       claims: txn
                                                   state                                   ``Version == 0``
``/podroute/ippools/<name>``                       IPPool: CIDR, block size, encapsulation ``podroute datastore
``/podroute/bgppeers/<name>``                      BGPPeer: peer IP, AS, node/selector     apply`` (create or
``/podroute/bgpconfigurations/default``            BGPConfiguration: mesh, default AS      replace, ModRevision)
=================================================  ======================================  =====================

How the seam maps onto etcd:

- revision: etcd's store revision; ``Stored.revision`` is the key's ModRevision.
- :meth:`snapshot`: one prefix Range; ``Snapshot.revision`` is its response header's revision.
  A value that does not decode is listed in ``Snapshot.invalid`` (InvalidData naming the key).
- :meth:`watch` (``rev``): a prefix Watch from ``rev + 1``. Events that arrived together (one
  etcd WatchResponse, or several if the consumer was slower) become one :class:`Changes`; a
  transaction's events share a revision and etcd never splits a revision across responses.
  A compacted ``rev`` (ErrCompacted) -> a fresh Range -> :class:`Resync`, then the watch goes on
  from its revision. A stream that cannot be re-established within ``timeout_s`` ->
  :class:`Unavailable` (the caller watches again from the last revision it saw).
- :meth:`register_node`: LeaseGrant(TTL) and a put under the lease, kept alive by
  :class:`podroute.etcd.LeaseKeeper` until :meth:`close`. When etcd says the lease is gone
  (its TTL ran out while this node could not reach etcd, or it was revoked) etcd has deleted
  the key, which watchers see as a Delete; the store then registers the node again under a new
  lease, retrying with backoff, as flannel re-acquires a lost subnet lease.
- :meth:`claim_block`: txn ``If(Version(key) == 0) Then Put``; on a failed compare the same txn
  reads the key, so the :class:`Conflict` names the holder (or the stored block is returned when
  it is already the claimer's).
- :meth:`release_block`: txn ``If(ModRevision(key) == rev) Then Delete``; else Conflict.
- errors: etcd unreachable or a deadline passed -> Unavailable; a lost compare -> Conflict; a
  malformed value -> InvalidData naming the key; any other etcd refusal -> Unavailable with
  etcd's reason (retried with backoff by the callers; the state they hold stays in force).

Endpoints: ``http://host:port`` or ``host:port``. aetcd dials one member, so the first endpoint
is used (point it at a local member or a load balancer); TLS is not supported yet.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import urllib.parse
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import AsyncIterator, Sequence

from podroute.datastore.api import (Changes, Conflict, Delete, Event, Invalid, InvalidData, Put, Resync, Snapshot,
                                    Unavailable, WatchItem)
from podroute.datastore.codec import decode, encode
from podroute.datastore.model import IPAMBlock, Node, Resource, Stored, block_key, key_of
from podroute.etcd import (EtcdClient, EtcdCompacted, EtcdConflict, EtcdError, EtcdUnavailable, KeyLayout, KeyValue,
                           Lease, LeaseKeeper, Reconnect, WatchEvent, watch_prefix)
from podroute.etcd.keys import DEFAULT_PREFIX

log = logging.getLogger("podroute.datastore.etcd")

REREGISTER_BACKOFF_S = (0.5, 10.0)   # first and longest wait between re-registration attempts
PUT_ATTEMPTS = 5                     # create-or-replace retries when another writer races


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``http://198.18.0.2:2379`` or ``198.18.0.2:2379`` -> (host, port); an IPv6 host keeps its
    brackets (``[fd00::2]``), as gRPC's target needs them. ValueError naming the endpoint."""
    text = endpoint if "://" in endpoint else f"http://{endpoint}"
    u = urllib.parse.urlsplit(text)
    if u.scheme != "http":
        raise ValueError(f"etcd endpoint {endpoint!r}: only http:// is supported (no TLS yet)")
    try:
        port = u.port
    except ValueError:
        port = None
    if not u.hostname or port is None or u.path not in ("", "/") or u.query or u.username:
        raise ValueError(f"etcd endpoint {endpoint!r}: want http://<host>:<port>, e.g. http://198.18.0.2:2379")
    return (f"[{u.hostname}]" if ":" in u.hostname else u.hostname), port


@dataclass
class _Registration:
    node: Node
    ttl_s: int
    lease: Lease
    keeper: LeaseKeeper
    task: asyncio.Task | None = None


class EtcdDatastore:
    """The Datastore over the etcd cluster at ``endpoints``, keys under ``prefix``; every call has a
    deadline of ``timeout_s``. The constructor does no I/O (ValueError for a bad endpoint or
    prefix); the connection is made on first use. :meth:`put_resource` and
    :meth:`delete_resource` are the administrator's writes (``podroute datastore apply``, the
    lab, tests), not part of the Protocol."""

    name = "etcd"
    supports_claims = True
    self_registering = True

    def __init__(self, endpoints: Sequence[str], *, prefix: str = DEFAULT_PREFIX, timeout_s: float = 5.0) -> None:
        if isinstance(endpoints, str) or not endpoints:
            raise ValueError(f"etcd endpoints: want a non-empty list, got {endpoints!r}")
        self.endpoints = tuple(endpoints)
        self._addrs = [parse_endpoint(e) for e in self.endpoints]
        self.location = ",".join(self.endpoints)
        self.layout = KeyLayout(prefix)
        if not 0 < timeout_s <= 60:
            raise ValueError(f"etcd timeout_s must be in (0, 60], got {timeout_s!r}")
        self.timeout_s = timeout_s
        self._client: EtcdClient | None = None
        self._registrations: dict[str, _Registration] = {}

    # --- plumbing ---------------------------------------------------------------------------
    @property
    def client(self) -> EtcdClient:
        if self._client is None:
            host, port = self._addrs[0]
            self._client = EtcdClient(host, port, timeout_s=self.timeout_s)
        return self._client

    def _unavailable(self, e: EtcdError) -> Unavailable:
        return Unavailable(f"etcd at {self.location}: {e}")

    def _rel(self, key: str) -> str:
        """The model key of etcd key ``key``; InvalidData naming ``key`` when it is not ours."""
        try:
            return self.layout.relative(key)
        except ValueError as e:
            raise InvalidData(key, str(e)) from None

    def etcd_key(self, rel: str) -> str:
        """The etcd key of model key ``rel``; InvalidData naming ``rel`` when it is not in the layout."""
        try:
            return self.layout.key(rel)
        except ValueError as e:
            raise InvalidData(rel, str(e)) from None

    def _stored(self, key: str, value: bytes, revision: int, created: int) -> Stored:
        rel = self._rel(key)
        return Stored(rel, decode(rel, value), revision, created)

    # --- list, then watch -------------------------------------------------------------------
    async def snapshot(self) -> Snapshot:
        try:
            listing = await self.client.get_prefix(self.layout.prefix)
        except EtcdError as e:
            raise self._unavailable(e) from None
        items: dict[str, Stored] = {}
        invalid: list[InvalidData] = []
        for kv in listing.items:
            try:
                st = self._stored(kv.key, kv.value, kv.mod_revision, kv.create_revision)
            except InvalidData as e:
                invalid.append(e)
                continue
            items[st.key] = st
        return Snapshot(listing.revision, items, tuple(invalid))

    def _event(self, ev: WatchEvent) -> Event:
        try:
            if ev.kind == "delete":
                return Delete(self._rel(ev.key), ev.mod_revision)
            return Put(self._stored(ev.key, ev.value, ev.mod_revision, ev.create_revision))
        except InvalidData as e:
            return Invalid(e, ev.mod_revision)

    async def _arrivals(self, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        """The prefix's watch events from ``start_revision`` on, in lists of what arrived together.
        aetcd hands events over one by one; a pump task queues them, and each list is what is
        queued when the consumer comes to read (at least the events of one WatchResponse, since
        aetcd queues a response's events without yielding to the loop)."""
        q: asyncio.Queue[WatchEvent | BaseException] = asyncio.Queue()
        reconnect = Reconnect(first_s=0.1, max_s=min(2.0, self.timeout_s), give_up_after_s=self.timeout_s)

        async def pump() -> None:
            try:
                async for ev in watch_prefix(self.client, self.layout.prefix, start_revision, reconnect):
                    q.put_nowait(ev)
                q.put_nowait(EtcdUnavailable("watch ended"))
            except asyncio.CancelledError:
                raise
            except Exception as e:   # handed to the consumer, which raises it
                q.put_nowait(e)

        task = asyncio.get_running_loop().create_task(pump(), name=f"etcd-watch-{self.layout.prefix}")
        try:
            while True:
                batch = [await q.get()]
                while not q.empty():
                    batch.append(q.get_nowait())
                events = [x for x in batch if isinstance(x, WatchEvent)]
                error = next((x for x in batch if isinstance(x, BaseException)), None)
                if events:
                    yield events
                if error is not None:
                    raise error
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def watch(self, revision: int) -> AsyncIterator[WatchItem]:
        """Changes after ``revision`` (see the module docstring). Raises Unavailable."""
        last = revision
        while True:
            try:
                # aclosing: a consumer that stops watching ends the stream and its pump task now,
                # not when the abandoned generator is collected.
                async with contextlib.aclosing(self._arrivals(last + 1)) as arrivals:
                    async for batch in arrivals:
                        changes = Changes(batch[-1].mod_revision, tuple(self._event(ev) for ev in batch))
                        last = changes.revision
                        yield changes
            except EtcdCompacted as e:
                log.warning("etcd watch revision compacted; listing again",
                            extra={"kv": {"revision": last, "oldest": e.compact_revision}})
                snap = await self.snapshot()
                last = snap.revision
                yield Resync(snap)
            except EtcdError as e:
                raise self._unavailable(e) from None

    # --- node registration ------------------------------------------------------------------
    async def _write_registration(self, node: Node, lease: Lease) -> Stored:
        key, rel = self.etcd_key(key_of(node)), key_of(node)
        value = encode(node)
        try:
            for _ in range(PUT_ATTEMPTS):
                kv = await self.client.get(key)
                if kv is not None:
                    self._check_takeover(rel, kv, node)
                try:
                    if kv is None:
                        rev = created = await self.client.create(key, value, lease)
                    else:
                        rev = await self.client.update(key, value, kv.mod_revision, lease)
                        created = kv.create_revision
                    return Stored(rel, node, rev, created)
                except EtcdConflict:
                    continue      # someone wrote it meanwhile: look again
        except EtcdError as e:
            raise self._unavailable(e) from None
        raise Conflict(rel, f"kept changing during {PUT_ATTEMPTS} registration attempts", node.name)

    def _check_takeover(self, rel: str, kv: KeyValue, node: Node) -> None:
        """Registering over an existing key is fine when it is this node's (same address: a
        restarted agent, or this store's own earlier put); another address is another node."""
        try:
            old = decode(rel, kv.value)
        except InvalidData:
            return        # a malformed registration is replaced by a good one
        if isinstance(old, Node) and old.address != node.address:
            raise Conflict(rel, f"node {node.name} is registered with address {old.address}, not {node.address}",
                           node.name)

    async def register_node(self, node: Node, ttl_s: float) -> Stored:
        """Register ``node`` under a lease of ``ttl_s`` seconds (rounded up, at least 1) that this
        store keeps alive and renews after a loss until :meth:`close`. Raises Conflict when the name
        is registered with another address, InvalidData for a name outside the key layout,
        Unavailable."""
        ttl = max(1, math.ceil(ttl_s))
        old = self._registrations.pop(node.name, None)
        if old is not None:
            await self._end(old)
        try:
            lease = await self.client.grant_lease(ttl)
        except EtcdError as e:
            raise self._unavailable(e) from None
        try:
            st = await self._write_registration(node, lease)
        except BaseException:
            try:
                await self.client.revoke(lease)
            except EtcdError:
                pass      # it lapses after its TTL
            raise
        reg = _Registration(node, ttl, lease, LeaseKeeper(self.client, lease).start())
        reg.task = asyncio.get_running_loop().create_task(self._hold(reg), name=f"etcd-register-{node.name}")
        self._registrations[node.name] = reg
        return st

    async def _hold(self, reg: _Registration) -> None:
        """Until :meth:`close`: wait for the lease to be lost, then register again (backoff)."""
        while True:
            await reg.keeper.lost.wait()
            log.error("node registration lost with its lease; registering again",
                      extra={"kv": {"node": reg.node.name, "reason": reg.keeper.lost_reason}})
            wait = REREGISTER_BACKOFF_S[0]
            while True:
                try:
                    lease = await self.client.grant_lease(reg.ttl_s)
                    try:
                        await self._write_registration(reg.node, lease)
                    except BaseException:
                        try:
                            await self.client.revoke(lease)
                        except EtcdError:
                            pass
                        raise
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - Unavailable, Conflict, a bug: keep trying, say why
                    log.warning("node registration failed; retrying",
                                extra={"kv": {"node": reg.node.name, "error": str(e), "retry_s": wait}})
                    await asyncio.sleep(wait)
                    wait = min(wait * 2, REREGISTER_BACKOFF_S[1])
            reg.lease, reg.keeper = lease, LeaseKeeper(self.client, lease).start()
            log.info("node registered again", extra={"kv": {"node": reg.node.name, "lease": f"{lease.id:x}"}})

    async def _end(self, reg: _Registration) -> None:
        if reg.task is not None:
            reg.task.cancel()
            await asyncio.gather(reg.task, return_exceptions=True)
        await reg.keeper.stop()

    # --- IPAM blocks ------------------------------------------------------------------------
    async def claim_block(self, block: IPAMBlock) -> Stored:
        rel = block_key(block.cidr)
        try:
            rev = await self.client.create(self.etcd_key(rel), encode(block))
        except EtcdConflict as e:
            cur = e.current
            if cur is None:
                raise Conflict(rel, "claimed by someone else meanwhile") from None
            try:
                held = decode(rel, cur.value)
            except InvalidData:
                raise Conflict(rel, "holds an invalid value", None) from None
            holder = held.affinity if isinstance(held, IPAMBlock) else None
            if holder is not None and holder == block.affinity:
                return Stored(rel, held, cur.mod_revision, cur.create_revision)
            raise Conflict(rel, f"already held by {holder or 'nobody'}", holder) from None
        except EtcdError as e:
            raise self._unavailable(e) from None
        return Stored(rel, block, rev, rev)

    async def release_block(self, cidr: IPv4Network, revision: int) -> None:
        rel = block_key(cidr)
        try:
            await self.client.delete(self.etcd_key(rel), revision)
        except EtcdConflict as e:
            holder = None
            if e.current is not None:
                try:
                    held = decode(rel, e.current.value)
                    holder = held.affinity if isinstance(held, IPAMBlock) else None
                except InvalidData:
                    pass
            raise Conflict(rel, f"changed or released since revision {revision}", holder) from None
        except EtcdError as e:
            raise self._unavailable(e) from None

    # --- administrative writes --------------------------------------------------------------
    async def put_resource(self, resource: Resource) -> Stored:
        """Create or replace ``resource`` (a ModRevision-compared write, retried when another
        writer races). Raises InvalidData for a name outside the key layout, Unavailable."""
        rel = key_of(resource)
        key, value = self.etcd_key(rel), encode(resource)
        try:
            for _ in range(PUT_ATTEMPTS):
                kv = await self.client.get(key)
                try:
                    if kv is None:
                        rev = created = await self.client.create(key, value)
                    else:
                        rev = await self.client.update(key, value, kv.mod_revision)
                        created = kv.create_revision
                    return Stored(rel, resource, rev, created)
                except EtcdConflict:
                    continue
        except EtcdError as e:
            raise self._unavailable(e) from None
        raise Conflict(rel, f"kept changing during {PUT_ATTEMPTS} write attempts")

    async def delete_resource(self, key: str) -> bool:
        """Delete the resource at model key ``key`` (``ippools/p1``); True if it existed."""
        try:
            return await self.client.delete(self.etcd_key(key))
        except EtcdError as e:
            raise self._unavailable(e) from None

    async def close(self) -> None:
        """Stop keeping registrations alive (they lapse after their TTL; nothing is revoked, so
        an agent that restarts within the TTL is never seen leaving) and close the connection."""
        regs, self._registrations = list(self._registrations.values()), {}
        for reg in regs:
            await self._end(reg)
        client, self._client = self._client, None
        if client is not None:
            await client.close()

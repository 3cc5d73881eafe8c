"""An in-memory datastore with fault injection, for tests (the style of kopf's and httpx's
mock transports: a real implementation of the seam whose server side the test drives).

One :class:`FakeServer` is the shared store; each node talks to it through its own
:class:`FakeDatastore` client (the Protocol). The server injects faults:

- ``down()`` / ``up()``: every call and every open watch raises :class:`Unavailable`;
- ``fail_next(op, exc)``: the next call of ``op`` (a Protocol method name) raises ``exc``;
- ``compact()``: watches from an older revision get a :class:`Resync`;
- ``put_invalid(key, reason)``: a malformed value lands at ``key``;
- ``expire_lease(node)``: the node's registration lapses (a Delete event).

Every client call yields to the event loop once before it acts, so concurrent claimers
interleave as they would against a server.
"""
from __future__ import annotations

import asyncio
from ipaddress import IPv4Network
from typing import AsyncIterator

from podroute.datastore.api import Conflict, InvalidData, Snapshot, Unavailable, WatchItem
from podroute.datastore.memory import MemoryStore
from podroute.datastore.model import IPAMBlock, Node, Resource, Stored, block_key, key_of


class FakeServer:
    """The shared store. ``put``/``delete`` are the administrator's writes (calicoctl apply)."""

    def __init__(self, history_limit: int = 10_000) -> None:
        self.store = MemoryStore(history_limit, check=self._check)
        self.is_down = False
        self.leases: dict[str, float] = {}       # node name -> TTL seconds (kept alive)
        self._fail: dict[str, list[Exception]] = {}
        self.calls: list[str] = []

    def _check(self) -> None:
        if self.is_down:
            raise Unavailable("fake datastore is down")

    def down(self) -> None:
        self.is_down = True
        self.store.wake()

    def up(self) -> None:
        self.is_down = False
        self.store.wake()

    def fail_next(self, op: str, exc: Exception) -> None:
        self._fail.setdefault(op, []).append(exc)

    def compact(self) -> None:
        self.store.compact()

    def put(self, *resources: Resource) -> int:
        return self.store.commit(puts=resources)

    def delete(self, *keys: str) -> int:
        return self.store.commit(deletes=keys)

    def put_invalid(self, key: str, reason: str) -> int:
        return self.store.commit(invalid=[InvalidData(key, reason)])

    def expire_lease(self, node: str) -> None:
        self.leases.pop(node, None)
        self.store.commit(deletes=[f"nodes/{node}"])

    def get(self, key: str) -> Stored | None:
        return self.store.items.get(key)

    async def enter(self, op: str) -> None:
        await asyncio.sleep(0)
        self.calls.append(op)
        pending = self._fail.get(op)
        if pending:
            raise pending.pop(0)
        self._check()


class FakeDatastore:
    """One node's client of a :class:`FakeServer`; implements the Datastore Protocol."""

    name = "fake"
    location = "fake"
    supports_claims = True
    self_registering = True   # as etcd

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.registered: set[str] = set()

    async def snapshot(self) -> Snapshot:
        await self.server.enter("snapshot")
        return self.server.store.snapshot()

    async def watch(self, revision: int) -> AsyncIterator[WatchItem]:
        await self.server.enter("watch")
        async for item in self.server.store.watch(revision):
            yield item

    async def register_node(self, node: Node, ttl_s: float) -> Stored:
        await self.server.enter("register_node")
        old = self.server.get(key_of(node))
        if old is not None and isinstance(old.value, Node) and old.value.address != node.address \
                and node.name not in self.registered:
            raise Conflict(key_of(node), f"registered with address {old.value.address}", node.name)
        self.server.store.commit(puts=[node])
        self.server.leases[node.name] = ttl_s
        self.registered.add(node.name)
        return self.server.store.items[key_of(node)]

    async def claim_block(self, block: IPAMBlock) -> Stored:
        await self.server.enter("claim_block")
        key = block_key(block.cidr)
        old = self.server.get(key)
        if old is not None:
            holder = old.value.affinity if isinstance(old.value, IPAMBlock) else None
            if holder == block.affinity and holder is not None:
                return old
            raise Conflict(key, f"already held by {holder or 'nobody'}", holder)
        if key in self.server.store.invalid:
            raise Conflict(key, "holds an invalid value", None)
        self.server.store.commit(puts=[block])
        return self.server.store.items[key]

    async def release_block(self, cidr: IPv4Network, revision: int) -> None:
        await self.server.enter("release_block")
        key = block_key(cidr)
        old = self.server.get(key)
        if old is None or old.revision != revision:
            raise Conflict(key, "changed or released since revision %d" % revision,
                           old.value.affinity if old is not None and isinstance(old.value, IPAMBlock) else None)
        self.server.store.commit(deletes=[key])

    async def close(self) -> None:
        self.registered.clear()

"""The administrator's side of an EtcdDatastore under test: a harness for the datastore contract
(tests/contract/datastore_contract.py) on the real etcd of the ``etcd_server`` fixture, each test
under its own key prefix. etcdctl (Debian's) writes the malformed values and compacts."""
from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from podroute.datastore import Unavailable, key_of
from podroute.datastore.etcdstore import EtcdDatastore

TIMEOUT_S = 2.0


def new_prefix() -> str:
    return f"/t-{uuid.uuid4().hex[:10]}/"


async def when_up(call, timeout: float = 15.0):
    """``await call()`` until it stops raising Unavailable (etcd coming back); bounded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await call()
        except Unavailable:
            assert loop.time() < deadline, f"etcd not reachable again within {timeout} s"
            await asyncio.sleep(0.1)


class EtcdHarness:
    def __init__(self, server, prefix: str | None = None) -> None:
        self.server = server
        self.prefix = prefix or new_prefix()
        self.admin = self.store()
        self.clients: list[EtcdDatastore] = [self.admin]

    def store(self, timeout_s: float = TIMEOUT_S) -> EtcdDatastore:
        return EtcdDatastore([self.server.endpoint], prefix=self.prefix, timeout_s=timeout_s)

    def client(self) -> EtcdDatastore:
        ds = self.store()
        self.clients.append(ds)
        return ds

    async def seed(self, *resources: Any) -> None:
        for r in resources:
            await when_up(lambda: self.admin.put_resource(r))

    async def remove(self, *resources: Any) -> None:
        for r in resources:
            await self.admin.delete_resource(key_of(r))

    def etcdctl(self, *args: str) -> str:
        return self.server.etcdctl(*args)

    async def put_raw(self, rel_key: str, value: str) -> None:
        """A value written behind the datastore's back (``etcdctl put``)."""
        await asyncio.to_thread(self.etcdctl, "put", self.prefix + rel_key, value)

    async def corrupt(self, resource: Any) -> str:
        await self.put_raw(key_of(resource), "{not json")
        return key_of(resource)

    async def compact(self) -> None:
        out = await asyncio.to_thread(self.etcdctl, "endpoint", "status", "-w", "json")
        rev = json.loads(out)[0]["Status"]["header"]["revision"]
        await asyncio.to_thread(self.etcdctl, "compact", str(rev))

    async def outage(self) -> None:
        await asyncio.to_thread(self.server.stop)

    async def restore(self) -> None:
        await asyncio.to_thread(self.server.start)

    async def close(self) -> None:
        if not self.server.running():
            await asyncio.to_thread(self.server.start)
        for c in self.clients:
            await c.close()

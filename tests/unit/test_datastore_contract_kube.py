"""The Datastore contract (tests/contract/datastore_contract.py) on the kubernetes datastore,
against a real kube-apiserver with RBAC on (tests/kubeutil.py; one per module).

Every client under test authenticates as the agent user, bound to exactly the ClusterRole in
configs/rbac.yaml, so the contract also proves the role suffices; the administrator's writes
(seed, remove, corrupt) go through an admin client. ``compact`` compacts etcd and restarts
kube-apiserver: its watch cache keeps recent events past an etcd compaction, and only a fresh
cache answers a watch from the old revision with 410 Gone. ``outage``/``restore`` stop and
start kube-apiserver by PID.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from podroute.datastore import Node, key_of
from podroute.datastore.kubestore import KubeDatastore
from podroute.kube.codec import ASN, KINDS, NODES
from tests.contract.datastore_contract import *  # noqa: F401,F403 - the contract's test functions


class KubeHarness:
    def __init__(self, server) -> None:
        self.server = server
        self.admin = KubeDatastore(server.kubeconfig("admin"))
        self.clients: list[KubeDatastore] = []

    def client(self) -> KubeDatastore:
        ds = KubeDatastore(self.server.kubeconfig("agent"))
        self.clients.append(ds)
        return ds

    async def reset(self) -> None:
        """Delete every Node and podroute object (deletecollection as admin)."""
        for kind in KINDS:
            await asyncio.to_thread(self.admin.rest.call, "DELETE", kind.path)

    async def seed(self, *resources: Any) -> None:
        for r in resources:
            await self.admin.put_resource(r)

    async def remove(self, *resources: Any) -> None:
        for r in resources:
            await self.admin.delete_resource(key_of(r))

    async def corrupt(self, resource: Any) -> str:
        assert isinstance(resource, Node)
        await asyncio.to_thread(self.admin.rest.call, "PATCH", f"{NODES.path}/{resource.name}",
                                body={"metadata": {"annotations": {ASN: "not-a-number"}}},
                                content_type="application/merge-patch+json")
        return key_of(resource)

    async def compact(self) -> None:
        await asyncio.to_thread(self._compact)

    def _compact(self) -> None:
        etcd = self.server.etcd
        rev = json.loads(etcd.etcdctl("endpoint", "status", "-w", "json"))[0]["Status"]["header"]["revision"]
        etcd.etcdctl("compact", str(rev))
        self.server.restart_apiserver()

    async def outage(self) -> None:
        await asyncio.to_thread(self.server.stop_apiserver)

    async def restore(self) -> None:
        await asyncio.to_thread(self.server.start_apiserver)

    async def close(self) -> None:
        for c in self.clients:
            await c.close()
        await self.admin.close()


@pytest.fixture
async def harness(kube_apiserver):
    if not kube_apiserver.running():
        kube_apiserver.start_apiserver()
    h = KubeHarness(kube_apiserver)
    await h.reset()
    yield h
    await h.close()
    if not kube_apiserver.running():     # leave the module's API server up for the next test
        await asyncio.to_thread(kube_apiserver.start_apiserver)


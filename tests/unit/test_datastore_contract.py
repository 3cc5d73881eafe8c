"""The Datastore contract (tests/contract/datastore_contract.py) on the fake and the file store."""
from __future__ import annotations

import itertools
import os
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
import yaml

from podroute.datastore import BGPConfiguration, BGPPeer, IPAMBlock, Node, key_of
from podroute.datastore.fake import FakeDatastore, FakeServer
from podroute.datastore.filestore import FileDatastore
from tests.contract.datastore_contract import *  # noqa: F401,F403 - the contract's test functions


class FakeHarness:
    def __init__(self) -> None:
        self.server = FakeServer()

    def client(self) -> FakeDatastore:
        return FakeDatastore(self.server)

    async def seed(self, *resources: Any) -> None:
        self.server.put(*resources)

    async def remove(self, *resources: Any) -> None:
        self.server.delete(*(key_of(r) for r in resources))

    async def corrupt(self, resource: Any) -> str:
        self.server.put_invalid(key_of(resource), "not JSON")
        return key_of(resource)

    async def compact(self) -> None:
        self.server.compact()

    async def outage(self) -> None:
        self.server.down()

    async def restore(self) -> None:
        self.server.up()


class FileHarness:
    """Writes the cluster file from resources; each client is a FileDatastore polling it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: dict[str, Any] = {}
        self.clients: list[FileDatastore] = []
        self._mtime = itertools.count(1)
        self._write()

    def _write(self, text: str | None = None) -> None:
        if text is None:
            cfg = next((r for r in self.items.values() if isinstance(r, BGPConfiguration)), BGPConfiguration())
            nodes = [{"name": n.name, "ip": str(n.address),
                      "podCIDRs": [str(b.cidr) for b in self.items.values()
                                   if isinstance(b, IPAMBlock) and b.affinity == n.name]}
                     for n in self.items.values() if isinstance(n, Node)]
            peers = [{"address": str(p.peer_ip), "asn": p.as_number, "holdTime": p.hold_time}
                     for p in self.items.values() if isinstance(p, BGPPeer)]
            text = yaml.safe_dump({"bgp": {"nodeToNodeMesh": cfg.node_to_node_mesh_enabled, "asn": cfg.as_number,
                                           "peers": peers}, "nodes": nodes})
        self.path.write_text(text)
        st = self.path.stat()
        os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns + next(self._mtime) * 1_000_000_000))

    def client(self) -> FileDatastore:
        ds = FileDatastore(self.path, poll_s=0.01)
        ds.load()
        self.clients.append(ds)
        return ds

    async def seed(self, *resources: Any) -> None:
        self.items.update((key_of(r), r) for r in resources)
        await self._written()

    async def _written(self) -> None:
        self._write()
        for c in self.clients:  # as if each poller saw this write on its own
            await c.poll_once()

    async def remove(self, *resources: Any) -> None:
        for r in resources:
            self.items.pop(key_of(r))
        await self._written()

    async def corrupt(self, resource: Any) -> str:
        self._write("nodes: [{name: n1, ip: not-an-ip}]\n")
        return str(self.path)

    async def compact(self) -> None:
        for c in self.clients:
            c.store.compact()


@pytest.fixture(params=["fake", "file"])
async def harness(request, tmp_path):
    h = FakeHarness() if request.param == "fake" else FileHarness(tmp_path / "cluster.yaml")
    yield h
    for c in getattr(h, "clients", ()):
        await c.close()


async def test_file_store_ignores_a_missing_file_and_picks_it_up_again(tmp_path):
    h = FileHarness(tmp_path / "cluster.yaml")
    await h.seed(BGPConfiguration(), Node("n1", IPv4Address("198.18.0.11")))
    ds = h.client()
    before = await ds.snapshot()
    h.path.unlink()
    assert not await ds.poll_once()
    assert (await ds.snapshot()).items == before.items
    await h.seed(Node("n2", IPv4Address("198.18.0.12")))
    assert "nodes/n2" in (await ds.snapshot()).items
    await ds.close()

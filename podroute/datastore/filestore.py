"""The ``file`` datastore: the cluster file (:mod:`podroute.datastore.cluster`) behind the
Datastore Protocol.

The file is the source of truth and nobody writes it through the seam: a poller stats it
every ``poll_s`` seconds and, when (mtime, size) changed, parses it off the event loop and
commits the difference to an in-memory revisioned store (:mod:`podroute.datastore.memory`),
so consumers see the same list-then-watch events as from etcd. A file that does not parse
becomes an :class:`Invalid` event keyed by the file's path; the resources of the last good
file stay. A missing file is ignored until it comes back.

Block claims: the file datastore cannot claim (``supports_claims`` False). Nodes keep static
``podCIDRs`` in the file; ``claim_block`` returns a block the file already gives the node and
raises :class:`Unsupported` otherwise. Registration checks that the file lists the node with
the same address (there is no lease: the file says who is in the cluster).
"""
from __future__ import annotations

import asyncio
import logging
from ipaddress import IPv4Network
from pathlib import Path
from typing import AsyncIterator

from podroute.datastore.api import InvalidData, Snapshot, Unsupported, WatchItem
from podroute.datastore.cluster import load_file_resources
from podroute.datastore.memory import MemoryStore
from podroute.datastore.model import IPAMBlock, Node, Resource, Stored, block_key, key_of
from podroute.schema import ConfigError

log = logging.getLogger("podroute.datastore.file")

POLL_S = 0.5
Stamp = tuple[float, int]  # (st_mtime, st_size)


def _stamp(path: Path) -> Stamp | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime, st.st_size)


class FileDatastore:
    """The Datastore over the cluster file at ``path``. Call :meth:`load` once (blocking;
    raises ConfigError for a bad file) before the event loop uses it."""

    name = "file"
    supports_claims = False
    self_registering = False

    def __init__(self, path: Path, poll_s: float = POLL_S) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self.poll_s = poll_s
        self.store = MemoryStore()
        self._stamp: Stamp | None = None
        self._poller: asyncio.Task[None] | None = None

    def _read(self) -> dict[str, Resource]:
        stamp = _stamp(self.path)
        items = load_file_resources(self.path)
        self._stamp = stamp
        return items

    def _apply(self, items: dict[str, Resource]) -> int:
        gone = [k for k in self.store.items if k not in items]
        return self.store.commit(puts=items.values(), deletes=[*gone, str(self.path)])

    def load(self) -> Snapshot:
        """The first read (blocking): raises ConfigError naming the file and key."""
        self._apply(self._read())
        return self.store.snapshot()

    async def poll_once(self) -> bool:
        """One poll: True if the file changed (valid or not) and the change was committed."""
        stamp = _stamp(self.path)
        if stamp is None or stamp == self._stamp:
            return False
        try:
            items = await asyncio.to_thread(self._read)
        except ConfigError as e:
            self._stamp = stamp  # not again until the file changes
            self.store.commit(invalid=[InvalidData(str(self.path), str(e))])
            return True
        self._apply(items)
        return True

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.poll_once()
            except Exception:  # noqa: BLE001 - a poller that dies would freeze the view silently
                log.exception("cluster file poll failed; polling on", extra={"kv": {"file": self.location}})

    async def snapshot(self) -> Snapshot:
        return self.store.snapshot()

    async def watch(self, revision: int) -> AsyncIterator[WatchItem]:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll(), name="cluster-file-poll")
        async for item in self.store.watch(revision):
            yield item

    async def register_node(self, node: Node, ttl_s: float) -> Stored:
        st = self.store.items.get(key_of(node))
        if st is None:
            raise InvalidData(str(self.path), f"this node ({node.name}) is not listed")
        assert isinstance(st.value, Node)
        if st.value.address != node.address:
            raise InvalidData(str(self.path), f"{node.name} has ip {st.value.address} but this node's "
                                              f"nodeIP is {node.address}")
        return st

    async def claim_block(self, block: IPAMBlock) -> Stored:
        st = self.store.items.get(block_key(block.cidr))
        if st is not None and isinstance(st.value, IPAMBlock) and st.value.affinity == block.affinity:
            return st
        raise Unsupported(f"the file datastore cannot claim blocks: list {block.cidr} in the podCIDRs of "
                          f"node {block.affinity} in {self.path}")

    async def release_block(self, cidr: IPv4Network, revision: int) -> None:
        raise Unsupported(f"the file datastore cannot release blocks: edit {self.path}")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None

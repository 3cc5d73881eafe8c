"""Keeps a node's blocks in step with its pods: the bridge between block affinity in the
datastore (:class:`podroute.ipamblocks.BlockAffinity`) and local IPAM (:class:`cni.ipam.IPAM`).

A CNI ADD never waits on the datastore: when the node's blocks are full, local IPAM fails the
ADD at once with CNI code 11 (try again later) and calls :meth:`NodeBlocks.exhausted`, which
wakes :meth:`run` to claim another block and adds why to the error's message ("claiming
another block" or, after a failed claim, the "pool exhausted" reason). The runtime retries the
ADD (kubelet and podman retry sandbox creation with backoff), and the retry finds the new block.

Each :meth:`tick` (every ``interval_s`` seconds, or at once when woken): claim a block when no
address is free, release empty blocks after the grace period, release departed nodes' blocks.
The datastore being unavailable only delays this; the node keeps the blocks it has (logged once
when upkeep stops and once when it resumes).
"""
from __future__ import annotations

import asyncio
import logging
from ipaddress import IPv4Network

from cni.ipam import IPAM
from podroute.datastore import DatastoreError
from podroute.ipamblocks import BlockAffinity, PoolExhausted

log = logging.getLogger("podroute.nodeblocks")

INTERVAL_S = 5.0


class NodeBlocks:
    """``affinity``'s blocks for ``ipam``. Wire ``IPAM(on_exhausted=nb.exhausted)`` (it may be
    called from any thread) and ``BlockAffinity(may_release=nb.may_release)``; set ``ipam``
    once the node has its first block (:meth:`BlockAffinity.ensure`)."""

    def __init__(self, affinity: BlockAffinity, ipam: IPAM | None = None, interval_s: float = INTERVAL_S) -> None:
        self.affinity, self.ipam, self.interval_s = affinity, ipam, interval_s
        self.last_error: str | None = None
        self.usage: dict[IPv4Network, int] = {}   # addresses in use per block, as of the last round
        self._postponed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()

    def exhausted(self) -> str:
        """Local IPAM found no free address: wake the claimer; the text for the CNI error."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)
        return self.last_error or "claiming another block for this node; try again"

    def wake(self) -> None:
        """Run a round now (from the event loop's thread), e.g. after the node's blocks changed."""
        self._wake.set()

    async def may_release(self, cidr: IPv4Network) -> bool:
        """Stop handing out from ``cidr`` before it is released; False if a pod got an
        address in it meanwhile."""
        assert self.ipam is not None
        keep = [b for b in self.ipam.blocks if b != cidr]
        if not keep:
            return False
        try:
            await asyncio.to_thread(self.ipam.set_blocks, keep)
        except ValueError:
            return False
        return True

    async def _sync(self) -> None:
        assert self.ipam is not None
        mine = self.affinity.mine()
        if mine and set(mine) != set(self.ipam.blocks):
            try:
                await asyncio.to_thread(self.ipam.set_blocks, mine)
            except ValueError as e:
                # A block taken from us (deleted in the datastore) while pods still use it: they
                # keep their addresses; local IPAM keeps handing out from the blocks it has.
                log.error("local IPAM keeps its blocks", extra={"kv": {"blocks": ",".join(map(str, mine)),
                                                                      "error": str(e)}})

    async def tick(self) -> None:
        """One round: grow if full, release empties and departed nodes' blocks, and give local
        IPAM the node's blocks."""
        assert self.ipam is not None
        try:
            usage = await asyncio.to_thread(self.ipam.usage)
            self.usage = usage
            if await asyncio.to_thread(self.ipam.free_count) == 0:
                try:
                    await self.affinity.grow()
                    self.last_error = None
                except PoolExhausted as e:
                    if self.last_error != e.msg:
                        log.error("cannot claim a block", extra={"kv": {"node": self.affinity.node, "error": e.msg}})
                    self.last_error = e.msg
                await self._sync()
            await self.affinity.release_empty(usage)
            await self.affinity.reap_departed()
        finally:
            await self._sync()

    async def run(self) -> None:
        """Tick until cancelled."""
        self._loop = asyncio.get_running_loop()
        while True:
            try:
                await self.tick()
                if self._postponed:
                    log.info("block upkeep resumed", extra={"kv": {"node": self.affinity.node}})
                self._postponed = False
            except DatastoreError as e:
                if not self._postponed:  # once per outage, not every round
                    log.warning("block upkeep postponed; the node keeps its blocks", extra={"kv": {"error": str(e)}})
                self._postponed = True
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

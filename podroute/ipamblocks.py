"""IPAM blocks with node affinity (Calico's model), over any :class:`Datastore`.

A node owns whole blocks through the datastore; the addresses inside its blocks are handed
out locally (:mod:`cni.ipam`), so a CNI ADD never waits on the datastore. :class:`BlockAffinity`
is this node's side:

- :meth:`ensure` (at start): static ``podCIDRs`` are claimed as this node's blocks (a block
  another node holds, or that overlaps one, is refused with :class:`BlockCollision`); a node
  without static blocks and without a block from a previous run claims one.
- :meth:`grow`: claims another block when every address of the node's blocks is used, up to
  ``max_blocks_per_host`` (0: no limit, as Calico's IPAMConfig); :class:`PoolExhausted` when
  no enabled pool has a free block.
- :meth:`release_empty`: releases a dynamic block that has been empty for ``grace_s`` and is
  not the node's last (Calico's IPAM GC never releases a node's last block either).
- :meth:`reap_departed`: releases the blocks of a node that is no longer registered (deleted
  or its lease expired) once it has been gone ``grace_s``. Only the surviving node with the
  lowest name tries, and the release compares on the block's revision, so one release wins
  even while membership is changing.

Claims pick free blocks of the pool's ``block_size`` (Calico's /26 default) from enabled pools,
starting at an offset derived from the node name (Calico starts at a random block) so that
concurrent claimers spread out; a lost claim (:class:`Conflict`) moves to the next free block.
Same-CIDR claims are atomic in the datastore; overlap with a block of another size is checked
against the view (pools fix the block size, so that only concerns static blocks).

``on_blocks(blocks)`` is called with the node's new block tuple whenever it changes (the
agent then announces them, installs their blackholes and hands them to local IPAM), and
again with the unchanged tuple when a release that ``may_release(cidr)`` allowed (local IPAM
stopped using the block, :mod:`podroute.nodeblocks`) did not happen.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import TYPE_CHECKING, Awaitable, Callable, Iterator, Mapping

from cni.errors import IPAMExhausted
from podroute.config_datastore import DEFAULT_MAX_BLOCKS_PER_HOST, DEFAULT_RELEASE_GRACE_S
from podroute.datastore import (Changes, Conflict, Datastore, Delete, IPAMBlock, IPPool, Node, Put, Resync,
                                Snapshot, Stored, block_key)
from podroute.datastore.model import BLOCK_CONFIRMED
from podroute.datastore.screen import screen_snapshot
from podroute.schema import ConfigError

if TYPE_CHECKING:
    from podroute.config import NodeConfig

log = logging.getLogger("podroute.ipamblocks")

MAX_BLOCKS_PER_HOST = DEFAULT_MAX_BLOCKS_PER_HOST   # Calico's IPAMConfig.maxBlocksPerHost: 0 = no limit
GRACE_S = DEFAULT_RELEASE_GRACE_S   # how long a block stays empty / a node stays gone before release
MAX_CLAIM_ATTEMPTS = 100    # Calico retries a conflicting block write up to 100 times


class PoolExhausted(IPAMExhausted):
    """No block can be claimed (CNI code 11, try again later: Calico's IPAM returns an error the
    runtime retries; the CNI spec has no "no addresses" code). The message says why."""


@dataclass(frozen=True)
class BlockRow:
    """A block as ``podroute ipam show`` lists it; ``used`` is None when not known here."""
    cidr: IPv4Network
    node: str | None
    state: str
    size: int
    used: int | None


class BlockCollision(Exception):
    """A static podCIDR is (or overlaps) another node's block."""


@dataclass(frozen=True)
class BlockPolicy:
    max_blocks_per_host: int = MAX_BLOCKS_PER_HOST
    grace_s: float = GRACE_S


class BlockView:
    """The blocks, pools and nodes of a datastore as node ``node`` sees them (read-only).
    Keep it current with :meth:`handle` (the datastore's watch items) or :meth:`load`.
    ``pools`` is used when the datastore holds no IPPool (the node config's ``ipPools``)."""

    def __init__(self, node: str, *, pools: tuple[IPPool, ...] = (),
                 on_blocks: Callable[[tuple[IPv4Network, ...]], None] = lambda b: None) -> None:
        self.node, self.default_pools, self.on_blocks = node, tuple(pools), on_blocks
        self.view: dict[str, Stored] = {}
        self.revision = 0
        self._published: tuple[IPv4Network, ...] | None = None

    # --- the view -------------------------------------------------------------------------
    def load(self, snapshot: Snapshot) -> None:
        """Replace the view with ``snapshot``; a key the snapshot rejects (``invalid``) keeps the
        value it had, as ClusterWatch keeps it: a block of ours gone bad in the store must not make
        this node drop its own block at the next Resync."""
        keep = {b.key: self.view[b.key] for b in snapshot.invalid if b.key in self.view}
        self.view, self.revision = {**snapshot.items, **keep}, snapshot.revision
        self._publish()

    def handle(self, item: Changes | Resync) -> None:
        if isinstance(item, Resync):
            self.load(item.snapshot)
            return
        for ev in item.events:
            if isinstance(ev, Put):
                self.view[ev.stored.key] = ev.stored
            elif isinstance(ev, Delete):
                self.view.pop(ev.key, None)
        self.revision = item.revision
        self._publish()

    def blocks(self) -> dict[IPv4Network, Stored]:
        """Every block in the view, by CIDR."""
        return {s.value.cidr: s for s in self.view.values() if isinstance(s.value, IPAMBlock)}

    def mine(self) -> tuple[IPv4Network, ...]:
        """This node's confirmed blocks, in address order."""
        return tuple(sorted((c for c, s in self.blocks().items()
                             if s.value.affinity == self.node and s.value.state == BLOCK_CONFIRMED),
                            key=lambda c: int(c.network_address)))

    def pools(self) -> tuple[IPPool, ...]:
        found = tuple(s.value for s in self.view.values() if isinstance(s.value, IPPool))
        return tuple(sorted(found or self.default_pools, key=lambda p: int(p.cidr.network_address)))

    def nodes(self) -> set[str]:
        return {s.value.name for s in self.view.values() if isinstance(s.value, Node)}

    def _publish(self) -> None:
        mine = self.mine()
        if mine != self._published:
            self._published = mine
            self.on_blocks(mine)

    def collisions(self, static: tuple[IPv4Network, ...]) -> list[str]:
        """Why each of ``static`` (this node's podCIDRs) cannot be this node's: another node's
        block is it or overlaps it. Empty when all are fine."""
        out = []
        for cidr in static:
            other = next((s.value for c, s in self.blocks().items()
                          if c.overlaps(cidr) and s.value.affinity != self.node), None)
            if other is not None:
                out.append(f"podCIDRs {cidr} collides with block {other.cidr} held by node "
                           f"{other.affinity or 'nobody'}; pick another block")
        return out

    def rows(self, used: Mapping[IPv4Network, int] | None = None) -> list[BlockRow]:
        """One row per block: CIDR, node, state, size and (this node's blocks only) the
        addresses in use from ``used``."""
        return [BlockRow(cidr, st.value.affinity, st.value.state, cidr.num_addresses,
                         used.get(cidr) if used is not None and st.value.affinity == self.node else None)
                for cidr, st in sorted(self.blocks().items(), key=lambda cs: int(cs[0].network_address))]


class BlockAffinity(BlockView):
    """Node ``node``'s blocks in ``datastore``: claims and releases (see the module doc).
    ``static``: the node config's podCIDRs."""

    def __init__(self, datastore: Datastore, node: str, *, static: tuple[IPv4Network, ...] = (),
                 pools: tuple[IPPool, ...] = (), on_blocks: Callable[[tuple[IPv4Network, ...]], None] = lambda b: None,
                 policy: BlockPolicy = BlockPolicy(), clock: Callable[[], float] = time.monotonic,
                 may_release: Callable[[IPv4Network], Awaitable[bool]] | None = None) -> None:
        super().__init__(node, pools=pools, on_blocks=on_blocks)
        self.ds, self.static, self.policy, self.clock = datastore, tuple(static), policy, clock
        self.may_release = may_release
        self._empty_since: dict[IPv4Network, float] = {}
        self._gone_since: dict[str, float] = {}

    async def refresh(self) -> None:
        """Load a fresh list, screened as the agent's watch is (:mod:`podroute.datastore.screen`)."""
        self.load(screen_snapshot(await self.ds.snapshot()))

    # --- claims ---------------------------------------------------------------------------
    async def _claim(self, cidr: IPv4Network) -> Stored:
        st = await self.ds.claim_block(IPAMBlock(cidr, self.node))
        self.view[st.key] = st
        self._publish()
        return st

    async def ensure(self) -> tuple[IPv4Network, ...]:
        """Claim the static blocks, or one dynamic block if the node has none. Raises
        BlockCollision, PoolExhausted, and the datastore's errors (Unavailable: retry later)."""
        await self.refresh()
        for problem in self.collisions(self.static):
            raise BlockCollision(problem)
        for cidr in self.static:
            try:
                await self._claim(cidr)
            except Conflict as e:
                raise BlockCollision(f"podCIDRs {cidr} is held by node {e.holder or 'nobody'}; pick another block") \
                    from None
        if not self.mine():
            await self.grow()
        return self.mine()

    def _candidates(self) -> Iterator[IPv4Network]:
        taken = list(self.blocks())
        for pool in self.pools():
            if pool.disabled:
                continue
            subnets = list(pool.cidr.subnets(new_prefix=pool.block_size))
            start = int(hashlib.sha256(self.node.encode()).hexdigest(), 16) % len(subnets)
            for cidr in subnets[start:] + subnets[:start]:
                if not any(cidr.overlaps(t) for t in taken):
                    yield cidr

    async def grow(self) -> IPv4Network:
        """Claim one more block. Raises PoolExhausted when the node is at
        ``max_blocks_per_host`` or every enabled pool is full."""
        if 0 < self.policy.max_blocks_per_host <= len(self.mine()):
            raise PoolExhausted(f"node {self.node} holds {len(self.mine())} blocks, its maxBlocksPerHost; "
                                "no more addresses until pods go")
        attempts = 0
        for cidr in self._candidates():
            if attempts >= MAX_CLAIM_ATTEMPTS:
                break
            attempts += 1
            try:
                await self._claim(cidr)
            except Conflict as e:
                log.info("block taken meanwhile; trying the next", extra={"kv": {"block": cidr, "holder": e.holder}})
                continue
            log.info("block claimed", extra={"kv": {"block": cidr, "node": self.node}})
            return cidr
        pools = ", ".join(str(p.cidr) for p in self.pools() if not p.disabled) or "none"
        raise PoolExhausted(f"pool exhausted: no free block in the enabled IP pools ({pools}) "
                            f"after {attempts} attempts")

    # --- releases -------------------------------------------------------------------------
    async def _release(self, st: Stored) -> bool:
        try:
            await self.ds.release_block(st.value.cidr, st.revision)
        except Conflict:
            return False  # someone else released or re-claimed it first
        self.view.pop(st.key, None)
        self._publish()
        log.info("block released", extra={"kv": {"block": st.value.cidr, "was": st.value.affinity}})
        return True

    async def _release_own(self, st: Stored) -> bool:
        try:
            if await self._release(st):
                return True
        except BaseException:
            self.on_blocks(self.mine())  # undo may_release: the block is still ours
            raise
        self.on_blocks(self.mine())
        return False

    async def release_empty(self, used: Mapping[IPv4Network, int]) -> list[IPv4Network]:
        """Release dynamic blocks of this node empty (``used[cidr] == 0``) for ``grace_s``,
        keeping at least one block. Returns the released CIDRs."""
        now, out = self.clock(), []
        for cidr in self.mine():
            if used.get(cidr, 0) or cidr in self.static:
                self._empty_since.pop(cidr, None)
            else:
                self._empty_since.setdefault(cidr, now)
        for cidr in self.mine():
            since = self._empty_since.get(cidr)
            if since is None or now - since < self.policy.grace_s or len(self.mine()) <= 1:
                continue
            st = self.view.get(block_key(cidr))
            if st is None or (self.may_release is not None and not await self.may_release(cidr)):
                continue
            if await self._release_own(st):
                self._empty_since.pop(cidr, None)
                out.append(cidr)
        return out

    async def reap_departed(self) -> list[IPv4Network]:
        """Release the blocks of nodes gone for ``grace_s`` (only on the lowest-named live
        node; each release compares on the block's revision). Returns the released CIDRs."""
        now, live = self.clock(), self.nodes()
        owners = {s.value.affinity for s in self.blocks().values()} - live - {None}
        for name in list(self._gone_since):
            if name not in owners:
                del self._gone_since[name]
        for name in owners:
            self._gone_since.setdefault(name, now)
        if not live or min(live) != self.node:
            return []
        out = []
        for cidr, st in sorted(self.blocks().items(), key=lambda cs: int(cs[0].network_address)):
            name = st.value.affinity
            if name in owners and now - self._gone_since[name] >= self.policy.grace_s and await self._release(st):
                out.append(cidr)
        return out


def static_block_check(cfg: "NodeConfig", snapshot: Snapshot) -> None:
    """At start: refuse the node config's podCIDRs when another node's block in the datastore
    is or overlaps one of them (ConfigError naming ``podCIDRs``)."""
    view = BlockView(cfg.node_name)
    view.load(snapshot)
    problems = view.collisions(cfg.pod_cidrs)
    if problems:
        raise ConfigError("podCIDRs", "; ".join(problems), cfg.source)

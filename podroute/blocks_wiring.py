"""A node's IPAM blocks on a datastore the node registers in (etcd, kubernetes): how the node
starts, and how its blocks then follow its pods at run time, for the agent (:mod:`podroute.agent`)
to wire. With kubernetes' ``usePodCIDR`` nothing is claimed: the node's one block is its Node's
``spec.podCIDR`` (the node waits for it at start), and it is neither grown nor released.

Start (:func:`start_node`, before the agent is built; :func:`prepare` in ``podroute node run``):
the node lists the datastore, re-uses the blocks it holds from a previous run or claims its
static ``podCIDRs`` (a collision is a :class:`podroute.schema.ConfigError` naming
``podCIDRs``) or claims one block (:meth:`podroute.ipamblocks.BlockAffinity.ensure`). While
the datastore is unavailable, holds no pool (and the node config sets none), or no pool has a
free block, it logs why and tries again with exponential backoff
(:data:`podroute.clusterwatch.BACKOFF_S`): a node started while etcd is down joins once etcd
is back. The result, :class:`NodeStart`, fixes what is decided once:

- the pools (the datastore's IPPools, else the node config's ``ipPools``): the encapsulation
  modes, the pod MTU and BGP import policy come from them; a pool added later takes effect at
  the agent's next start;
- the tunnel block: the node's tunnel address (tunl0 / VXLAN VTEP) is the first address of
  it, as Calico takes it from the node's block. A restart keeps it: the block holding the
  tunnel address the node registered last time is chosen again, else the first static
  podCIDR, else the first block in address order. It is never released while the agent runs;
- the registration (:class:`podroute.datastore.Node`): address, ASN, labels, route-reflector
  cluster ID and tunnel addresses (the VTEP MAC derives from the node IP,
  :func:`ipip.vxlan.vtep_mac`). Labels and the cluster ID an administrator set on the stored
  Node are kept when the node config sets none (calico/node leaves fields it does not own).

Run time (:class:`BlocksWiring`): the datastore's watch items (the agent's one stream,
:class:`podroute.clusterwatch.ClusterWatch`) keep a :class:`BlockAffinity` view current, and
:class:`podroute.nodeblocks.NodeBlocks` grows, releases and reaps blocks. Whenever the node's
blocks change the wiring, on the event loop, announces them (``set_announcements``; the service
CIDRs are the speaker's separate exports and stay), sets felix's ``"blocks"`` owner to their
blackholes and wakes NodeBlocks, which hands them to local IPAM off the loop. A CNI ADD never
waits: local IPAM fails it at once with the reason NodeBlocks gives (CNI code 11).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Awaitable, Callable, Protocol, Sequence

from felix.routes import Route
from podroute.clusterwatch import BACKOFF_S
from podroute.config import IPPool as ConfigPool
from podroute.config import NodeConfig
from podroute.datastore import (Changes, Datastore, IPAMBlock, IPPool, Node, Resync, Snapshot, Unavailable, key_of)
from podroute.datastore.model import cidr_name
from podroute.datastore.open import open_datastore
from podroute.datastore.screen import screen_snapshot
from podroute.ipamblocks import BlockAffinity, BlockCollision, BlockPolicy, BlockView, PoolExhausted
from podroute.nodeblocks import INTERVAL_S, NodeBlocks
from podroute.schema import ConfigError

log = logging.getLogger("podroute.blocks")


class RouteSetter(Protocol):
    def set_routes(self, owner: str, routes: Sequence[Route]) -> None: ...


class Announcer(Protocol):
    def set_announcements(self, cidrs: tuple[IPv4Network, ...]) -> None: ...


def model_pools(cfg: NodeConfig) -> tuple[IPPool, ...]:
    """The node config's ``ipPools`` as datastore IPPools (named as Calico names a CIDR)."""
    return tuple(IPPool(cidr_name(p.cidr), p.cidr, p.block_size, p.ipip_mode, p.vxlan_mode) for p in cfg.ip_pools)


def policy_of(cfg: NodeConfig) -> BlockPolicy:
    return BlockPolicy(max_blocks_per_host=cfg.ipam.max_blocks_per_host, grace_s=cfg.ipam.release_grace)


@dataclass(frozen=True)
class NodeStart:
    """What a node on a claiming datastore starts from (see the module doc). ``blocks``: the
    tunnel block first, then the others in address order; ``static``: the node config's
    podCIDRs; ``snapshot``: the datastore after the claims (the agent watches from its revision)."""
    snapshot: Snapshot
    blocks: tuple[IPv4Network, ...]
    pools: tuple[ConfigPool, ...]
    node: Node
    static: tuple[IPv4Network, ...] = ()

    @property
    def tunnel_address(self) -> IPv4Address:
        return self.blocks[0].network_address

    def config(self, cfg: NodeConfig) -> NodeConfig:
        """``cfg`` with the claimed blocks as ``podCIDRs``, the datastore's pools as ``ipPools``
        and, when the config leaves it to the Node, the node IP the start read from it: what
        the agent's encapsulation, IPAM and speaker are built from."""
        return replace(cfg.with_node_ip(self.node.address), pod_cidrs=self.blocks, ip_pools=self.pools)


def _previous_tunnel(previous: Node | None) -> IPv4Address | None:
    if previous is None:
        return None
    return previous.ipip_tunnel_address or previous.vxlan_tunnel_address


def order_blocks(mine: tuple[IPv4Network, ...], tunnel: IPv4Address | None) -> tuple[IPv4Network, ...]:
    """``mine`` with the block holding ``tunnel`` first (else as given: address order)."""
    first = next((b for b in mine if tunnel is not None and tunnel in b), mine[0])
    return (first, *(b for b in mine if b != first))


def registration(cfg: NodeConfig, previous: Node | None, tunnel: IPv4Address,
                 pools: tuple[ConfigPool, ...]) -> Node:
    """The Node this node registers (see the module doc)."""
    mine = previous if previous is not None and previous.address == cfg.node_ip else None
    ipip = any(p.ipip_mode != "Never" for p in pools)
    vxlan = any(p.vxlan_mode != "Never" for p in pools)
    return Node(cfg.node_name, cfg.node_ip, cfg.asn,
                cfg.rr_cluster_id if cfg.rr_cluster_id is not None else (mine.rr_cluster_id if mine else None),
                cfg.labels or (mine.labels if mine else ()),
                tunnel if ipip else None, tunnel if vxlan else None)


def _static_inside_pools(cfg: NodeConfig, pools: tuple[IPPool, ...]) -> None:
    for i, cidr in enumerate(cfg.pod_cidrs):
        if not any(cidr.subnet_of(p.cidr) for p in pools):
            raise ConfigError(f"podCIDRs[{i}]", f"{cidr} is not inside any of the datastore's IP pools "
                                                f"({', '.join(str(p.cidr) for p in pools)})", cfg.source)


NO_POOL = "no IP pool: the datastore holds no IPPool and the node config sets no ipPools"


class _Wait(Exception):
    """The node cannot start yet for the reason given; retried."""


def _own_address(cfg: NodeConfig, view: BlockView) -> NodeConfig:
    """``cfg`` with its node IP from its Node in ``view`` when the config leaves it to the Node
    (kubernetes without nodeIP: InternalIP, or the podroute.io/IPv4Address annotation)."""
    stored = view.view.get(f"nodes/{cfg.node_name}")
    if cfg.node_ip_from_node and stored is not None and isinstance(stored.value, Node):
        log.info("node IP taken from the Node object", extra={"kv": {"node": cfg.node_name,
                                                                    "node_ip": stored.value.address}})
        return cfg.with_node_ip(stored.value.address)
    return cfg


def no_node(name: str) -> str:
    return f"no Node object named {name} yet (kubelet registers it; podroute only annotates it)"


def pod_cidr_problem(name: str, raw: Snapshot, screened: Snapshot) -> str:
    """Why node ``name`` has no block on a store whose blocks are the Nodes' ``spec.podCIDR``
    (``raw``: the list as stored; ``screened``: after :func:`screen_snapshot`)."""
    key = f"nodes/{name}"
    if key not in raw.items:
        bad = next((b.reason for b in raw.invalid if b.key == key), None)
        return f"Node {name}: {bad}" if bad else no_node(name)
    blocks = [s for s in raw.items.values() if isinstance(s.value, IPAMBlock) and s.value.affinity == name]
    if not blocks:
        # flannel fails the same way ("pod cidr not assigned") and waits too
        return (f"Node {name} has no spec.podCIDR yet (usePodCIDR: kube-controller-manager "
                "--allocate-node-cidrs assigns it)")
    reasons = [b.reason for b in screened.invalid if b.key == blocks[0].key]
    return f"Node {name}'s spec.podCIDR {blocks[0].value.cidr}: " + ("; ".join(reasons) or "not usable")


async def start_node(cfg: NodeConfig, store: Datastore, *, backoff_s: tuple[float, float] = BACKOFF_S,
                     sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> NodeStart:
    """List ``store``, claim or re-use this node's blocks, and decide the start (module doc).
    On a store that cannot claim (kubernetes with usePodCIDR) the node's one block is its
    Node's ``spec.podCIDR``: it waits, logging why, until the Node has one inside a pool.
    Retries while the store is unavailable or the pools are exhausted (until cancelled).
    Raises ConfigError (``podCIDRs``) when a static block is another node's or outside every pool."""
    affinity = BlockAffinity(store, cfg.node_name, static=cfg.pod_cidrs, pools=model_pools(cfg),
                             policy=policy_of(cfg))
    wait, attempt = backoff_s[0], 0
    while True:
        attempt += 1
        try:
            if not store.supports_claims:  # usePodCIDR: the block is the Node's, nothing to claim
                raw = await store.snapshot()
                snapshot = screen_snapshot(raw)
                affinity.load(snapshot)
                cfg = _own_address(cfg, affinity)
                if affinity.pools() and affinity.mine() and not cfg.node_ip_from_node:
                    break
                why = pod_cidr_problem(cfg.node_name, raw, snapshot) if affinity.pools() else NO_POOL
                raise _Wait(why)
            await affinity.refresh()
            if not store.self_registering and cfg.node_name not in affinity.nodes():
                # kubelet creates the Node; claiming before it exists would leave blocks to no node
                raise _Wait(no_node(cfg.node_name))
            cfg = _own_address(cfg, affinity)
            if not affinity.pools():  # nothing to claim from, and BGP import would refuse every route
                why = NO_POOL
            else:
                _static_inside_pools(cfg, affinity.pools())
                await affinity.ensure()
                snapshot = screen_snapshot(await store.snapshot())
                affinity.load(snapshot)
                if affinity.mine():
                    break
                why = "this node's blocks went away while it started"
        except _Wait as e:
            why = str(e)
        except Unavailable as e:
            why = f"datastore unavailable: {e}"
        except PoolExhausted as e:
            why = e.msg
        except BlockCollision as e:
            raise ConfigError("podCIDRs", str(e), cfg.source) from None
        log.error("node cannot start yet; the node joins once this clears",
                  extra={"kv": {"datastore": store.name, "location": store.location, "attempt": attempt,
                                "retry_in_s": wait, "error": why}})
        await sleep(wait)
        wait = min(wait * 2, backoff_s[1])
    pools = tuple(ConfigPool(p.cidr, p.block_size, p.ipip_mode, p.vxlan_mode) for p in affinity.pools())
    stored = snapshot.items.get(key_of(Node(cfg.node_name, cfg.node_ip)))
    previous = stored.value if stored is not None and isinstance(stored.value, Node) else None
    tunnel = _previous_tunnel(previous) or (cfg.pod_cidrs[0].network_address if cfg.pod_cidrs else None)
    blocks = order_blocks(affinity.mine(), tunnel)
    node = registration(cfg, previous, blocks[0].network_address, pools)
    log.info("node start decided", extra={"kv": {"node": cfg.node_name, "blocks": ",".join(map(str, blocks)),
                                                 "tunnel_address": blocks[0].network_address,
                                                 "revision": snapshot.revision, "attempts": attempt}})
    return NodeStart(snapshot, blocks, pools, node, cfg.pod_cidrs)


async def prepare(cfg: NodeConfig) -> NodeStart:
    """:func:`start_node` on a datastore client of its own (``podroute node run`` calls it in its
    own event loop before the agent's; the agent opens another client in its loop)."""
    store = open_datastore(cfg)
    if store is None or not store.blocks_from_store:
        raise ValueError("prepare() is for a datastore that holds the node's blocks")
    try:
        return await start_node(cfg, store)
    finally:
        await store.close()


class BlocksWiring:
    """The node's blocks at run time (module doc). Build it before local IPAM (whose
    ``on_exhausted`` is :meth:`exhausted`), then :meth:`attach` the sinks, add :meth:`handle`
    to the ClusterWatch's listeners and run :meth:`run` under the TaskGuard."""

    def __init__(self, store: Datastore, start: NodeStart, cfg: NodeConfig, *, interval_s: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.start = start
        self.tunnel_block = start.blocks[0]
        self.blocks: tuple[IPv4Network, ...] = start.blocks
        self.affinity = BlockAffinity(store, cfg.node_name, static=start.static, pools=model_pools(cfg),
                                      on_blocks=self._on_blocks, policy=policy_of(cfg), clock=clock,
                                      may_release=self._may_release)
        self.nodeblocks = NodeBlocks(self.affinity, interval_s=interval_s, claims=store.supports_claims)
        self._routes: RouteSetter | None = None
        self._speaker: Announcer | None = None
        self._kick: Callable[[], None] = lambda: None

    def exhausted(self) -> str:
        """Local IPAM's ``on_exhausted`` (any thread): wakes the claimer; the CNI error's reason."""
        return self.nodeblocks.exhausted()

    def attach(self, *, ipam: Any, routes: RouteSetter, kick: Callable[[], None], speaker: Announcer) -> None:
        """Give the wiring its sinks and load the start's snapshot into the view."""
        self.nodeblocks.ipam = ipam
        self._routes, self._kick, self._speaker = routes, kick, speaker
        self.affinity.load(self.start.snapshot)

    def handle(self, item: Changes | Resync) -> None:
        """A watch item of the datastore (a ClusterWatch listener)."""
        self.affinity.handle(item)

    async def _may_release(self, cidr: IPv4Network) -> bool:
        if cidr == self.tunnel_block:
            return False  # the tunnel address lives there; a new one would break tunnels mid-run
        return await self.nodeblocks.may_release(cidr)

    def _on_blocks(self, mine: tuple[IPv4Network, ...]) -> None:
        if not mine:
            log.error("this node holds no block in the datastore any more; keeping its last blocks "
                      "announced", extra={"kv": {"blocks": ",".join(map(str, self.blocks))}})
            return
        ordered = order_blocks(mine, self.tunnel_block.network_address)
        if self.tunnel_block not in mine:
            log.error("the tunnel block is no longer this node's; tunnels keep its address until restart",
                      extra={"kv": {"block": self.tunnel_block}})
        changed = ordered != self.blocks
        self.blocks = ordered
        if self._routes is None or self._speaker is None:
            return
        self._routes.set_routes("blocks", [Route.blackhole(c) for c in ordered])
        self._speaker.set_announcements(ordered)
        self._kick()
        self.nodeblocks.wake()  # local IPAM follows, off the loop
        if changed:
            log.info("node blocks changed", extra={"kv": {"blocks": ",".join(map(str, ordered))}})

    async def run(self) -> None:
        """Grow, release and reap until cancelled (:meth:`NodeBlocks.run`)."""
        await self.nodeblocks.run()

    def status(self) -> dict[str, Any]:
        """``{"blocks": [{"cidr", "size", "used", "tunnel"}], "tunnel_address", "claim_error",
        "max_blocks_per_host"}``; ``used`` as of NodeBlocks' last round (None before it)."""
        usage = self.nodeblocks.usage
        return {"blocks": [{"cidr": str(b), "size": b.num_addresses, "used": usage.get(b),
                            "tunnel": b == self.tunnel_block} for b in self.blocks],
                "tunnel_address": str(self.tunnel_block.network_address),
                "claim_error": self.nodeblocks.last_error,
                "max_blocks_per_host": self.affinity.policy.max_blocks_per_host}


"""The agent's consumer of datastore events: turns a snapshot and its watch into the cluster
topology (:class:`podroute.datastore.Cluster`) the speaker's sessions and expected next hops
come from (:mod:`podroute.speaker_wiring`).

List, then watch (:class:`podroute.datastore.Datastore`): a :class:`Changes` updates the view
key by key, a :class:`Resync` replaces it. After each, the topology is derived off the event
loop (a 10k-node cluster takes a while; password files are read) and handed to ``on_change``
only when it differs from the last one handed over, so unchanged sessions are not touched.

Bad data keeps the last good state, with an error log line naming the key:
- an :class:`Invalid` value leaves the key's previous value in the view, and so does a value
  that breaks a rule with the others (:mod:`podroute.datastore.screen`: overlapping pools, a
  block outside every pool), which listeners see as Invalid too;
- a view whose topology breaks a rule (two nodes with one address, overlapping blocks, this
  node missing or with another address) is not handed over.

With ``register``, the node first registers itself (:meth:`Datastore.register_node`, under a
lease of ``ttl_s`` the store keeps alive); a registration the store refuses is logged as
rejected data. In a store where nodes register themselves (``self_registering``: etcd):
- the node's own registration is part of its view from the start (it is not in the first
  snapshot of a new node, and the node does not wait for its own write to come back);
- when its registration disappears (its lease lapsed during a long outage, or it was
  deleted), it registers again;
- where someone else owns the node's object (kubernetes: kubelet creates the Node, ``kubectl
  label`` sets its labels, ``kubectl delete node`` removes it), what the agent writes on it
  (address, ASN, route-reflector cluster ID, tunnel addresses) is in its view from the start,
  over the Node's labels, but a Node that is gone is not brought back;
- an invalid value in the first snapshot is logged and skipped (the other nodes' bad data
  must not keep this node from starting), also on kubernetes, where the node does not
  register itself but shares the store just the same; with the file store it stops the start.

When the datastore is unavailable the last state stays in force; it is retried with
exponential backoff (``BACKOFF_S``): a broken watch is listed again once the store answers
(a :class:`Resync` that replaces the view, so what changed meanwhile is applied as a diff),
then watched from that list's revision. :meth:`status` says so.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from ipaddress import IPv4Address
from typing import Any, Callable, Mapping

from podroute.config_datastore import DEFAULT_LEASE_TTL_S
from podroute.datastore import (Changes, Cluster, Conflict, Datastore, Delete, Invalid, InvalidData, Node, Put,
                                Resource, Resync, Snapshot, Unavailable, cluster_from_resources, key_of)
from podroute.datastore.screen import screen, screen_snapshot
from podroute.schema import ConfigError

log = logging.getLogger("podroute.clusterwatch")

BACKOFF_S = (0.5, 30.0)   # first and longest wait between attempts while the datastore is unavailable
LEASE_TTL_S = DEFAULT_LEASE_TTL_S


class ClusterWatch:
    """Consumes ``datastore`` for node ``node_name`` (whose address must be ``node_ip``).
    ``cluster`` is the last good topology (after :meth:`prime`)."""

    def __init__(self, datastore: Datastore, *, node_name: str, node_ip: IPv4Address,
                 on_change: Callable[[Cluster], None], backoff_s: tuple[float, float] = BACKOFF_S,
                 register: Node | None = None, ttl_s: float = LEASE_TTL_S) -> None:
        self.datastore = datastore
        self.register, self.ttl_s, self.registered = register, ttl_s, register is None
        # Others that follow the same watch (e.g. podroute.ipamblocks.BlockView.handle): one
        # stream per agent.
        self.listeners: list[Callable[[Changes | Resync], None]] = []
        self.node_name = node_name
        self.node_ip = node_ip
        self.on_change = on_change
        self.backoff_s = backoff_s
        self.cluster: Cluster | None = None
        self.items: dict[str, Resource] = {}
        self.revision = 0
        self.available = True
        self.last_error: str | None = None
        self.since = time.time()
        self.watch_events = 0   # events taken in (a Resync counts one), since start
        self.errors = 0         # data rejected plus watch attempts that found the store unavailable

    # --- deriving the topology ------------------------------------------------------------
    @property
    def self_registering(self) -> bool:
        return self.register is not None and self.datastore.self_registering

    def derive(self, items: Mapping[str, Resource]) -> Cluster:
        """The topology of ``items`` (blocking). Raises ConfigError naming the key when it
        breaks a rule or does not list this node with its address."""
        if self.register is not None:
            key, stored = key_of(self.register), items.get(key_of(self.register))
            if self.self_registering:
                items = {**items, key: self.register}
            elif self.datastore.blocks_from_store and isinstance(stored, Node):
                # kubelet's Node: what the agent writes on it (address, ASN, RR cluster ID,
                # tunnel addresses) is the agent's from the start, its labels stay the Node's.
                # Not the file store: there the operator's file is the node's whole record
                # (its routeReflectorClusterID included), and the agent writes nothing.
                items = {**items, key: replace(self.register, labels=stored.labels)}
        cluster = cluster_from_resources(items)
        me = cluster.node(self.node_name)
        if me is None:
            raise ConfigError(f"nodes/{self.node_name}", f"this node ({self.node_name}) is not listed")
        if me.ip != self.node_ip:
            raise ConfigError(f"nodes/{self.node_name}",
                              f"{me.name} has ip {me.ip} but this node's nodeIP is {self.node_ip}")
        return cluster

    def prime(self, snapshot: Snapshot) -> Cluster:
        """Take the first snapshot (blocking, at start). Raises ConfigError when it is not
        usable: the agent does not start on a bad datastore."""
        snapshot = screen_snapshot(snapshot)
        try:
            for bad in snapshot.invalid:
                # Only the operator's own file stops the start; in a store every node shares
                # (etcd, kubernetes: blocks_from_store) another node's bad data must not.
                if not self.datastore.blocks_from_store:
                    raise ConfigError(bad.key, bad.reason)
                self._reject(bad.key, bad.reason)
            items = {k: s.value for k, s in snapshot.items.items()}
            self.cluster = self.derive(items)
        except ConfigError as e:
            raise e.with_file(self.datastore.location) from None
        self.items, self.revision = items, snapshot.revision
        return self.cluster

    def _reject(self, key: str, error: str) -> None:
        self.errors += 1
        self.last_error = error
        log.error("datastore data rejected; keeping the last good state", extra={"kv": {"key": key, "error": error}})

    def _own_key_gone(self) -> None:
        if self.self_registering and self.registered:
            log.warning("this node's registration is gone (lease expired or deleted); registering again",
                        extra={"kv": {"node": self.node_name}})
            self.registered = False

    def _apply(self, item: Changes | Resync) -> None:
        own = f"nodes/{self.node_name}"
        self.watch_events += 1 if isinstance(item, Resync) else len(item.events)
        if isinstance(item, Resync):
            if own not in item.snapshot.items:
                self._own_key_gone()
            keep = {b.key: self.items[b.key] for b in item.snapshot.invalid if b.key in self.items}
            self.items = {**{k: s.value for k, s in item.snapshot.items.items()}, **keep}
            for bad in item.snapshot.invalid:
                self._reject(bad.key, bad.reason)
            self.revision = item.snapshot.revision
            return
        for ev in item.events:
            if isinstance(ev, Put):
                self.items[ev.stored.key] = ev.stored.value
            elif isinstance(ev, Delete):
                self.items.pop(ev.key, None)
                if ev.key == own:
                    self._own_key_gone()
            elif isinstance(ev, Invalid):
                self._reject(ev.error.key, ev.error.reason)
        self.revision = item.revision

    async def _update(self) -> bool:
        try:
            cluster = await asyncio.to_thread(self.derive, dict(self.items))
        except ConfigError as e:
            self._reject(e.path, str(e))
            return False
        if cluster == self.cluster:
            return False
        self.cluster = cluster
        log.info("cluster changed", extra={"kv": {"nodes": len(cluster.nodes), "revision": self.revision}})
        self.on_change(cluster)
        return True

    async def handle(self, item: Changes | Resync) -> bool:
        """Apply one watch item, screened (:mod:`podroute.datastore.screen`: a value that breaks
        a rule with the others is rejected like one that does not parse), and hand it to each
        of ``listeners``; True if a new topology was handed to ``on_change``."""
        item = screen(self.items, item)
        self._apply(item)
        for listener in self.listeners:
            listener(item)
        if isinstance(item, Changes) and not any(isinstance(e, (Put, Delete)) for e in item.events):
            return False
        return await self._update()

    # --- the watch loop -------------------------------------------------------------------
    async def run(self) -> None:
        """Watch until cancelled (list first if :meth:`prime` was not called)."""
        wait = self.backoff_s[0]
        while True:
            try:
                if not self.registered:
                    await self._register()
                if self.revision == 0 or not self.available:
                    # After an outage a list is what shows the store is back (a watch with nothing
                    # to report would not) and catches up at once: the view is replaced (Resync).
                    snap = await self.datastore.snapshot()
                    if not self.available:
                        log.info("datastore available again", extra={"kv": {"revision": snap.revision}})
                        self.available, self.since, wait = True, time.time(), self.backoff_s[0]
                    await self.handle(Resync(snap))
                async for item in self.datastore.watch(self.revision):
                    await self.handle(item)
                    if not self.registered:
                        await self._register()
            except Unavailable as e:
                if self.available:
                    log.error("datastore unavailable; keeping the last state",
                              extra={"kv": {"datastore": self.datastore.name, "error": str(e)}})
                    self.available, self.since = False, time.time()
                self.last_error = str(e)
                self.errors += 1
                await asyncio.sleep(wait)
                wait = min(wait * 2, self.backoff_s[1])

    async def _register(self) -> None:
        assert self.register is not None
        try:
            await self.datastore.register_node(self.register, self.ttl_s)
            log.info("node registered", extra={"kv": {"node": self.register.name, "ttl_s": self.ttl_s}})
        except (Conflict, InvalidData) as e:
            # not retried: the data must change first; derive() rejects views without us meanwhile
            self._reject(getattr(e, "key", "?"), str(e))
        self.registered = True

    def status(self) -> dict[str, Any]:
        """``{"datastore", "location", "state", "available", "since", "revision", "nodes",
        "last_error", "watch_events", "errors"}`` for ``podroute status`` and the metrics
        (``state``: "connected" or "unavailable"; ``since``: unix time of the last availability
        change; the counters since start)."""
        return {"datastore": self.datastore.name, "location": self.datastore.location,
                "state": "connected" if self.available else "unavailable",
                "available": self.available, "since": self.since,
                "revision": self.revision, "nodes": len(self.cluster.nodes) if self.cluster else 0,
                "last_error": self.last_error, "watch_events": self.watch_events, "errors": self.errors}

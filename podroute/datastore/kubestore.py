"""The ``kubernetes`` datastore: the seam (:class:`podroute.datastore.api.Datastore`) over
kube-apiserver, through the official ``kubernetes`` client, laid out as Calico's Kubernetes
datastore (KDD) lays it out.

Where things live (:mod:`podroute.kube.codec` has the field mapping):

- Nodes are core/v1 Node objects, registered by kubelet. podroute only annotates them
  (``podroute.io/IPv4Address``, ``ASNumber``, ``RouteReflectorClusterID``, tunnel addresses,
  VTEP MAC), through the ``nodes/status`` subresource as Calico and flannel do.
- IPPool, BGPPeer, BGPConfiguration and IPAMBlock are custom resources of group
  ``podroute.io/v1`` (``configs/crds/``); the agent's verbs are in ``configs/rbac.yaml``.

How the seam maps (also the package docstring of :mod:`podroute.datastore`):

- revision = resourceVersion as an int (an etcd revision; every collection shares the space).
- :meth:`snapshot`: LIST nodes (a consistent read: its resourceVersion R is the snapshot's),
  then every CRD collection at exactly R (``resourceVersionMatch=Exact``): one cut across all
  collections. Paginated (``limit``/``continue``).
- :meth:`watch`: one WATCH per collection from its position, with bookmarks
  (:mod:`podroute.kube.watcher`), merged. One watch event -> one :class:`Changes`, whose
  revision is the highest resourceVersion seen on any collection, so it never goes back; a
  bookmark -> an empty Changes, and so is the API server's accepting the watch of every
  collection (a consumer learns the store answers again before any event). The per-collection positions behind each yielded revision are
  remembered, so a caller that watches again from the last revision it saw resumes every
  collection where it was. A Put whose value did not change (a Node's heartbeat, a label
  podroute does not use) is left out, as flannel re-queues a Node only when its annotations
  change. 410 Gone on any collection -> LIST again -> :class:`Resync`.
- :meth:`register_node`: GET the Node, then a merge patch of podroute's annotations on
  ``nodes/<name>/status`` carrying the resourceVersion read (a 409 is retried from a fresh
  read). There is no lease: a Node is removed by Kubernetes' node lifecycle (its controller, or
  ``kubectl delete node``), which watchers see as a Delete, so ``ttl_s`` is unused. A missing
  Node is InvalidData: podroute does not create Nodes (kubelet does; the agent's role has no
  ``create nodes``). The address annotation is overwritten, as calico-node overwrites its
  own: without a lease, an earlier run of this agent (before its address changed) cannot be
  told from another live agent, and the Node is this machine's (kubelet's) object. Two Nodes
  with one address are refused where the topology is derived
  (:func:`podroute.datastore.cluster.cluster_from_resources`), naming the key.
- :meth:`claim_block`: POST the IPAMBlock; 409 AlreadyExists -> GET -> Conflict naming the
  holder (or the existing block when it is already ours). :meth:`release_block`: DELETE with
  ``preconditions.resourceVersion`` (409 or 404 -> Conflict).
- ``use_pod_cidr`` (Calico's and flannel's ``usePodCIDR``): a Node's ``spec.podCIDR`` is its
  block, surfaced through the seam as a confirmed :class:`IPAMBlock` affine to the node at
  the Node's key revision (``ipamblocks/<cidr>``, the key a claimed block has), put and
  deleted with the Node; the IPAMBlock collection is not read and claims are Unsupported.

Errors (:mod:`podroute.kube.rest`): 5xx, 429 and connection failures -> Unavailable; 401/403
-> :class:`Forbidden` (an Unavailable) naming the verb and resource; an invalid object ->
InvalidData naming it. Every blocking call runs off the event loop.

(A little over 400 lines: the administrative writes at the end share the Protocol's read-
then-write helpers; the wire details live in :mod:`podroute.kube`.)
"""
from __future__ import annotations

import asyncio
import collections
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from podroute.datastore.api import (Changes, Conflict, Delete, Event, Invalid, InvalidData, Put,
                                    Resync, Snapshot, Unavailable, Unsupported, WatchItem)
from podroute.datastore.model import IPAMBlock, Node, Resource, Stored, block_key, cidr_name, key_of
from podroute.kube import codec
from podroute.kube.codec import ADDRESS, IPAMBLOCKS, KINDS, NODES, Kind
from podroute.kube.rest import MERGE_PATCH, Forbidden, Rest, map_error
from podroute.kube.watcher import Inbox, Item, Watcher

__all__ = ["Forbidden", "KubeDatastore"]

PAGE = 500                  # objects per LIST page
CONFLICT_RETRIES = 10       # fresh reads after a 409 on a compare-on-resourceVersion write
SNAPSHOT_ATTEMPTS = 3       # consistent LISTs tried when the cut expires (410) in between
QUEUE_MAX = 256             # watch items buffered between the threads and the consumer
REMEMBERED = 64             # yielded revisions whose per-collection positions are kept
ANNOUNCE_AFTER_S = 1.0      # quiet this long after every watch was accepted: the watch is up


class _Expired(Exception):
    pass


class KubeDatastore:
    """The Datastore Protocol on kube-apiserver. ``kubeconfig`` None means the in-cluster
    service account. ``node_name``: the node this client acts for; when set,
    :meth:`register_node` refuses to annotate any other Node (an agent writes only its own, as
    kubelet's NodeRestriction admission would have it). ``timeout_s`` bounds each call (connect
    and read); watches use their own longer read timeout. The constructor does no I/O."""

    name = "kubernetes"
    blocks_from_store = True    # claimed IPAMBlocks, or the Node's spec.podCIDR

    def __init__(self, kubeconfig: Path | None, *, node_name: str | None = None, use_pod_cidr: bool = False,
                 timeout_s: float = 5.0) -> None:
        self.rest = Rest(kubeconfig, timeout_s)
        self.node_name = node_name
        self.use_pod_cidr = use_pod_cidr
        self.supports_claims = not use_pod_cidr
        self.self_registering = False   # kubelet owns Node objects; podroute only annotates them
        self.kinds: tuple[Kind, ...] = tuple(k for k in KINDS if not (use_pod_cidr and k is IPAMBLOCKS))
        self._positions: collections.OrderedDict[int, dict[str, int]] = collections.OrderedDict()
        self._last: Snapshot | None = None
        self._watchers: set[Watcher] = set()

    @property
    def location(self) -> str:
        return self.rest.host

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    def _call(self, verb: str, kind: Kind, key: str, method: str, path: str, subresource: str = "", *,
              absent: tuple[int, ...] = (), **kw: Any) -> dict[str, Any] | None:
        """One REST call with the seam's errors (:func:`map_error`); None when the API server
        answered one of the HTTP statuses in ``absent`` (404 gone, 409 changed) that the caller
        handles itself."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self.rest.call(method, path, **kw)
        except ApiException as e:
            if e.status in absent:
                return None
            raise map_error(e, verb, kind, key, subresource) from None
        except Exception as e:  # noqa: BLE001 - mapped onto the seam's errors, or re-raised
            raise map_error(e, verb, kind, key, subresource) from None

    # --- snapshot ---------------------------------------------------------------------------------
    def _list(self, kind: Kind, rv: int | None) -> tuple[int, list[dict[str, Any]]]:
        from kubernetes.client.exceptions import ApiException

        query: dict[str, Any] = {"limit": PAGE}
        if rv is not None:
            query.update(resourceVersion=str(rv), resourceVersionMatch="Exact")
        items: list[dict[str, Any]] = []
        while True:
            try:
                body = self.rest.call("GET", kind.path, query=query)
            except ApiException as e:
                if e.status == 410:
                    raise _Expired() from None
                raise map_error(e, "list", kind, kind.plural) from None
            except Exception as e:  # noqa: BLE001
                raise map_error(e, "list", kind, kind.plural) from None
            items.extend(body.get("items") or ())
            meta = body.get("metadata") or {}
            if not meta.get("continue"):
                try:
                    return int(meta["resourceVersion"]), items
                except (KeyError, ValueError, TypeError):
                    raise Unavailable(f"kube-apiserver {self.location}: list {kind.plural} has no numeric "
                                      "resourceVersion (podroute needs an etcd-backed API server)") from None
            query = {"limit": PAGE, "continue": meta["continue"]}

    def _snapshot(self) -> Snapshot:
        for _ in range(SNAPSHOT_ATTEMPTS):
            try:
                rv, nodes = self._list(NODES, None)
                lists = [(NODES, nodes)] + [(k, self._list(k, rv)[1]) for k in self.kinds if k is not NODES]
            except _Expired:
                continue
            items: dict[str, Stored] = {}
            invalid: list[InvalidData] = []
            for kind, objs in lists:
                for obj in objs:
                    orv = codec.resource_version(obj)
                    for key, value in codec.decode(kind, obj, self.use_pod_cidr):
                        if isinstance(value, InvalidData):
                            invalid.append(value)
                        elif value is not None:
                            items[key] = Stored(key, value, orv)
            return Snapshot(rv, items, tuple(invalid))
        raise Unavailable(f"kube-apiserver {self.location}: no consistent list after {SNAPSHOT_ATTEMPTS} attempts "
                          "(410 Gone each time)")

    async def snapshot(self) -> Snapshot:
        snap = await self._run(self._snapshot)
        self._last = snap
        self._remember(snap.revision, {k.plural: snap.revision for k in self.kinds})
        return snap

    def _remember(self, revision: int, positions: dict[str, int]) -> None:
        self._positions[revision] = dict(positions)
        self._positions.move_to_end(revision)
        while len(self._positions) > REMEMBERED:
            self._positions.popitem(last=False)

    # --- watch ------------------------------------------------------------------------------------
    async def watch(self, revision: int) -> AsyncIterator[WatchItem]:
        await self._run(self.rest.connect)
        inbox = Inbox(QUEUE_MAX)
        positions = dict(self._positions.get(revision) or {k.plural: revision for k in self.kinds})
        last: dict[str, Resource] = {}
        if self._last is not None and self._last.revision == revision:
            last = {k: s.value for k, s in self._last.items.items()}
        current, generation = revision, 0
        watchers: list[Watcher] = []
        started: set[str] = set()
        announce = announced = False    # every collection is watched: say so unless an item comes first

        def start() -> None:
            started.clear()
            watchers[:] = [Watcher(self.rest, k, positions[k.plural], generation, inbox, self.use_pod_cidr)
                           for k in self.kinds]
            for w in watchers:
                self._watchers.add(w)
                w.start()

        def halt() -> None:
            for w in watchers:
                w.halt()
                self._watchers.discard(w)

        start()
        try:
            while True:
                item = await inbox.get(ANNOUNCE_AFTER_S if announce else None)
                if item is None:
                    announce, announced = False, True
                    yield Changes(current)
                    continue
                announce = False
                if item.generation != generation:
                    continue          # from threads halted by a resync
                if item.what == "error":
                    assert item.error is not None
                    raise item.error
                if item.what == "started":
                    # An empty Changes once every collection is watched tells the consumer the
                    # store answers before any event comes (a quiet cluster sends none for a
                    # minute). Held back briefly: a watch from too old a revision is accepted
                    # and then answered with a 410 ERROR event, which must come first.
                    started.add(item.kind.plural)
                    announce = not announced and generation == 0 and started == {k.plural for k in self.kinds}
                    # (Events already due from the start revision come with the first bytes of
                    # their stream, well inside ANNOUNCE_AFTER_S, so they still come first.)
                    continue
                if item.what == "expired":
                    halt()
                    snap = await self.snapshot()
                    generation += 1
                    current = snap.revision
                    positions = {k.plural: current for k in self.kinds}
                    last = {k: s.value for k, s in snap.items.items()}
                    start()
                    yield Resync(snap)
                    continue
                positions[item.kind.plural] = max(positions[item.kind.plural], item.rv)
                current = max(current, item.rv)
                events = self._events(item, last)
                self._remember(current, positions)
                yield Changes(current, events)
        finally:
            halt()

    @staticmethod
    def _events(item: Item, last: dict[str, Resource]) -> tuple[Event, ...]:
        out: list[Event] = []
        for key in item.deletes:
            last.pop(key, None)
            out.append(Delete(key, item.rv))
        for key, value in item.puts:
            if isinstance(value, InvalidData):
                last.pop(key, None)
                out.append(Invalid(value, item.rv))
            elif value is not None:
                # a block's revision matters (release compares on it); others only by value
                if item.kind is not IPAMBLOCKS and last.get(key) == value:
                    continue
                last[key] = value
                out.append(Put(Stored(key, value, item.rv)))
        return tuple(out)

    # --- node registration ------------------------------------------------------------------------
    def _register(self, node: Node) -> Stored:
        key = key_of(node)
        if self.node_name is not None and node.name != self.node_name:
            raise InvalidData(key, f"this agent acts for node {self.node_name} and annotates only its own Node")
        path = f"{NODES.path}/{node.name}"
        for _ in range(CONFLICT_RETRIES):
            obj = self._call("get", NODES, key, "GET", path, absent=(404,))
            if obj is None:
                raise InvalidData(key, f"no Node object named {node.name}: kubelet registers Nodes "
                                       "and podroute only annotates them")
            patch = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"],
                                  "annotations": {**codec.node_annotations(node), ADDRESS: str(node.address)}}}
            new = self._call("patch", NODES, key, "PATCH", f"{path}/status", "status", absent=(409,), body=patch,
                             content_type=MERGE_PATCH)
            if new is None:
                continue              # changed since the read: read again
            return self._stored(NODES, new, key)
        raise Conflict(key, f"changed under us on each of {CONFLICT_RETRIES} attempts")

    def _stored(self, kind: Kind, obj: dict[str, Any], key: str) -> Stored:
        for k, value in codec.decode(kind, obj, self.use_pod_cidr):
            if k == key:
                if isinstance(value, InvalidData):
                    raise value
                if value is not None:
                    return Stored(key, value, codec.resource_version(obj))
        raise InvalidData(key, "not readable as podroute's model")

    async def register_node(self, node: Node, ttl_s: float) -> Stored:
        return await self._run(self._register, node)

    # --- IPAM blocks --------------------------------------------------------------------------------
    def _unsupported(self) -> None:
        if not self.supports_claims:
            raise Unsupported("the kubernetes datastore with usePodCIDR cannot claim or release blocks: "
                              "each node's block is its Node's spec.podCIDR")

    def _claim(self, block: IPAMBlock) -> Stored:
        self._unsupported()
        key = block_key(block.cidr)
        kind, name, body = codec.custom_object(block)
        for _ in range(CONFLICT_RETRIES):
            try:
                return self._stored(kind, self.rest.call("POST", kind.path, body=body), key)
            except Exception as e:  # noqa: BLE001
                err = map_error(e, "create", kind, key)
                if not isinstance(err, Conflict):
                    raise err from None
            current = self._get(kind, name, key)
            if current is None:
                continue              # released between our create and our read: try again
            holder = current.value.affinity if isinstance(current.value, IPAMBlock) else None
            if holder is not None and holder == block.affinity:
                return current
            raise Conflict(key, f"already held by {holder or 'nobody'}", holder)
        raise Conflict(key, f"claimed and released under us on each of {CONFLICT_RETRIES} attempts")

    def _get(self, kind: Kind, name: str, key: str) -> Stored | None:
        obj = self._call("get", kind, key, "GET", f"{kind.path}/{name}", absent=(404,))
        return None if obj is None else self._stored(kind, obj, key)

    def _release(self, cidr: IPv4Network, revision: int) -> None:
        self._unsupported()
        key, name = block_key(cidr), cidr_name(cidr)
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"resourceVersion": str(revision)}}
        if self._call("delete", IPAMBLOCKS, key, "DELETE", f"{IPAMBLOCKS.path}/{name}", absent=(404, 409),
                      body=body) is not None:
            return
        current = self._get(IPAMBLOCKS, name, key)
        holder = current.value.affinity if current is not None and isinstance(current.value, IPAMBlock) else None
        raise Conflict(key, f"changed or released since revision {revision}", holder)

    async def claim_block(self, block: IPAMBlock) -> Stored:
        return await self._run(self._claim, block)

    async def release_block(self, cidr: IPv4Network, revision: int) -> None:
        await self._run(self._release, cidr, revision)

    async def close(self) -> None:
        """Stop this client's watch threads and its connection pool (no lease to let go)."""
        for w in list(self._watchers):
            w.halt()
        self._watchers.clear()
        await self._run(self.rest.close)

    # --- administrative writes (the lab, the CLI, tests); not part of the Protocol -----------------
    def _put_node(self, node: Node) -> Stored:
        key, path = key_of(node), f"{NODES.path}/{node.name}"
        ann = {**codec.node_annotations(node), ADDRESS: None}
        addresses = [{"type": "InternalIP", "address": str(node.address)}]
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": node.name, "labels": dict(node.labels),
                             "annotations": {k: v for k, v in ann.items() if v is not None}},
                "status": {"addresses": addresses}}
        try:
            return self._stored(NODES, self.rest.call("POST", NODES.path, body=body), key)
        except Exception as e:  # noqa: BLE001
            if not isinstance(err := map_error(e, "create", NODES, key), Conflict):
                raise err from None
        # It exists: labels, annotations and addresses in one status patch (metadata changes are
        # kept on nodes/status, which is how Calico writes its annotations).
        old = self._call("get", NODES, key, "GET", path)
        old_labels = (old.get("metadata") or {}).get("labels") or {}
        want = {**{k: None for k in old_labels}, **dict(node.labels)}
        patch = {"metadata": {"labels": want, "annotations": ann}, "status": {"addresses": addresses}}
        new = self._call("patch", NODES, key, "PATCH", f"{path}/status", "status", body=patch,
                         content_type=MERGE_PATCH)
        return self._stored(NODES, new, key)

    def _put(self, resource: Resource) -> Stored:
        if isinstance(resource, Node):
            return self._put_node(resource)
        key = key_of(resource)
        kind, name, body = codec.custom_object(resource)
        try:
            return self._stored(kind, self.rest.call("POST", kind.path, body=body), key)
        except Exception as e:  # noqa: BLE001
            if not isinstance(err := map_error(e, "create", kind, key), Conflict):
                raise err from None
        for _ in range(CONFLICT_RETRIES):
            old = self._call("get", kind, key, "GET", f"{kind.path}/{name}")
            _, _, body = codec.custom_object(resource, codec.resource_version(old))
            try:
                return self._stored(kind, self.rest.call("PUT", f"{kind.path}/{name}", body=body), key)
            except Exception as e:  # noqa: BLE001
                if not isinstance(err := map_error(e, "update", kind, key), Conflict):
                    raise err from None
        raise Conflict(key, f"changed under us on each of {CONFLICT_RETRIES} attempts")

    async def put_resource(self, resource: Resource) -> Stored:
        """Create or replace ``resource`` (a Node: created as kubelet would, with its address as
        the InternalIP; an existing Node gets its labels, annotations and address replaced)."""
        return await self._run(self._put, resource)

    def _delete(self, key: str) -> bool:
        kind, name = codec.split_key(key)
        return self._call("delete", kind, key, "DELETE", f"{kind.path}/{name}", absent=(404,)) is not None

    async def delete_resource(self, key: str) -> bool:
        """Delete the object at ``key`` (``nodes/n3``, ``bgppeers/tor``); False if it was gone."""
        return await self._run(self._delete, key)

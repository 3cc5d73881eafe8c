"""The cluster datastore seam: one model, one Protocol, several stores.

- :mod:`.model`: Calico's resources as frozen dataclasses (Node, BGPConfiguration, BGPPeer,
  IPPool, IPAMBlock) and their keys.
- :mod:`.api`: the :class:`Datastore` Protocol, its events (:class:`Snapshot`, then
  :class:`Changes` of Put/Delete/Invalid and :class:`Resync`) and errors (Unavailable,
  Conflict, InvalidData, Unsupported).
- :mod:`.filestore`: the ``file`` store (the cluster file, :mod:`.cluster`), the default;
  :mod:`.etcdstore`: the ``etcd`` store (values in :mod:`.codec`'s JSON; imported on its own,
  it pulls in aetcd); :mod:`.fake`: an in-memory store with fault injection for tests.
- :mod:`.screen`: the cross-resource rules the consumers apply to any store's stream
  (overlapping pools, blocks outside every pool); :mod:`.apply`: ``podroute datastore apply``.
- :mod:`.cluster`: the cluster file format and the BGP topology a set of resources implies
  (:func:`peers_for`, :func:`expected_next_hops`).

How the seam maps onto etcd v3 (keys ``<prefix><key>``, prefix ``/podroute/``):

- revision: the etcd store revision; ``Stored.revision`` is the key's ModRevision.
- ``snapshot()``: a prefix Range; ``Snapshot.revision`` = the response header's revision.
- ``watch(rev)``: a prefix Watch with ``start_revision = rev + 1``; the events that arrived
  together (at least one WatchResponse; a revision is never split) -> one Changes. ``ErrCompacted`` (compact_revision set) -> a fresh Range -> :class:`Resync`.
  A broken stream or no leader -> :class:`Unavailable` (caller re-watches from its revision).
- ``register_node``: LeaseGrant(TTL) + Put(nodes/<name>, lease) and a keep-alive task; lease
  expiry deletes the key, which watchers see as Delete.
- ``claim_block``: Txn ``If(Version(ipamblocks/<cidr>) == 0) Then Put`` (flannel, Calico);
  the compare failing -> Range the key -> :class:`Conflict` naming the holder.
- ``release_block``: Txn ``If(ModRevision(key) == rev) Then Delete``; else Conflict.
- a value that does not decode -> :class:`Invalid` (in a snapshot: ``Snapshot.invalid``).

And onto Kubernetes (CRDs as Calico's KDD; Nodes' annotations for Node):

- revision: resourceVersion as an int (an etcd revision, shared by every collection); the
  nodes LIST's resourceVersion is ``Snapshot.revision`` and the CRD collections are listed at
  exactly it (``resourceVersionMatch=Exact``), one cut across all of them.
- ``watch(rev)``: one WATCH per collection ``?resourceVersion=rev&allowWatchBookmarks=true``,
  merged; a Changes' revision is the highest seen on any collection (it never goes back) and
  the store remembers each collection's position behind it for a re-watch. Bookmarks only
  advance the revision (an empty Changes); 410 Gone -> re-LIST -> :class:`Resync`.
- ``register_node``: GET, then a merge patch of podroute's annotations on ``nodes/<n>/status``
  (a 409 retried from a fresh read); no lease: the node lifecycle controller (or ``kubectl
  delete node``) deletes Nodes, so ``ttl_s`` is unused. podroute never creates Nodes.
- ``claim_block``: POST the IPAMBlock (create fails if it exists: 409 AlreadyExists ->
  Conflict). ``release_block``: DELETE with ``preconditions.resourceVersion`` (409 -> Conflict).
  With ``usePodCIDR`` a Node's ``spec.podCIDR`` is its block (a confirmed IPAMBlock put and
  deleted with the Node) and claims are Unsupported.
- HTTP 5xx / 429 / connection errors -> Unavailable (403 -> ``kubestore.Forbidden``, an
  Unavailable naming the verb); a write the schema rejects -> InvalidData; a stored object
  podroute cannot read -> Invalid. See :mod:`.kubestore`.
"""
from podroute.datastore.api import (Changes, Conflict, Datastore, DatastoreError, Delete, Invalid, InvalidData, Put,
                                    Resync, Snapshot, Unavailable, Unsupported, WatchItem)
from podroute.datastore.cluster import (MAX_CLUSTER_BYTES, Cluster, ClusterNode, PeerSpec, cluster_from_resources,
                                        expected_next_hops, file_resources, load_cluster, parse_cluster, peers_for)
from podroute.datastore.model import (BGPConfiguration, BGPPeer, IPAMBlock, IPPool, Node, Resource, Stored,
                                      block_key, key_of)

__all__ = [
    "BGPConfiguration", "BGPPeer", "Changes", "Cluster", "ClusterNode", "Conflict", "Datastore", "DatastoreError",
    "Delete", "IPAMBlock", "IPPool", "Invalid", "InvalidData", "MAX_CLUSTER_BYTES", "Node", "PeerSpec", "Put",
    "Resource", "Resync", "Snapshot", "Stored", "Unavailable", "Unsupported", "WatchItem", "block_key",
    "cluster_from_resources", "expected_next_hops", "file_resources", "key_of", "load_cluster", "parse_cluster",
    "peers_for",
]

"""The datastore a node config names (``datastore:`` in :mod:`podroute.config`).

- ``type: file`` (the default): the cluster file (:class:`FileDatastore` over ``clusterFile``),
  or no datastore at all when ``clusterFile`` is not set (a node with static blocks and peers
  only); the agent then derives no cluster topology.
- ``type: etcd``: :class:`podroute.datastore.etcdstore.EtcdDatastore` over ``datastore.etcd``'s
  endpoints and prefix. It is imported only here, so a node on the file datastore never loads
  the etcd client.

Nothing here does I/O: the stores connect on first use (the file store on :meth:`FileDatastore.load`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from podroute.datastore.api import Datastore, Unsupported
from podroute.datastore.filestore import FileDatastore

if TYPE_CHECKING:
    from podroute.config import NodeConfig


def open_datastore(cfg: "NodeConfig") -> Datastore | None:
    """The datastore of ``cfg``, or None (file type without ``clusterFile``). Raises
    :class:`Unsupported` for a type this build cannot open (the config refuses unknown types
    first; this guards configs built in code)."""
    ds = cfg.datastore
    if ds.type == "file":
        return FileDatastore(cfg.cluster_file) if cfg.cluster_file is not None else None
    if ds.type == "etcd":
        from podroute.datastore.etcdstore import EtcdDatastore  # the etcd client loads only for etcd
        return EtcdDatastore(ds.etcd.endpoints, prefix=ds.etcd.prefix)
    raise Unsupported(f"datastore type {ds.type!r} is not supported")

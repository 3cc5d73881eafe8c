"""The file datastore: the cluster file that says which nodes exist and the BGP topology.

:class:`ClusterWatch` polls the file's (mtime, size) every ``poll_s`` seconds; a change is
loaded off the event loop (a 10k-node file takes seconds to parse) and handed to ``on_change``
(kube-router style: apply the change at once; an invalid file is logged and the last good one
kept). A datastore watch can replace this class behind the same seam: ``run()`` and the
callback.
"""
from __future__ import annotations

import asyncio
import logging
from ipaddress import IPv4Address
from pathlib import Path
from typing import Callable

from podroute.datastore import Cluster, load_cluster
from podroute.schema import ConfigError

log = logging.getLogger("podroute.clusterwatch")

POLL_S = 0.5
Stamp = tuple[float, int]  # (st_mtime, st_size)


def _stamp(path: Path) -> Stamp | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime, st.st_size)


class ClusterWatch:
    """Watches ``path`` for node ``node_name`` (whose IP must be ``node_ip``). ``cluster`` is the
    last good file (after :meth:`load`)."""

    def __init__(self, path: Path, *, node_name: str, node_ip: IPv4Address,
                 on_change: Callable[[Cluster], None], poll_s: float = POLL_S) -> None:
        self.path = path
        self.node_name = node_name
        self.node_ip = node_ip
        self.on_change = on_change
        self.poll_s = poll_s
        self.cluster: Cluster | None = None
        self._stamp: Stamp | None = None

    def read(self) -> Cluster:
        """Read and check the file (blocking). Raises ConfigError naming the file when it is
        invalid, does not list this node, or gives it another IP."""
        stamp = _stamp(self.path)
        cluster = load_cluster(self.path)
        me = cluster.node(self.node_name)
        if me is None:
            raise ConfigError("nodes", f"this node ({self.node_name}) is not listed", str(self.path))
        if me.ip != self.node_ip:
            raise ConfigError("nodes", f"{me.name} has ip {me.ip} but this node's nodeIP is {self.node_ip}",
                              str(self.path))
        self._stamp = stamp
        return cluster

    def load(self) -> Cluster:
        """The first read, at start (blocking; raises like :meth:`read`)."""
        self.cluster = self.read()
        return self.cluster

    async def poll_once(self) -> bool:
        """One poll: True if a changed, valid file was handed to ``on_change``."""
        stamp = _stamp(self.path)
        if stamp is None or stamp == self._stamp:
            return False
        try:
            cluster = await asyncio.to_thread(self.read)
        except ConfigError as e:
            self._stamp = stamp  # not again until the file changes
            log.error("cluster file rejected; keeping the previous one", extra={"kv": {"error": str(e)}})
            return False
        self.cluster = cluster
        self.on_change(cluster)
        return True

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            await asyncio.sleep(self.poll_s)
            await self.poll_once()

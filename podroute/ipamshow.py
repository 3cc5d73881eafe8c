"""``podroute ipam show``: pools, blocks, their nodes and utilisation (like
``calicoctl ipam show --show-blocks``), from the datastore plus this node's local allocations.

The datastore is the node config's: the cluster file when ``clusterFile`` is set, else the
node config alone (its ``podCIDRs`` as this node's blocks, its ``ipPools``). Addresses in use
are known for this node's blocks only (read from its local IPAM state, :mod:`cni.ipam`);
other nodes' blocks show ``-``. Pools come from the datastore, or the node config's
``ipPools`` when the datastore has none.

With ``datastore.type: etcd``, or the etcd named on the command line (``--endpoints``,
``--prefix``: :func:`etcd_snapshot`; the node config is then optional), the datastore is etcd:
one list on a client of its own, closed after it (:class:`podroute.datastore.Unavailable` when
etcd cannot be reached).
"""
from __future__ import annotations

import asyncio
from ipaddress import IPv4Network
from typing import Any, Sequence

from cni.ipam import IPAM
from podroute.config import NodeConfig
from podroute.datastore import Datastore, IPAMBlock, IPPool, Snapshot
from podroute.datastore.filestore import FileDatastore
from podroute.datastore.memory import MemoryStore
from podroute.datastore.model import cidr_name
from podroute.datastore.open import open_datastore
from podroute.ipamblocks import BlockView


async def _list(store: Datastore) -> Snapshot:
    try:
        return await store.snapshot()
    finally:
        await store.close()


def _snapshot(cfg: NodeConfig) -> Snapshot:
    if cfg.datastore.from_datastore:
        store = open_datastore(cfg)
        assert store is not None
        return asyncio.run(_list(store))
    if cfg.cluster_file is not None:
        return FileDatastore(cfg.cluster_file).load()
    store = MemoryStore()
    store.commit(puts=[IPAMBlock(c, cfg.node_name) for c in cfg.pod_cidrs])
    return store.snapshot()


def etcd_snapshot(endpoints: Sequence[str], prefix: str) -> Snapshot:
    """One list of the etcd datastore (blocking: runs its own event loop). Raises Unavailable,
    ValueError for a bad endpoint or prefix."""
    from podroute.datastore.etcdstore import EtcdDatastore
    return asyncio.run(_list(EtcdDatastore(endpoints, prefix=prefix)))


def local_usage(cfg: NodeConfig, blocks: tuple[IPv4Network, ...]) -> dict[IPv4Network, int] | None:
    """Addresses allocated to pods per block of this node, or None without local IPAM state."""
    state = cfg.paths.state_dir / "ipam"
    if not blocks or not state.is_dir():
        return None
    used = {b: 0 for b in blocks}
    for a in IPAM(state, blocks=blocks).allocations().values():
        for b in blocks:
            if a.ip in b:
                used[b] += 1
    return used


def local_allocations(cfg: NodeConfig, blocks: tuple[IPv4Network, ...]) -> list[dict[str, Any]] | None:
    """This node's pod addresses in ``blocks``, sorted by address: ``{"ip", "pod_namespace",
    "pod_name", "container_id", "ifname", "network"}`` as the CNI ADD recorded them (the pod
    names from CNI_ARGS ``K8S_POD_NAMESPACE``/``K8S_POD_NAME``, None when the runtime sent
    none), or None without local IPAM state."""
    state = cfg.paths.state_dir / "ipam"
    if not blocks or not state.is_dir():
        return None
    rows = []
    for a in IPAM(state, blocks=blocks).allocations().values():
        if any(a.ip in b for b in blocks):
            rows.append({"ip": str(a.ip), **{k: a.attrs.get(k) for k in
                                             ("pod_namespace", "pod_name", "container_id", "ifname", "network")}})
    return sorted(rows, key=lambda r: IPv4Network(r["ip"]))


def collect(cfg: NodeConfig | None, snapshot: Snapshot | None = None) -> dict[str, Any]:
    """``{"pools": [...], "blocks": [...], "allocations": [...] | None}``: each pool's CIDR,
    block size, state, size and in-use (None when unknown); each block's CIDR, node, state,
    size and in-use; this node's allocations (:func:`local_allocations`). ``snapshot``: the
    datastore's list (default: the node config's datastore); without ``cfg`` nothing is known
    of local usage."""
    pools = () if cfg is None else tuple(IPPool(cidr_name(p.cidr), p.cidr, p.block_size, p.ipip_mode, p.vxlan_mode)
                                         for p in cfg.ip_pools)
    view = BlockView(cfg.node_name if cfg is not None else "", pools=pools)
    assert cfg is not None or snapshot is not None
    view.load(snapshot if snapshot is not None else _snapshot(cfg))
    rows = view.rows(local_usage(cfg, view.mine()) if cfg is not None else None)
    out_pools = []
    for p in view.pools():
        inside = [r for r in rows if r.cidr.subnet_of(p.cidr)]
        known = [r.used for r in inside if r.used is not None]
        out_pools.append({"cidr": str(p.cidr), "blockSize": p.block_size, "disabled": p.disabled,
                          "size": p.cidr.num_addresses, "blocks": len(inside), "used": sum(known) if known else None})
    return {"pools": out_pools,
            "blocks": [{"cidr": str(r.cidr), "node": r.node, "state": r.state, "size": r.size, "used": r.used}
                       for r in rows],
            "allocations": local_allocations(cfg, view.mine()) if cfg is not None else None}


def _pct(used: int | None, size: int) -> str:
    return "-" if used is None else f"{used} ({100 * used // size}%)"


def render(data: dict[str, Any], allocations: bool = False) -> str:
    """The table: one line per pool, then one per block; with ``allocations``, then one per
    address of this node (its pod as ``namespace/name``, ``-`` when the runtime gave none)."""
    lines = [f"{'GROUPING':9} {'CIDR':20} {'NODE':16} {'IPS TOTAL':>10} {'IPS IN USE':>12} {'STATE':10}"]
    for p in data["pools"]:
        state = "disabled" if p["disabled"] else f"/{p['blockSize']} blocks"
        lines.append(f"{'IP Pool':9} {p['cidr']:20} {'':16} {p['size']:>10} {_pct(p['used'], p['size']):>12} {state:10}")
    for b in data["blocks"]:
        lines.append(f"{'Block':9} {b['cidr']:20} {b['node'] or '-':16} {b['size']:>10} "
                     f"{_pct(b['used'], b['size']):>12} {b['state']:10}")
    if allocations:
        allocs = data.get("allocations")
        lines.append("")
        if allocs is None:
            lines.append("no local IPAM state on this node")
        else:
            lines.append(f"{'IP':16} {'POD':40} {'CONTAINER':14} {'IFNAME':8}")
            for a in allocs:
                pod = f"{a['pod_namespace']}/{a['pod_name']}" if a["pod_name"] else "-"
                lines.append(f"{a['ip']:16} {pod:40} {(a['container_id'] or '-')[:12]:14} {a['ifname'] or '-':8}")
    return "\n".join(lines)

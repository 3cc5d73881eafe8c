"""``podroute datastore apply --file F.yaml``: put resources into the etcd datastore (the
administrator's writes, as ``calicoctl apply`` does for Calico).

The file is either

- a cluster file in the ``file`` datastore's format (:mod:`podroute.datastore.cluster`): its BGP
  configuration, global and node peers, ``ipPools`` and nodes are written, and each node's
  ``podCIDRs`` are claimed as blocks affine to it; or
- a list of resources, each an object in the stored form (:mod:`podroute.datastore.codec`), e.g.
  ``- {kind: IPPool, name: default, cidr: 198.19.0.0/16, blockSize: 26}``.

Everything is validated before anything is written: the file's own rules (ConfigError naming
the file and key path), then the cross-resource rules against what etcd already holds
(:mod:`podroute.datastore.screen`: an IP pool overlapping another, a block outside every
pool), so a refused file leaves etcd as it was. Pools, peers, nodes and the BGP configuration are
created or replaced (:meth:`EtcdDatastore.put_resource`); blocks are claimed
(``Version == 0``), never taken from another node: a block another node holds is an error.
Nodes written here carry no lease (a node's agent takes its key over under its own lease when it
registers with the same address).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from podroute.configfile import load_yaml
from podroute.datastore.api import Changes, Conflict, Invalid, InvalidData, Put, Snapshot
from podroute.datastore.cluster import MAX_CLUSTER_BYTES, file_resources
from podroute.datastore.codec import parse
from podroute.datastore.etcdstore import EtcdDatastore
from podroute.datastore.model import IPAMBlock, Resource, Stored, key_of
from podroute.datastore.screen import screen_changes, screen_snapshot
from podroute.schema import ConfigError, join

# Write order: what others refer to goes first (a block's pool, a peer's node).
_ORDER = ("BGPConfiguration", "IPPool", "Node", "BGPPeer", "IPAMBlock")


@dataclass(frozen=True)
class Applied:
    key: str
    what: str          # "written" or "claimed"
    revision: int


def read_resources(path: str | Path) -> list[Resource]:
    """The resources in file ``path`` (either form, see the module docstring), validated and in
    write order. Raises ConfigError naming the file and key path."""
    raw = load_yaml(path, MAX_CLUSTER_BYTES)
    if isinstance(raw, list):
        out: dict[str, Resource] = {}
        try:
            for i, item in enumerate(raw):
                r = parse(item, f"[{i}]")
                k = key_of(r)
                if k in out:
                    raise ConfigError(join(f"[{i}]", "name"), f"{k} is listed twice")
                out[k] = r
        except ConfigError as e:
            raise e.with_file(str(path)) from None
        items = list(out.values())
    elif isinstance(raw, dict):
        items = list(file_resources(raw, str(path)).values())
    else:
        raise ConfigError("(top level)", "expected a cluster file (a mapping) or a list of resources", str(path))
    return sorted(items, key=lambda r: _ORDER.index(type(r).__name__))


def check_against(existing: Snapshot, resources: Sequence[Resource], source: str) -> None:
    """Refuse ``resources`` when, written after what etcd holds, they would break a rule
    (ConfigError naming the file and the key)."""
    current = {k: s.value for k, s in screen_snapshot(existing).items.items()}
    top = existing.revision
    puts = tuple(Put(Stored(key_of(r), r, top + i, top + i)) for i, r in enumerate(resources, start=1))
    for ev in screen_changes(current, Changes(top + len(puts), puts)).events:
        if isinstance(ev, Invalid):
            raise ConfigError(ev.error.key, ev.error.reason, source)


async def apply(store: EtcdDatastore, resources: Sequence[Resource], source: str) -> list[Applied]:
    """Write ``resources`` (see the module docstring); raises ConfigError (a rule broken, a name
    outside the key layout), Conflict (a block held by another node), Unavailable."""
    check_against(await store.snapshot(), resources, source)
    for r in resources:
        try:
            store.etcd_key(key_of(r))
        except InvalidData as e:
            raise ConfigError(e.key, e.reason, source) from None
    done: list[Applied] = []
    for r in resources:
        if isinstance(r, IPAMBlock):
            st = await store.claim_block(r)
            done.append(Applied(st.key, "claimed", st.revision))
        else:
            st = await store.put_resource(r)
            done.append(Applied(st.key, "written", st.revision))
    return done


async def apply_file(path: str | Path, endpoints: Sequence[str], prefix: str, timeout_s: float = 5.0) -> list[Applied]:
    """Read ``path`` and apply it to the etcd at ``endpoints`` under ``prefix``."""
    resources = read_resources(path)
    store = EtcdDatastore(endpoints, prefix=prefix, timeout_s=timeout_s)
    try:
        return await apply(store, resources, str(path))
    finally:
        await store.close()


def describe_conflict(e: Conflict) -> str:
    return f"{e.key}: held by node {e.holder}" if e.holder else str(e)


def render(done: Sequence[Applied], location: str, prefix: str) -> str:
    lines = [f"{a.what:8} {prefix}{a.key} (revision {a.revision})" for a in done]
    lines.append(f"applied {len(done)} resource(s) to etcd at {location}")
    return "\n".join(lines)

"""Rules a datastore's values must keep together, beyond each value's own shape: pools do not
overlap (Calico's IPPool validation refuses an overlapping pool), and a block lies inside a
pool when the datastore has pools (Calico only carves blocks from pools).

A store decodes each value on its own (:class:`podroute.datastore.api.Invalid` for one that
does not parse); these rules need the other values, so consumers screen what they receive:

- :func:`screen_changes`: a Put that breaks a rule becomes an :class:`Invalid` event naming its
  key, so every consumer keeps the key's last good value, as for a value that does not parse.
  The newcomer is what is refused: a pool overlapping one already in force, a block outside
  every pool in force.
- :func:`screen_snapshot`: the same over a list, pools taken in the order they were created
  (``Stored.created``, etcd CreateRevision; the last write when a store does not say), so the
  older of two overlapping pools stays also after it was updated; then blocks. The refused
  keys join ``Snapshot.invalid``.

Blocks are not checked when the datastore holds no pool (the file datastore without
``ipPools``: the node configs' pools apply). Deleting a pool does not retract its blocks.
"""
from __future__ import annotations

from typing import Mapping

from podroute.datastore.api import Changes, Delete, Event, Invalid, InvalidData, Put, Resync, Snapshot
from podroute.datastore.model import IPAMBlock, IPPool, Resource, Stored


def _pool_problem(key: str, pool: IPPool, pools: Mapping[str, IPPool]) -> str | None:
    for other_key, other in sorted(pools.items()):
        if other_key != key and other.cidr.overlaps(pool.cidr):
            return f"pool {pool.cidr} overlaps pool {other.cidr} ({other_key}); refused"
    return None


def _block_problem(block: IPAMBlock, pools: Mapping[str, IPPool]) -> str | None:
    if pools and not any(block.cidr.subnet_of(p.cidr) for p in pools.values()):
        inside = ", ".join(str(p.cidr) for p in pools.values())
        return f"block {block.cidr} is outside every IP pool ({inside}); refused"
    return None


def _problem(key: str, value: Resource, pools: Mapping[str, IPPool]) -> str | None:
    if isinstance(value, IPPool):
        return _pool_problem(key, value, pools)
    if isinstance(value, IPAMBlock):
        return _block_problem(value, pools)
    return None


def screen_changes(current: Mapping[str, Resource], changes: Changes) -> Changes:
    """``changes`` with each Put that breaks a rule, given the values in force ``current``
    (before these changes), replaced by an Invalid event. Returns ``changes`` itself when
    nothing breaks a rule."""
    pools = {k: v for k, v in current.items() if isinstance(v, IPPool)}
    out: list[Event] = []
    refused = False
    for ev in changes.events:
        if isinstance(ev, Put):
            st = ev.stored
            why = _problem(st.key, st.value, pools)
            if why is not None:
                out.append(Invalid(InvalidData(st.key, why), st.revision))
                refused = True
                continue
            if isinstance(st.value, IPPool):
                pools[st.key] = st.value
        elif isinstance(ev, Delete):
            pools.pop(ev.key, None)
        out.append(ev)
    return Changes(changes.revision, tuple(out)) if refused else changes


def screen_snapshot(snapshot: Snapshot) -> Snapshot:
    """``snapshot`` without the values that break a rule; they are added to ``invalid``."""
    pools: dict[str, IPPool] = {}
    bad: list[InvalidData] = []
    for st in sorted((s for s in snapshot.items.values() if isinstance(s.value, IPPool)),
                     key=lambda s: (s.created or s.revision, s.key)):
        assert isinstance(st.value, IPPool)
        why = _pool_problem(st.key, st.value, pools)
        if why is None:
            pools[st.key] = st.value
        else:
            bad.append(InvalidData(st.key, why))
    for st in snapshot.items.values():
        if isinstance(st.value, IPAMBlock):
            why = _block_problem(st.value, pools)
            if why is not None:
                bad.append(InvalidData(st.key, why))
    if not bad:
        return snapshot
    refused = {b.key for b in bad}
    items: dict[str, Stored] = {k: s for k, s in snapshot.items.items() if k not in refused}
    return Snapshot(snapshot.revision, items, (*snapshot.invalid, *bad))


def screen(current: Mapping[str, Resource], item: Changes | Resync) -> Changes | Resync:
    """A watch item screened (:func:`screen_changes` / :func:`screen_snapshot` in a Resync)."""
    if isinstance(item, Resync):
        snap = screen_snapshot(item.snapshot)
        return item if snap is item.snapshot else Resync(snap)
    return screen_changes(current, item)

"""Rules across resources that a single value cannot break on its own, applied by the consumers
of a datastore's list-then-watch stream (:class:`podroute.clusterwatch.ClusterWatch`,
:class:`podroute.ipamblocks.BlockView`) whatever the store.

A value that does not parse is the store's to reject (it becomes :class:`Invalid`). Valid values
can still contradict each other; :class:`Screen` rejects, naming the key:

- an IP pool that overlaps another pool (Calico refuses overlapping IPPools): the pool written
  later (higher revision) is rejected, the earlier one stays;
- an IPAM block outside every IP pool, when the store holds pools at all (the node config
  requires the same of its ``podCIDRs``; without pools in the store there is nothing to judge
  against).

A rejected value is handed on as :class:`Invalid`, so the consumer keeps the key's last good
value and logs the key, exactly as for a malformed one; in a :class:`Resync` the rejected keys
keep the value the screen last accepted (and are listed in ``Snapshot.invalid``). Rules are
checked when a value arrives; a full list is checked in the order the keys were created
(``Stored.created``, etcd CreateRevision; values this screen had accepted unchanged come
first), so
updating the pool that stayed does not make the one rejected earlier win on the next list. A
pool deleted later does not evict blocks already accepted.
"""
from __future__ import annotations

from typing import Union

from podroute.datastore.api import Changes, Delete, Event, Invalid, InvalidData, Put, Resync, Snapshot
from podroute.datastore.model import IPAMBlock, IPPool, Stored

Item = Union[Changes, Resync]


class Screen:
    """The rules above over one stream. ``view`` is what the screen has accepted, by key."""

    def __init__(self) -> None:
        self.view: dict[str, Stored] = {}

    def breaks(self, st: Stored) -> str | None:
        """Why ``st`` cannot be accepted next to ``view``; None when it can."""
        pools = [s.value for k, s in self.view.items() if isinstance(s.value, IPPool) and k != st.key]
        v = st.value
        if isinstance(v, IPPool):
            other = next((p for p in pools if p.cidr.overlaps(v.cidr)), None)
            if other is not None:
                return f"IP pool {v.cidr} overlaps IP pool {other.name} ({other.cidr}); overlapping pools are refused"
        if isinstance(v, IPAMBlock) and pools and not any(v.cidr.subnet_of(p.cidr) for p in pools):
            return (f"block {v.cidr} is outside every IP pool "
                    f"({', '.join(str(p.cidr) for p in sorted(pools, key=lambda p: p.cidr))})")
        return None

    def snapshot(self, snap: Snapshot) -> Snapshot:
        """``snap`` with rule breakers moved to ``invalid`` (in revision order, see the module
        docstring); keys rejected here or by the store keep their last accepted value."""
        before, self.view = self.view, {}
        invalid = list(snap.invalid)
        order = sorted(snap.items.values(),
                       key=lambda s: (before.get(s.key) != s, s.created or s.revision, s.revision, s.key))
        for st in order:
            why = self.breaks(st)
            if why is None:
                self.view[st.key] = st
            else:
                invalid.append(InvalidData(st.key, why))
        for bad in invalid:
            if bad.key not in self.view and bad.key in before and self.breaks(before[bad.key]) is None:
                self.view[bad.key] = before[bad.key]
        if len(invalid) == len(snap.invalid) and self.view == dict(snap.items):
            return snap
        return Snapshot(snap.revision, dict(self.view), tuple(invalid))

    def changes(self, changes: Changes) -> Changes:
        """``changes`` with each rule-breaking Put turned into an Invalid event."""
        out: list[Event] = []
        for ev in changes.events:
            if isinstance(ev, Put):
                why = self.breaks(ev.stored)
                if why is not None:
                    out.append(Invalid(InvalidData(ev.stored.key, why), ev.stored.revision))
                    continue
                self.view[ev.stored.key] = ev.stored
            elif isinstance(ev, Delete):
                self.view.pop(ev.key, None)
            out.append(ev)
        return changes if out == list(changes.events) else Changes(changes.revision, tuple(out))

    def apply(self, item: Item) -> Item:
        if isinstance(item, Resync):
            snap = self.snapshot(item.snapshot)
            return item if snap is item.snapshot else Resync(snap)
        return self.changes(item)

"""podroute.datastore.screen: values that break a rule with the others (overlapping pools, a
block outside every pool) are refused like values that do not parse."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from podroute.datastore import Changes, Delete, Invalid, IPAMBlock, IPPool, Node, Put, Resync, Stored, key_of
from podroute.datastore.api import Snapshot
from podroute.datastore.screen import screen, screen_changes, screen_snapshot

N = IPv4Network
POOL = IPPool("p", N("198.19.0.0/16"))
OVER = IPPool("over", N("198.19.0.0/17"))
INSIDE = IPAMBlock(N("198.19.1.0/26"), "n1")
OUTSIDE = IPAMBlock(N("10.99.0.0/26"), "n1")


def st(value, rev: int) -> Stored:
    return Stored(key_of(value), value, rev)


def test_a_snapshot_keeps_the_older_of_two_overlapping_pools_and_drops_blocks_outside_every_pool():
    items = {s.key: s for s in (st(OVER, 9), st(POOL, 3), st(INSIDE, 4), st(OUTSIDE, 5),
                                st(Node("n1", IPv4Address("198.18.0.11")), 2))}
    snap = screen_snapshot(Snapshot(9, items))
    assert set(snap.items) == {"ippools/p", "ipamblocks/198-19-1-0-26", "nodes/n1"}
    reasons = {b.key: b.reason for b in snap.invalid}
    assert reasons["ippools/over"] == "pool 198.19.0.0/17 overlaps pool 198.19.0.0/16 (ippools/p); refused"
    assert reasons["ipamblocks/10-99-0-0-26"] == "block 10.99.0.0/26 is outside every IP pool (198.19.0.0/16); refused"
    clean = Snapshot(3, {k: s for k, s in items.items() if k in snap.items})
    assert screen_snapshot(clean) is clean
    no_pools = Snapshot(5, {k: s for k, s in items.items() if "blocks" in k})
    assert screen_snapshot(no_pools) is no_pools          # without pools blocks are not checked


def test_changes_refuse_the_newcomer_and_follow_pools_written_in_the_same_batch():
    current = {"ippools/p": POOL}
    ch = Changes(7, (Put(st(OUTSIDE, 7)), Put(st(OVER, 7)), Put(st(INSIDE, 7))))
    out = screen_changes(current, ch)
    assert [type(e) for e in out.events] == [Invalid, Invalid, Put] and out.revision == 7
    assert out.events[0].error.key == "ipamblocks/10-99-0-0-26" and out.events[1].error.key == "ippools/over"
    other = IPPool("ten", N("10.99.0.0/16"))             # a pool first, then its block: both fine
    ok = Changes(8, (Put(st(other, 8)), Put(st(OUTSIDE, 8))))
    assert screen_changes(current, ok) is ok
    gone = Changes(9, (Delete("ippools/p", 9), Put(st(OVER, 9))))   # the old pool goes first: fine
    assert screen_changes(current, gone) is gone
    assert isinstance(screen(current, Resync(Snapshot(9, {"x": st(OVER, 1), "y": st(POOL, 2)}))), Resync)


def test_updating_the_older_pool_does_not_make_the_refused_one_win_on_the_next_list():
    """Found on etcd (tests/unit/test_etcd_bad_data.py): pools were ordered by their last write, so
    once the pool in force was updated (say, disabled), the next list (a restart, a Resync) kept
    the overlapping pool that had been refused and refused the one in force. Age is the key's
    creation (Stored.created, etcd CreateRevision), not its last write."""
    updated = Stored(key_of(POOL), IPPool("p", POOL.cidr, disabled=True), 12, 3)     # created at 3, written at 12
    refused = Stored(key_of(OVER), OVER, 9, 9)
    snap = screen_snapshot(Snapshot(12, {s.key: s for s in (updated, refused)}))
    assert set(snap.items) == {"ippools/p"} and snap.items["ippools/p"].value.disabled
    assert [b.key for b in snap.invalid] == ["ippools/over"]

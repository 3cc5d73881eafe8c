"""podroute.datastore.rules.Screen: the cross-resource rules on a stream of watch items (no store)."""
from __future__ import annotations

from ipaddress import IPv4Network

from podroute.datastore import Changes, Delete, Invalid, InvalidData, IPAMBlock, IPPool, Put, Resync, Snapshot
from podroute.datastore.model import Stored, key_of
from podroute.datastore.rules import Screen

N = IPv4Network
P1 = IPPool("p1", N("198.19.0.0/16"))
P2 = IPPool("p2", N("198.19.128.0/17"))          # inside p1
B1 = IPAMBlock(N("198.19.1.0/26"), "n1")
STRAY = IPAMBlock(N("10.1.0.0/26"), "n2")


def st(r, rev: int, created: int | None = None) -> Stored:
    return Stored(key_of(r), r, rev, rev if created is None else created)


def snap(rev: int, *items: Stored, invalid=()) -> Snapshot:
    return Snapshot(rev, {s.key: s for s in items}, tuple(invalid))


def test_without_pools_nothing_is_judged_and_items_pass_unchanged():
    s = Screen()
    first = snap(3, st(B1, 2), st(STRAY, 3))
    assert s.snapshot(first) is first
    ch = Changes(4, (Put(st(IPAMBlock(N("10.2.0.0/26"), "n3"), 4)),))
    assert s.changes(ch) is ch


def test_rule_breaking_puts_become_invalid_naming_the_key_and_the_rest_passes():
    s = Screen()
    s.snapshot(snap(2, st(P1, 2)))
    out = s.changes(Changes(5, (Put(st(P2, 3)), Put(st(B1, 4)), Put(st(STRAY, 5)))))
    kinds = [type(e).__name__ for e in out.events]
    assert kinds == ["Invalid", "Put", "Invalid"]
    assert out.events[0].error.key == "ippools/p2" and "overlaps IP pool p1" in out.events[0].error.reason
    assert out.events[2].error.key == "ipamblocks/10-1-0-0-26" and "outside every IP pool" in out.events[2].error.reason
    # once p1 is deleted, p2 no longer overlaps anything
    out = s.changes(Changes(7, (Delete("ippools/p1", 6), Put(st(P2, 7)))))
    assert [type(e).__name__ for e in out.events] == ["Delete", "Put"]


def test_a_list_orders_by_creation_and_keeps_a_bad_keys_last_good_value():
    s = Screen()
    s.snapshot(snap(2, st(P1, 2), st(B1, 2)))
    # p1 updated after p2 was (wrongly) created: p1 was created first, so p1 stays
    later = snap(9, st(IPPool("p1", P1.cidr, disabled=True), 9, created=2), st(P2, 5),
                 invalid=[InvalidData(key_of(B1), "not JSON")])
    out = s.snapshot(later)
    assert out.items["ippools/p1"].value.disabled is True and "ippools/p2" not in out.items
    bad = {e.key: e.reason for e in out.invalid}
    assert "overlaps" in bad["ippools/p2"] and bad[key_of(B1)] == "not JSON"
    assert out.items[key_of(B1)].value == B1              # the malformed block keeps its last good value
    r = s.apply(Resync(later))
    assert isinstance(r, Resync) and "ippools/p2" not in r.snapshot.items
    assert isinstance(s.apply(Changes(10, (Put(st(P2, 10, created=5)),))).events[0], Invalid)

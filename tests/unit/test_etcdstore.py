"""EtcdDatastore beyond the shared contract, against a real etcd on loopback: leases (expiry is a
Delete for watchers, a lost lease is registered again), the value codec (malformed values are
InvalidData naming the key), errors at the seam, and the administrator's writes."""
from __future__ import annotations

import asyncio
import json
from ipaddress import IPv4Address, IPv4Network

import pytest
from waiting import until

from etcdstoreutil import EtcdHarness, new_prefix
from podroute.datastore import (BGPConfiguration, BGPPeer, Changes, Conflict, Delete, IPAMBlock, IPPool, InvalidData,
                                Node, Put, Unavailable, key_of)
from podroute.datastore.codec import decode, encode
from podroute.datastore.etcdstore import EtcdDatastore
from podroute.datastore.model import labels
from tests.contract.datastore_contract import events, next_changes
from etcdutil import free_port

N1 = Node("n1", IPv4Address("198.18.0.11"), asn=65001, labels=labels({"rack": "r1"}),
          vxlan_tunnel_address=IPv4Address("198.19.1.0"))
POOL = IPPool("p1", IPv4Network("198.19.0.0/16"), block_size=26, vxlan_mode="Always")


@pytest.fixture
async def h(etcd_server):
    harness = EtcdHarness(etcd_server)
    yield harness
    await harness.close()


def test_constructor_does_no_io_and_refuses_bad_endpoints_and_prefixes():
    ds = EtcdDatastore(["http://127.0.0.1:1"], prefix="/x/")      # nothing listens there: no I/O yet
    assert (ds.name, ds.location, ds.supports_claims) == ("etcd", "http://127.0.0.1:1", True)
    assert EtcdDatastore(["198.18.0.2:2379", "http://198.18.0.3:2379"]).location == \
        "198.18.0.2:2379,http://198.18.0.3:2379"
    assert EtcdDatastore(["http://[fd00::2]:2379", "h.example:1"])._addrs == [("[fd00::2]", 2379), ("h.example", 1)]
    for bad in (["https://198.18.0.2:2379"], ["http://198.18.0.2"], ["http://198.18.0.2:2379/v3"], [], "h:1"):
        with pytest.raises(ValueError, match="etcd endpoint"):
            EtcdDatastore(bad)
    with pytest.raises(ValueError, match="bad etcd key prefix"):
        EtcdDatastore(["127.0.0.1:2379"], prefix="podroute")


def test_codec_round_trips_every_resource():
    for r in (N1, POOL, BGPConfiguration(False, 65010, (IPv4Network("10.96.0.0/12"),), ("65010:1",)),
              BGPPeer("rr-198.18.0.1", IPv4Address("198.18.0.1"), 65000, node_selector=labels({"rack": "r1"}),
                      hold_time=30, max_prefixes=1000),
              IPAMBlock(IPv4Network("198.19.1.0/26"), "n1"), IPAMBlock(IPv4Network("198.19.1.64/26"), None)):
        assert decode(key_of(r), encode(r)) == r
    assert json.loads(encode(IPAMBlock(IPv4Network("198.19.1.0/26"), "n1")))["affinity"] == "host:n1"


@pytest.mark.parametrize("key,value,why", [
    ("nodes/n1", b"{not json", "not UTF-8 JSON"),
    ("nodes/n1", b"\xff\xfe", "not UTF-8 JSON"),
    ("nodes/n1", b"[1, 2]", "expected a mapping"),
    ("nodes/n1", b'{"kind": "IPPool", "name": "n1"}', "'IPPool' found where Node belongs"),
    ("nodes/n1", b'{"kind": "Node", "name": "n1", "address": "198.18.0.300"}', "address"),
    ("nodes/n1", b'{"kind": "Node", "name": "n1", "address": "198.18.0.11", "colour": "red"}', "colour: unknown key"),
    ("nodes/n1", b'{"kind": "Node", "name": "n2", "address": "198.18.0.11"}', "holds nodes/n2"),
    ("ippools/p1", b'{"kind": "IPPool", "name": "p1", "cidr": "198.19.0.0/16", "blockSize": 8}', "blockSize"),
    ("ippools/p1", b'{"kind": "IPPool", "name": "p1", "cidr": "198.19.0.0/16", "ipipMode": "Always", '
                   b'"vxlanMode": "Always"}', "mutually exclusive"),
    ("ipamblocks/198-19-1-0-26", b'{"kind": "IPAMBlock", "cidr": "198.19.1.0/26", "affinity": "n1", '
                                 b'"state": "confirmed"}', "host:<node>"),
    ("ipamblocks/198-19-1-0-26", b'{"kind": "IPAMBlock", "cidr": "198.19.2.0/26", "affinity": "host:n1", '
                                 b'"state": "confirmed"}', "holds ipamblocks/198-19-2-0-26"),
    ("bgppeers/x", b'{"kind": "BGPPeer", "name": "x", "peerIP": "198.18.0.1", "asNumber": 65000, '
                   b'"holdTime": 2}', "RFC 4271"),
])
def test_codec_rejects_malformed_values_naming_the_key(key, value, why):
    with pytest.raises(InvalidData) as ei:
        decode(key, value)
    assert ei.value.key == key and why in ei.value.reason


async def test_snapshot_lists_malformed_and_foreign_keys_as_invalid_and_keeps_the_rest(h):
    await h.seed(BGPConfiguration(), N1)
    await h.put_raw("ippools/p1", '{"kind": "IPPool"}')
    await h.put_raw("something/else", "{}")
    snap = await h.client().snapshot()
    assert snap.items[key_of(N1)].value == N1
    bad = {e.key: e.reason for e in snap.invalid}
    assert "cidr: is required" in bad["ippools/p1"]
    assert "not in podroute's layout" in bad[h.prefix + "something/else"]


async def test_lease_expiry_is_a_delete_for_watchers(h):
    me = h.client()
    await me.register_node(N1, ttl_s=1)
    watcher = h.client()
    snap = await watcher.snapshot()
    assert snap.items[key_of(N1)].value == N1
    it = watcher.watch(snap.revision).__aiter__()
    await me.close()            # stops renewing: etcd deletes the key after the TTL
    got = await next_changes(it, lambda g: any(isinstance(e, Delete) and e.key == key_of(N1) for e in events(g)),
                             timeout=10)
    assert all(isinstance(c, Changes) for c in got)
    await it.aclose()


async def test_a_lost_lease_is_registered_again_and_watchers_see_it_leave_and_return(h):
    me = h.client()
    await me.register_node(N1, ttl_s=2)
    watcher = h.client()
    snap = await watcher.snapshot()
    lease = me._registrations["n1"].lease
    it = watcher.watch(snap.revision).__aiter__()
    await asyncio.to_thread(h.etcdctl, "lease", "revoke", f"{lease.id:x}")    # etcd forgets our lease
    got = await next_changes(it, lambda g: any(isinstance(e, Put) and e.stored.value == N1 for e in events(g)),
                             timeout=15)
    kinds = [type(e).__name__ for e in events(got)]
    assert kinds.index("Delete") < kinds.index("Put")
    await until(lambda: me._registrations["n1"].lease.id != lease.id, 5, "the new lease to be recorded")
    kv = await me.client.get(h.prefix + key_of(N1))
    assert kv.lease == me._registrations["n1"].lease.id
    await it.aclose()


async def test_registration_conflicts_with_another_address_and_a_restart_takes_over_its_own(h):
    first = h.client()
    await first.register_node(N1, ttl_s=30)
    await first.close()                       # the agent stops; its key stays until the TTL runs out
    again = h.client()
    st = await again.register_node(N1, ttl_s=30)            # same address: a restarted agent
    assert st.value == N1
    other = h.client()
    with pytest.raises(Conflict, match="registered with address 198.18.0.11") as ei:
        await other.register_node(Node("n1", IPv4Address("198.18.0.99")), ttl_s=30)
    assert ei.value.key == "nodes/n1"


async def test_claim_names_the_holder_and_release_compares_the_revision(h):
    a, b = h.client(), h.client()
    blk = IPAMBlock(IPv4Network("198.19.1.0/26"), "n1")
    won = await a.claim_block(blk)
    with pytest.raises(Conflict) as ei:
        await b.claim_block(IPAMBlock(blk.cidr, "n2"))
    assert (ei.value.holder, ei.value.key) == ("n1", "ipamblocks/198-19-1-0-26")
    with pytest.raises(Conflict) as ei:
        await b.release_block(blk.cidr, won.revision + 100)
    assert ei.value.holder == "n1"
    # a block key holding garbage is not claimable, and says so
    await h.put_raw("ipamblocks/198-19-2-0-26", "garbage")
    with pytest.raises(Conflict, match="invalid value"):
        await a.claim_block(IPAMBlock(IPv4Network("198.19.2.0/26"), "n1"))


async def test_put_and_delete_resource(h):
    st1 = await h.admin.put_resource(POOL)
    st2 = await h.admin.put_resource(IPPool("p1", POOL.cidr, disabled=True))      # replace
    assert st2.revision > st1.revision
    got = (await h.client().snapshot()).items["ippools/p1"].value
    assert got.disabled is True
    assert await h.admin.delete_resource("ippools/p1") is True
    assert await h.admin.delete_resource("ippools/p1") is False
    with pytest.raises(InvalidData, match="not in podroute's layout"):
        await h.admin.delete_resource("../etc")


async def test_an_unreachable_etcd_is_unavailable_within_the_deadline():
    ds = EtcdDatastore([f"http://127.0.0.1:{free_port()}"], prefix=new_prefix(), timeout_s=1.0)
    try:
        for call in (ds.snapshot, lambda: ds.claim_block(IPAMBlock(IPv4Network("198.19.1.0/26"), "n1")),
                     lambda: ds.register_node(N1, 5), lambda: ds.put_resource(POOL)):
            with pytest.raises(Unavailable, match="etcd at http://127.0.0.1"):
                await asyncio.wait_for(call(), 5)
        it = ds.watch(1).__aiter__()
        with pytest.raises(Unavailable):
            await asyncio.wait_for(it.__anext__(), 10)
    finally:
        await ds.close()

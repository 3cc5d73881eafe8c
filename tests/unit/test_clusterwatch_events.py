"""ClusterWatch, the agent's consumer of datastore events, on the fake datastore."""
from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network

import pytest
from waiting import wait_until

from podroute.clusterwatch import ClusterWatch
from podroute.datastore import BGPConfiguration, Conflict, BGPPeer, IPAMBlock, Node, key_of, peers_for
from podroute.datastore.fake import FakeDatastore, FakeServer
from podroute.datastore.model import labels
from podroute.ipamblocks import BlockView
from podroute.schema import ConfigError
from podroute.statusd import render

A = IPv4Address
N1 = Node("n1", A("198.18.0.11"))
N2 = Node("n2", A("198.18.0.12"), labels=labels({"rack": "r2"}))
N3 = Node("n3", A("198.18.0.13"))
B2 = IPAMBlock(IPv4Network("198.19.2.0/26"), "n2")


@pytest.fixture
async def running():
    server = FakeServer()
    server.put(BGPConfiguration(), N1, N2, B2)
    got: list = []
    w = ClusterWatch(FakeDatastore(server), node_name="n1", node_ip=N1.address, on_change=got.append,
                     backoff_s=(0.01, 0.05))
    task = asyncio.create_task(w.run())
    await wait_until(lambda: got)
    yield server, w, got
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_list_then_watch_hands_over_each_new_topology_once(running):
    server, w, got = running
    assert [n.name for n in got[-1].nodes] == ["n1", "n2"]
    assert got[-1].node("n2").pod_cidrs == (B2.cidr,)
    server.put(N3)
    await wait_until(lambda: len(got) == 2)
    assert {str(s.peer.address) for s in peers_for("n1", got[-1])} == {"198.18.0.12", "198.18.0.13"}
    server.put(N3)                                  # no change: nothing handed over
    server.put(IPAMBlock(IPv4Network("198.19.9.0/26"), "n3", state="releasing"))  # readers skip it
    server.put(N3)
    rev = server.store.revision
    await wait_until(lambda: w.revision == rev)
    assert len(got) == 2


async def test_listeners_follow_the_same_stream(running):
    server, w, got = running
    view = BlockView("n2")
    w.listeners.append(view.handle)
    server.put(IPAMBlock(IPv4Network("198.19.2.64/26"), "n2"))
    await wait_until(lambda: len(view.mine()) == 1)          # a Changes it saw
    assert view.mine() == (IPv4Network("198.19.2.64/26"),)  # it joined after the first list
    server.down()
    await wait_until(lambda: not w.status()["available"])
    server.put(N3)                                          # missed during the outage ...
    server.put(BGPConfiguration(as_number=65001))
    server.compact()                                        # ... and compacted away
    server.up()
    await wait_until(lambda: "nodes/n3" in view.view)       # through the Resync: the whole state
    assert view.mine() == (IPv4Network("198.19.2.0/26"), IPv4Network("198.19.2.64/26"))


async def test_peers_by_selector_and_global(running):
    server, w, got = running
    server.put(BGPPeer("tor-r2", A("198.18.0.254"), 65000, node_selector=labels({"rack": "r2"})),
               BGPPeer("rr", A("198.18.0.1"), 64512))
    await wait_until(lambda: len(got) == 2)
    c = got[-1]
    assert {str(p.address) for p in c.node("n2").peers} == {"198.18.0.254"}
    assert c.node("n1").peers == () and [str(p.address) for p in c.global_peers] == ["198.18.0.1"]


async def test_invalid_value_keeps_the_keys_last_good_value_with_a_log_line(running, caplog):
    server, w, got = running
    server.put_invalid(key_of(N2), "not JSON")
    server.put(N3)
    await wait_until(lambda: len(got) == 2)
    assert [n.name for n in got[-1].nodes] == ["n1", "n2", "n3"]    # n2 stays as last seen
    (rec,) = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert rec.kv["key"] == "nodes/n2" and "not JSON" in rec.kv["error"]


async def test_a_view_that_breaks_a_rule_is_not_handed_over(running, caplog):
    server, w, got = running
    server.put(Node("n3", N2.address))              # two nodes, one address
    await wait_until(lambda: any("rejected" in r.getMessage() for r in caplog.records))
    assert len(got) == 1 and len(w.cluster.nodes) == 2
    server.put(N3)                                  # fixed: handed over
    await wait_until(lambda: len(got) == 2)


async def test_outage_keeps_state_backs_off_and_catches_up_through_a_resync(running, caplog):
    server, w, got = running
    server.down()
    await wait_until(lambda: not w.status()["available"])
    assert w.status()["datastore"] == "fake" and "down" in w.status()["last_error"]
    assert len(w.cluster.nodes) == 2                # the last state stays
    assert "Datastore: fake, 2 node(s)" in render({"datastore": w.status()}) and \
        "UNAVAILABLE since" in render({"datastore": w.status()})
    server.store.commit(puts=[N3], deletes=[key_of(N2)])   # changes while we cannot see them
    server.compact()                                # ... and their history is gone
    server.up()
    await wait_until(lambda: w.status()["available"] and len(got) == 2)
    assert [n.name for n in got[-1].nodes] == ["n1", "n3"]
    assert sum("unavailable" in r.getMessage() for r in caplog.records) == 1  # one line per outage


def test_prime_refuses_a_datastore_without_this_node():
    server = FakeServer()
    server.put(N2)
    w = ClusterWatch(FakeDatastore(server), node_name="n1", node_ip=N1.address, on_change=lambda c: None)
    with pytest.raises(ConfigError, match=r"^fake: nodes/n1: this node \(n1\) is not listed"):
        w.prime(server.store.snapshot())


async def test_the_node_registers_itself_and_retries_through_an_outage(caplog):
    server = FakeServer()
    server.put(BGPConfiguration(), N2)
    server.down()
    got: list = []
    w = ClusterWatch(FakeDatastore(server), node_name="n1", node_ip=N1.address, on_change=got.append,
                     backoff_s=(0.01, 0.05), register=N1, ttl_s=7)
    task = asyncio.create_task(w.run())
    try:
        await wait_until(lambda: server.calls.count("register_node") >= 2)
        assert key_of(N1) not in server.store.items
        server.up()
        await wait_until(lambda: got)
        assert server.leases == {"n1": 7} and [n.name for n in got[-1].nodes] == ["n1", "n2"]
        calls = server.calls.count("register_node")
        server.expire_lease("n1")                   # our own lease lapsed (a long outage): registered again
        await wait_until(lambda: key_of(N1) in server.store.items)
        assert server.calls.count("register_node") == calls + 1 and server.leases == {"n1": 7}
        assert "registering again" in caplog.text and len(got) == 1   # our own view never lost us
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_refused_registration_is_logged_and_not_retried(caplog):
    server = FakeServer()
    server.put(BGPConfiguration(), N1, N2)
    server.fail_next("register_node", Conflict("nodes/n1", "registered with address 198.18.0.99", "n1"))
    got: list = []
    w = ClusterWatch(FakeDatastore(server), node_name="n1", node_ip=N1.address, on_change=got.append,
                     backoff_s=(0.01, 0.05), register=N1)
    task = asyncio.create_task(w.run())
    try:
        await wait_until(lambda: got)
        assert server.calls.count("register_node") == 1
        (rec,) = [r for r in caplog.records if "rejected" in r.getMessage()]
        assert rec.kv["key"] == "nodes/n1" and "198.18.0.99" in rec.kv["error"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class KubeLikeStore(FakeDatastore):
    """The fake with kubernetes' capabilities: someone else (kubelet) owns the Node object."""
    self_registering = False


async def test_where_kubelet_owns_the_node_its_first_topology_has_the_agents_own_fields():
    """Before its registration (annotations) comes back, this node's own ASN, address and
    route-reflector cluster ID are already the agent's, so a reflector starts as one (reflection
    does not depend on the write's round trip); its labels stay the Node's, and a Node deleted
    with kubectl is not brought back by the overlay."""
    tor = BGPPeer("tor", A("198.18.0.1"), 65000, node_selector=labels({"rack": "a"}))
    server = FakeServer()
    server.put(BGPConfiguration(), tor, Node("n1", N1.address, labels=labels({"rack": "a"})), N2)   # kubelet's
    me = Node("n1", N1.address, asn=64600, rr_cluster_id=N1.address)
    w = ClusterWatch(KubeLikeStore(server), node_name="n1", node_ip=N1.address, on_change=lambda c: None,
                     register=me)
    cluster = w.prime(server.store.snapshot())
    own = cluster.node("n1")
    assert (own.asn, own.rr_cluster_id) == (64600, N1.address)
    assert w.derive({k: s.value for k, s in server.store.snapshot().items.items()}).node("n1").asn == 64600
    assert tor.peer_ip in {s.peer.address for s in peers_for("n1", cluster)}     # rack a, the Node's label
    relabelled = {key_of(N2): N2, key_of(tor): tor, "nodes/n1": Node("n1", N1.address, labels=labels({"rack": "b"}))}
    assert tor.peer_ip not in {s.peer.address for s in peers_for("n1", w.derive(relabelled))}   # kubectl label
    with pytest.raises(ConfigError, match=r"this node \(n1\) is not listed"):
        w.derive({key_of(N2): N2})                          # kubectl delete node n1: it stays gone

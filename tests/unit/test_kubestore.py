"""The kubernetes datastore beyond the shared contract, on a real kube-apiserver with RBAC on
(tests/kubeutil.py): the CRD schemas reject nonsense, errors name what was wrong (a verb the
role lacks, an invalid object), register_node only annotates an existing Node, usePodCIDR
surfaces spec.podCIDR as the node's block, unchanged Nodes make no Put, and watch threads stop."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
from ipaddress import IPv4Address, IPv4Network

import pytest

from podroute.datastore import (BGPPeer, Changes, Conflict, IPAMBlock, IPPool, InvalidData, Node, Put,
                                Unavailable, Unsupported, key_of)
from podroute.datastore.kubestore import Forbidden, KubeDatastore
from podroute.kube.codec import ADDRESS, IPAMBLOCKS, IPPOOLS, BGPPEERS, KINDS, NODES
from tests.contract.datastore_contract import next_changes

N1 = Node("n1", IPv4Address("198.18.0.11"))


@pytest.fixture
async def admin(kube_apiserver):
    ds = KubeDatastore(kube_apiserver.kubeconfig("admin"))
    for kind in KINDS:
        await asyncio.to_thread(ds.rest.call, "DELETE", kind.path)
    yield ds
    await ds.close()


@pytest.fixture
async def agent(kube_apiserver):
    ds = KubeDatastore(kube_apiserver.kubeconfig("agent"), node_name="n1")
    yield ds
    await ds.close()


def raw(ds: KubeDatastore, method: str, path: str, body=None, content_type="application/json"):
    return asyncio.to_thread(ds.rest.call, method, path, body=body, content_type=content_type)


@pytest.mark.parametrize("kind, name, spec, field", [
    (IPPOOLS, "p", {"cidr": "198.19.0.1/16"}, "host bits"),
    (IPPOOLS, "p", {"cidr": "198.19.0.0/16", "blockSize": 8}, "blockSize"),
    (IPPOOLS, "p", {"cidr": "198.19.0.0/16", "ipipMode": "Always", "vxlanMode": "Always"}, "mutually exclusive"),
    (IPPOOLS, "p", {"cidr": "198.19.0.0/16", "ipipMode": "Sometimes"}, "ipipMode"),
    (BGPPEERS, "p", {"peerIP": "fd00::1", "asNumber": 65000}, "IPv4 address"),
    (BGPPEERS, "p", {"peerIP": "198.18.0.1", "asNumber": 0}, "asNumber"),
    (BGPPEERS, "p", {"peerIP": "198.18.0.1", "asNumber": 65000, "holdTime": 2}, "RFC 4271"),
    (BGPPEERS, "p", {"peerIP": "198.18.0.1", "asNumber": 65000, "nodeSelector": "rack != 'a'"}, "nodeSelector"),
    (BGPPEERS, "p", {"peerIP": "198.18.0.1", "asNumber": 65000, "node": "n1", "nodeSelector": "a == 'b'"},
     "mutually exclusive"),
    (IPAMBLOCKS, "198-19-1-0-26", {"cidr": "198.19.1.64/26"}, "the name must be the CIDR"),
    (IPAMBLOCKS, "198-19-1-0-26", {"cidr": "198.19.1.0/26", "affinity": "n1"}, "affinity"),
])
async def test_the_crd_schemas_reject_nonsense_naming_the_field(admin, kind, name, spec, field):
    body = {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": {"name": name}, "spec": spec}
    with pytest.raises(InvalidData) as ei:
        await asyncio.to_thread(admin._call, "create", kind, f"{kind.plural}/{name}", "POST", kind.path, body=body)
    assert ei.value.key == f"{kind.plural}/{name}" and field in ei.value.reason, ei.value.reason


async def test_an_invalid_write_is_invalid_data_naming_the_object(admin):
    with pytest.raises(InvalidData) as ei:
        await admin.put_resource(IPPool("tiny", IPv4Network("198.19.0.0/16"), 8))
    assert ei.value.key == "ippools/tiny" and "blockSize" in ei.value.reason


async def test_a_verb_the_role_lacks_is_forbidden_naming_verb_and_resource(admin, agent):
    await admin.put_resource(N1)
    with pytest.raises(Forbidden) as ei:          # the agent reads pools; it never writes them
        await agent.put_resource(IPPool("default", IPv4Network("198.19.0.0/16")))
    assert (ei.value.verb, ei.value.resource) == ("create", "ippools.podroute.io")
    assert "podroute-agent" in str(ei.value) and "configs/rbac.yaml" in str(ei.value)
    assert isinstance(ei.value, Unavailable)      # the agent keeps its state and retries
    with pytest.raises(Forbidden, match="delete nodes"):
        await agent.delete_resource("nodes/n1")


async def test_register_node_annotates_an_existing_node_only(admin, agent, kube_apiserver):
    with pytest.raises(InvalidData, match="kubelet registers Nodes"):
        await agent.register_node(N1, 30)
    await admin.put_resource(Node("n1", IPv4Address("10.0.0.1"), labels=(("rack", "a"),)))
    me = Node("n1", IPv4Address("198.18.0.11"), 65001, labels=(("rack", "a"),),
              ipip_tunnel_address=IPv4Address("198.19.0.1"))
    st = await agent.register_node(me, 30)
    assert st.value == me                         # the annotation overrides the InternalIP
    obj = await raw(admin, "GET", f"{NODES.path}/n1")
    assert obj["metadata"]["annotations"][ADDRESS] == "198.18.0.11"
    assert obj["status"]["addresses"] == [{"type": "InternalIP", "address": "10.0.0.1"}]
    # a restarted agent whose address changed re-registers: the Node is this machine's, and
    # without a lease an earlier run cannot be told from another agent (calico-node overwrites too)
    again = KubeDatastore(kube_apiserver.kubeconfig("agent"), node_name="n1")
    try:
        st = await again.register_node(Node("n1", IPv4Address("198.18.0.99")), 30)
        assert st.value.address == IPv4Address("198.18.0.99") and st.value.asn is None
    finally:
        await again.close()
    with pytest.raises(InvalidData, match="acts for node n1"):
        await agent.register_node(Node("n2", IPv4Address("198.18.0.12")), 30)


async def test_use_pod_cidr_surfaces_spec_pod_cidr_as_the_nodes_block(admin, kube_apiserver):
    def node(name, ip, cidr):
        return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {"podCIDR": cidr},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}

    await raw(admin, "POST", NODES.path, node("n1", "198.18.0.11", "198.19.1.0/24"))
    ds = KubeDatastore(kube_apiserver.kubeconfig("agent"), use_pod_cidr=True)
    try:
        snap = await ds.snapshot()
        assert snap.items["ipamblocks/198-19-1-0-24"].value == IPAMBlock(IPv4Network("198.19.1.0/24"), "n1")
        assert not ds.supports_claims
        with pytest.raises(Unsupported, match="cannot claim"):
            await ds.claim_block(IPAMBlock(IPv4Network("198.19.9.0/24"), "n1"))
        it = ds.watch(snap.revision).__aiter__()
        await raw(admin, "POST", NODES.path, node("n2", "198.18.0.12", "198.19.2.0/24"))
        got = await next_changes(it, lambda g: any(isinstance(e, Put) and e.stored.key == "ipamblocks/198-19-2-0-24"
                                                   for c in g for e in c.events))
        (block,) = [e.stored.value for c in got for e in c.events if isinstance(e, Put)
                    and isinstance(e.stored.value, IPAMBlock)]
        assert block.affinity == "n2"
        await admin.delete_resource("nodes/n2")
        got = await next_changes(it, lambda g: sum(len(c.events) for c in g) >= 2)
        assert {e.key for c in got for e in c.events} == {"nodes/n2", "ipamblocks/198-19-2-0-24"}
        await it.aclose()
    finally:
        await ds.close()


async def test_a_node_change_podroute_does_not_use_makes_no_put(admin, agent):
    await admin.put_resource(N1)
    snap = await agent.snapshot()
    it = agent.watch(snap.revision).__aiter__()
    # a heartbeat-like change first, then a label: the first Put must already carry the label
    await raw(admin, "PATCH", f"{NODES.path}/n1", {"metadata": {"annotations": {"example.com/beat": "1"}}},
              "application/merge-patch+json")
    await admin.put_resource(Node("n1", N1.address, labels=(("rack", "b"),)))
    got = await next_changes(it, lambda g: any(isinstance(e, Put) for c in g for e in c.events))
    puts = [e.stored.value for c in got if isinstance(c, Changes) for e in c.events if isinstance(e, Put)]
    assert puts == [Node("n1", N1.address, labels=(("rack", "b"),))]
    assert len(got) >= 2 and all(isinstance(c, Changes) for c in got)   # the first change advanced the revision
    await it.aclose()


async def test_peer_changes_arrive_while_watching_and_the_threads_stop_on_close(admin, kube_apiserver):
    ds = KubeDatastore(kube_apiserver.kubeconfig("agent"))
    snap = await ds.snapshot()
    it = ds.watch(snap.revision).__aiter__()
    peer = BGPPeer("tor-a", IPv4Address("198.18.0.1"), 65000, node_selector=(("rack", "a"),))
    await admin.put_resource(peer)
    got = await next_changes(it, lambda g: any(isinstance(e, Put) and e.stored.key == key_of(peer)
                                               for c in g for e in c.events))
    assert [e.stored.value for c in got for e in c.events if isinstance(e, Put)] == [peer]
    assert any(t.name.startswith("kube-watch-") for t in threading.enumerate())
    await ds.close()
    await it.aclose()
    for _ in range(100):          # bounded: halted threads end within one read wake-up
        if not any(t.name.startswith("kube-watch-") and t.is_alive() for t in threading.enumerate()):
            break
        await asyncio.sleep(0.05)
    assert not any(t.name.startswith("kube-watch-") and t.is_alive() for t in threading.enumerate())


async def test_kubectl_shows_what_podroute_wrote(admin, agent, kube_apiserver):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("needs kubectl (scripts/setup installs Debian's kubernetes-client)")
    await admin.put_resource(Node("n1", IPv4Address("198.18.0.11"), labels=(("rack", "a"),)))
    await admin.put_resource(IPPool("default", IPv4Network("198.19.0.0/16")))
    await admin.put_resource(BGPPeer("tor-a", IPv4Address("198.18.0.1"), 65000, node_selector=(("rack", "a"),)))
    await agent.claim_block(IPAMBlock(IPv4Network("198.19.1.0/26"), "n1"))
    await agent.register_node(Node("n1", IPv4Address("198.18.0.11"), 64600), 30)
    cp = await asyncio.to_thread(subprocess.run, [kubectl, "--kubeconfig", str(kube_apiserver.kubeconfig("agent")),
                                                  "get", "nodes,ippools,bgppeers,ipamblocks", "-o", "wide"],
                                 capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    rows = {line.split()[0]: line.split()[1:] for line in cp.stdout.splitlines() if line and not line.startswith("NAME")}
    assert "198.18.0.11" in rows["node/n1"]
    assert rows["ippool.podroute.io/default"][:2] == ["198.19.0.0/16", "26"]
    assert rows["bgppeer.podroute.io/tor-a"][:2] == ["198.18.0.1", "65000"] and "'a'" in rows["bgppeer.podroute.io/tor-a"]
    assert rows["ipamblock.podroute.io/198-19-1-0-26"] == ["198.19.1.0/26", "host:n1", "confirmed"]
    cp = await asyncio.to_thread(subprocess.run, [kubectl, "--kubeconfig", str(kube_apiserver.kubeconfig("admin")),
                                                  "get", "node", "n1", "-o", "jsonpath={.metadata.annotations}"],
                                 capture_output=True, text=True, timeout=60)
    assert '"podroute.io/ASNumber":"64600"' in cp.stdout, cp.stdout


async def test_register_node_retries_from_a_fresh_read_when_the_node_changed_in_between(admin, agent):
    await admin.put_resource(N1)
    real_call, gets = agent.rest.call, []

    def call(method, path, **kw):
        out = real_call(method, path, **kw)
        if method == "GET" and path == f"{NODES.path}/n1":
            gets.append(out["metadata"]["resourceVersion"])
            if len(gets) == 1:   # kubelet writes the Node between our read and our patch
                admin.rest.call("PATCH", f"{NODES.path}/n1", body={"metadata": {"labels": {"rack": "c"}}},
                                content_type="application/merge-patch+json")
        return out

    agent.rest.call = call
    st = await agent.register_node(Node("n1", N1.address, 64700), 30)
    assert len(gets) == 2 and gets[0] != gets[1]      # the first patch got a 409 and was retried
    assert st.value == Node("n1", N1.address, 64700, labels=(("rack", "c"),))   # nobody's write was lost


async def test_a_rewatch_resumes_each_collection_where_it_was(admin, agent):
    # The merged watch's revision is the highest seen on any collection, so a collection can be
    # behind it; a re-watch from that revision must start each collection at its own position.
    # Provoked here by recording positions as the watch would after a node event overtook a pool event.
    await admin.put_resource(N1)
    snap = await agent.snapshot()
    pool = IPPool("default", IPv4Network("198.19.0.0/16"))
    await admin.put_resource(pool)                              # the pool event, not yet seen
    n1 = await admin.put_resource(Node("n1", N1.address, labels=(("rack", "a"),)))
    agent._remember(n1.revision, {**{k.plural: n1.revision for k in agent.kinds}, "ippools": snap.revision})
    it = agent.watch(n1.revision).__aiter__()
    got = await next_changes(it, lambda g: any(isinstance(e, Put) and e.stored.key == "ippools/default"
                                               for c in g for e in c.events))
    assert [e.stored.value for c in got for e in c.events if isinstance(e, Put)] == [pool]
    await it.aclose()


async def test_a_stream_the_server_ends_is_watched_again_from_where_it_was(admin, agent, monkeypatch):
    from podroute.kube import watcher

    monkeypatch.setattr(watcher, "WATCH_TIMEOUT_S", 2)           # the server ends each watch after 2 s
    opened: list[str] = []
    real_open = agent.rest.open

    def counting_open(method, path, **kw):
        if (kw.get("query") or {}).get("watch"):
            opened.append(kw["query"]["resourceVersion"])
        return real_open(method, path, **kw)

    agent.rest.open = counting_open
    snap = await agent.snapshot()
    it = agent.watch(snap.revision).__aiter__()
    await admin.put_resource(N1)
    got = await next_changes(it, lambda g: any(isinstance(e, Put) for c in g for e in c.events))
    for i in range(3):                                            # each change lands on a later stream
        await asyncio.sleep(watcher.WATCH_TIMEOUT_S + 0.5)
        pool = IPPool(f"p{i}", IPv4Network(f"198.19.{i}.0/24"))
        await admin.put_resource(pool)
        got = await next_changes(it, lambda g: any(isinstance(e, Put) and e.stored.value == pool
                                                   for c in g for e in c.events), timeout=10)
        assert not [e for c in got for e in c.events if not isinstance(e, Put)]
    await it.aclose()
    assert len(opened) >= 3 * len(agent.kinds)                    # the streams really were renewed
    assert len(set(opened)) > 1                                   # from the revision each had reached

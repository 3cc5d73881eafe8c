"""The agent's consumer (podroute.clusterwatch.ClusterWatch) on the kubernetes datastore and a
real kube-apiserver with RBAC on (tests/kubeutil.py): label and BGPPeer changes move sessions
at run time (no restart, unlike kube-router#1323), a deleted Node leaves the topology, a verb
missing from the role is a clear error in the watch's status and log and not a crash (and the
watch recovers once the role is fixed), and the in-cluster service account of configs/rbac.yaml
works."""
from __future__ import annotations

import asyncio
import logging
import re
import time
from ipaddress import IPv4Address

import pytest
from waiting import until

from podroute.clusterwatch import ClusterWatch
from podroute.datastore import BGPConfiguration, BGPPeer, Node, peers_for
from podroute.datastore.kubestore import KubeDatastore
from podroute.datastore.model import labels
from podroute.kube.codec import KINDS

A = IPv4Address
TOR = BGPPeer("tor-a", A("198.18.0.1"), 65000, node_selector=labels({"rack": "a"}))
ROLE = "/apis/rbac.authorization.k8s.io/v1/clusterroles/podroute-node"


def node(name: str, ip: str, rack: str) -> Node:
    return Node(name, A(ip), labels=labels({"rack": rack, "topology.kubernetes.io/zone": "z1"}))


@pytest.fixture
async def admin(kube_apiserver):
    ds = KubeDatastore(kube_apiserver.kubeconfig("admin"))
    for kind in KINDS:
        await asyncio.to_thread(ds.rest.call, "DELETE", kind.path)
    await ds.put_resource(BGPConfiguration())
    yield ds
    await ds.close()


async def watching(kube_apiserver, me: Node, got: list):
    ds = KubeDatastore(kube_apiserver.kubeconfig("agent"), node_name=me.name)
    w = ClusterWatch(ds, node_name=me.name, node_ip=me.address, on_change=got.append, backoff_s=(0.1, 0.5),
                     register=me)
    return ds, w, asyncio.create_task(w.run())


def tor_nodes(cluster) -> set[str]:
    return {n.name for n in cluster.nodes if any(s.peer.address == TOR.peer_ip for s in peers_for(n.name, cluster))}


async def test_relabelling_moves_the_peer_and_a_deleted_node_leaves_at_run_time(kube_apiserver, admin):
    n1, n2 = node("n1", "198.18.0.11", "a"), node("n2", "198.18.0.12", "b")
    await admin.put_resource(n1)
    await admin.put_resource(n2)
    await admin.put_resource(TOR)
    got: list = []
    ds, w, task = await watching(kube_apiserver, n1, got)
    try:
        await until(lambda: got and tor_nodes(got[-1]) == {"n1"}, 15, "the first topology")
        t0 = time.monotonic()
        await admin.put_resource(node("n1", "198.18.0.11", "b"))      # kubectl label --overwrite
        await admin.put_resource(node("n2", "198.18.0.12", "a"))
        await until(lambda: tor_nodes(got[-1]) == {"n2"}, 10, "the ToR session to move to n2")
        moved_s = time.monotonic() - t0
        assert moved_s < 5, moved_s
        await admin.put_resource(BGPPeer("tor-a", TOR.peer_ip, 65000, node_selector=labels({"rack": "b"})))
        await until(lambda: tor_nodes(got[-1]) == {"n1"}, 10, "the BGPPeer's new selector")
        await admin.delete_resource("nodes/n2")                        # kubectl delete node n2
        await until(lambda: [n.name for n in got[-1].nodes] == ["n1"], 10, "n2 to leave")
        assert not task.done() and w.status()["available"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ds.close()


async def set_rules(admin: KubeDatastore, rules: list) -> list:
    """Replace the shipped ClusterRole's rules; returns the rules it had."""
    role = await asyncio.to_thread(admin.rest.call, "GET", ROLE)
    old, role["rules"] = role["rules"], rules
    await asyncio.to_thread(admin.rest.call, "PUT", ROLE, body=role)
    return old


def without(rules: list, resource: str, verb: str) -> list:
    out = []
    for r in rules:
        verbs = [v for v in r["verbs"] if not (resource in r.get("resources", ()) and v == verb)]
        if verbs:
            out.append({**r, "verbs": verbs})
    return out


@pytest.mark.parametrize("resource, verb, named", [
    # the rule that loses `watch` covers pools, peers and the BGP configuration: the first
    # watch refused is named
    ("bgppeers", "watch", r"denied watch (ippools|bgppeers|bgpconfigurations)\.podroute\.io: .*podroute-agent"),
    ("nodes/status", "patch", r"denied patch nodes/status: .*podroute-agent"),     # the registration
])
async def test_a_verb_missing_from_the_role_is_a_clear_error_and_the_watch_recovers(kube_apiserver, admin, caplog,
                                                                                    resource, verb, named):
    n1 = node("n1", "198.18.0.11", "a")
    await admin.put_resource(n1)
    role = await asyncio.to_thread(admin.rest.call, "GET", ROLE)
    shipped = await set_rules(admin, without(role["rules"], resource, verb))
    got: list = []
    caplog.set_level(logging.ERROR, "podroute.clusterwatch")
    ds, w, task = await watching(kube_apiserver, n1, got)
    try:
        await until(lambda: not w.available and w.last_error, 15, "the watch to fail on the missing verb")
        err = w.status()["last_error"]
        assert re.search(named, err) and "configs/rbac.yaml" in err, err
        assert any(err in str(getattr(r, "kv", "")) for r in caplog.records)
        assert not task.done()                                         # no crash: it retries
        await asyncio.sleep(1.0)                                       # several backoff rounds
        assert not task.done() and not w.available
        await set_rules(admin, shipped)
        # no event needed: the store says so once every collection is watched again
        await until(lambda: w.available, 15, "the watch to recover once the role grants the verb")
        await admin.put_resource(TOR)
        await until(lambda: got and tor_nodes(got[-1]) == {"n1"}, 10, "a peer added after the recovery")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ds.close()
        await set_rules(admin, shipped)


async def test_the_in_cluster_service_account_has_the_role(kube_apiserver, admin, tmp_path, monkeypatch):
    from kubernetes.config import incluster_config

    await admin.put_resource(node("n1", "198.18.0.11", "a"))
    req = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
           "spec": {"audiences": ["https://kubernetes.default.svc.cluster.local"], "expirationSeconds": 3600}}
    resp = await asyncio.to_thread(admin.rest.call, "POST",
                                   "/api/v1/namespaces/kube-system/serviceaccounts/podroute-node/token", body=req)
    (tmp_path / "token").write_text(resp["status"]["token"])
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(kube_apiserver.ca_file))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(kube_apiserver.port))
    ds = KubeDatastore(None, node_name="n1")
    try:
        snap = await ds.snapshot()
        assert "nodes/n1" in snap.items and ds.location == kube_apiserver.url
        st = await ds.register_node(Node("n1", A("198.18.0.11"), 64600), 30)
        assert st.value.asn == 64600
    finally:
        await ds.close()

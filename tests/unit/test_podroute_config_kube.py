"""The node config's ``datastore: {type: kubernetes}``, the factory that opens it, and a node
whose block is its Node's ``spec.podCIDR`` (``usePodCIDR``): on the fake datastore for the agent
(no claim, no growth, the ADD error names the podCIDR) and on the real kube-apiserver for the
start (it waits, saying why, until the Node has a podCIDR)."""
from __future__ import annotations

import asyncio
import logging
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
import yaml
from test_podroute_dynblocks import FAST, T, Member, dirs, fill, logged  # noqa: F401 (dirs: fixture)
from test_podroute_agent import FakeSpeaker, SharedKernel
from waiting import until

from cni.errors import TRY_AGAIN_LATER, CNIError
from felix.fake import FakeDataplane
from ipip.fake import FakeDataplane as FakeIPIP
from podroute.agent import Agent
from podroute.blocks_wiring import start_node
from podroute.config import DatastoreConfig, IpamConfig, KubernetesConfig, NodeConfig, Paths, parse
from podroute.datastore import IPAMBlock, IPPool, Node
from podroute.datastore.fake import FakeDatastore, FakeServer
from podroute.datastore.kubestore import KubeDatastore
from podroute.datastore.open import open_datastore
from podroute.schema import ConfigError

N = IPv4Network
BASE = {"nodeName": "n1", "nodeIP": "198.18.0.11"}


def kubeconfig(path: Path, server: str = "https://127.0.0.1:6443") -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    return path


def cfg(**kw) -> NodeConfig:
    return parse({**BASE, **kw}, "node.yaml")


def test_a_kubernetes_node_needs_neither_pod_cidrs_nor_pools(tmp_path):
    kc = kubeconfig(tmp_path / "kubeconfig")
    c = cfg(datastore={"type": "kubernetes", "kubernetes": {"kubeconfig": str(kc)}})
    assert c.datastore == DatastoreConfig("kubernetes", kubernetes=KubernetesConfig(kc, False))
    assert c.pod_cidrs == () and c.ip_pools == ()
    assert c.datastore.from_datastore and c.datastore.claims_blocks
    pod = cfg(datastore={"type": "kubernetes", "kubernetes": {"usePodCIDR": True}})      # in-cluster
    assert pod.datastore.kubernetes == KubernetesConfig(None, True)
    assert pod.datastore.from_datastore and not pod.datastore.claims_blocks
    assert cfg(podCIDRs=["198.19.0.0/26"], ipPools=[{"cidr": "198.19.0.0/16"}]).datastore.from_datastore is False


@pytest.mark.parametrize("kw,match", [
    ({"datastore": {"type": "kubernetes", "kubernetes": {"kubeconfig": "/nonexistent/kc"}}},
     r"^node.yaml: datastore.kubernetes.kubeconfig: '/nonexistent/kc' is not a file: want a kubeconfig \(absent: "
     r"the in-cluster service account\)$"),
    ({"datastore": {"type": "kubernetes", "kubernetes": {"kubeconfig": "BAD"}}},
     r"^node.yaml: datastore.kubernetes.kubeconfig: '.*/bad-kubeconfig' is not a usable kubeconfig: "),
    ({"datastore": {"type": "kubernetes", "kubernetes": {"usePodCIDR": "yes"}}},
     r"^node.yaml: datastore.kubernetes.usePodCIDR: expected true or false"),
    ({"datastore": {"type": "kubernetes", "kubernetes": {"namespace": "x"}}},
     r"^node.yaml: datastore.kubernetes.namespace: unknown key$"),
    ({"datastore": {"type": "etcd", "etcd": {"endpoints": ["http://198.18.0.2:2379"]},
                    "kubernetes": {"usePodCIDR": True}}},
     r"^node.yaml: datastore.kubernetes: is set but datastore.type is etcd; set type: kubernetes or remove it$"),
    ({"datastore": {"type": "kubernetes", "kubernetes": {"usePodCIDR": True}}, "podCIDRs": ["198.19.0.0/26"]},
     r"^node.yaml: podCIDRs: is set but datastore.kubernetes.usePodCIDR is true: the node's block is its Node's "
     r"spec.podCIDR; remove podCIDRs$"),
    ({"datastore": {"type": "kubernetes"}, "labels": {"rack": "a"}},
     r"^node.yaml: labels: is not used with datastore type kubernetes: the Node's labels are \(kubelet "
     r"--node-labels, kubectl label node\); remove labels$"),
    ({"datastore": {"type": "kubernetes"}, "clusterFile": "/etc/podroute/cluster.yaml"},
     r"^node.yaml: clusterFile: is for datastore type file; with type kubernetes the datastore holds"),
])
def test_bad_kubernetes_keys_are_named(tmp_path, kw, match):
    bad = tmp_path / "bad-kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n")
    k = kw["datastore"].get("kubernetes", {})
    if k.get("kubeconfig") == "BAD":
        kw = {**kw, "datastore": {**kw["datastore"], "kubernetes": {**k, "kubeconfig": str(bad)}}}
    with pytest.raises(ConfigError, match=match):
        cfg(**kw)


def test_open_datastore_builds_the_kubernetes_store_for_this_node(tmp_path):
    kc = kubeconfig(tmp_path / "kubeconfig")
    s = open_datastore(cfg(datastore={"type": "kubernetes", "kubernetes": {"kubeconfig": str(kc)}}))
    assert isinstance(s, KubeDatastore)          # the constructor does no I/O: nothing dialled
    assert (s.rest.kubeconfig, s.node_name, s.use_pod_cidr, s.supports_claims, s.blocks_from_store) == \
        (kc, "n1", False, True, True)
    p = open_datastore(cfg(datastore={"type": "kubernetes", "kubernetes": {"usePodCIDR": True}}))
    assert isinstance(p, KubeDatastore) and p.rest.kubeconfig is None and p.node_name == "n1"
    assert p.use_pod_cidr and not p.supports_claims and p.blocks_from_store


# -- usePodCIDR: the agent on the fake datastore ------------------------------------------------------
class PodCIDRStore(FakeDatastore):
    """The fake as a store whose blocks are the Nodes' podCIDRs: it cannot claim."""
    supports_claims = False


def pod_cidr_config(d: Path) -> NodeConfig:
    return NodeConfig(node_name="n1", node_ip=IPv4Address("198.18.0.11"), pod_cidrs=(), ip_pools=(),
                      paths=Paths(d / "state", d / "run"), resync_interval=3600,
                      datastore=DatastoreConfig("kubernetes", kubernetes=KubernetesConfig(None, True)),
                      ipam=IpamConfig(0, 0.0))


async def test_a_pod_cidr_node_neither_claims_nor_grows_and_says_why_an_add_fails(dirs):
    server = FakeServer()
    pod_cidr = N("198.19.0.16/28")
    server.put(IPPool("pool", N("198.19.0.0/24"), 28), Node("n1", IPv4Address("198.18.0.11")),
               IPAMBlock(pod_cidr, "n1"))                       # what the Node's spec.podCIDR decodes to
    cfg = pod_cidr_config(dirs())
    store = PodCIDRStore(server)
    start = await start_node(cfg, store, backoff_s=FAST)
    assert start.blocks == (pod_cidr,) and start.tunnel_address == pod_cidr.network_address
    dp = FakeDataplane(links=("eth0",))
    agent = Agent(cfg, dataplane=dp, wiring=SharedKernel(dp), speaker_factory=FakeSpeaker, start_monitor=False,
                  ipip_dataplane=FakeIPIP(), datastore=store, start=start)
    agent.blocks.nodeblocks.interval_s = 0.05
    n = await Member(agent, dp, agent.cni.wiring, store).run()
    try:
        assert set(n.agent.speaker.announced) == {pod_cidr}
        await fill(n, 15)                                        # 16 addresses, one is the tunnel's
        with pytest.raises(CNIError) as ei:
            await asyncio.wait_for(n.add(15), 2)
        assert ei.value.code == TRY_AGAIN_LATER and "spec.podCIDR" in ei.value.msg and "full" in ei.value.msg
        await asyncio.sleep(0.3)                                 # several upkeep rounds
        assert "claim_block" not in server.calls and "release_block" not in server.calls
        assert n.blocks == (pod_cidr,) and list(n.agent.ipam.blocks) == [pod_cidr]
    finally:
        await n.stop()


# -- usePodCIDR: the start on a real kube-apiserver ---------------------------------------------------
async def test_a_pod_cidr_node_waits_for_its_nodes_pod_cidr_on_a_real_api_server(kube_apiserver, dirs, caplog):
    admin = KubeDatastore(kube_apiserver.kubeconfig("admin"))
    for path in ("/api/v1/nodes", "/apis/podroute.io/v1/ippools"):
        await asyncio.to_thread(admin.rest.call, "DELETE", path)
    await admin.put_resource(IPPool("pool", N("198.19.0.0/16"), 24))
    await admin.put_resource(Node("n1", IPv4Address("198.18.0.11")))   # as kubelet registers it: no podCIDR
    store = KubeDatastore(kube_apiserver.kubeconfig("agent"), node_name="n1", use_pod_cidr=True)
    caplog.set_level(logging.ERROR, "podroute.blocks")
    starting = asyncio.create_task(start_node(pod_cidr_config(dirs()), store, backoff_s=(0.05, 0.2)))
    try:
        await until(lambda: logged(caplog, "Node n1 has no spec.podCIDR yet"), T, "the reason it waits")
        assert not starting.done()
        # kube-controller-manager's --allocate-node-cidrs sets it (spec.podCIDR may be set once)
        await asyncio.to_thread(admin.rest.call, "PATCH", "/api/v1/nodes/n1", body={"spec": {"podCIDR": "198.19.7.0/24",
                                "podCIDRs": ["198.19.7.0/24"]}}, content_type="application/merge-patch+json")
        start = await asyncio.wait_for(starting, T)
        assert start.blocks == (N("198.19.7.0/24"),) and start.pools[0].cidr == N("198.19.0.0/16")
        assert start.node.ipip_tunnel_address is None and start.node.address == IPv4Address("198.18.0.11")
        snap = await admin.snapshot()
        assert not any(k.startswith("ipamblocks/") for k in snap.items)      # nothing claimed
    finally:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await store.close()
        await admin.close()


async def test_a_claiming_node_waits_for_its_node_object_then_claims_on_a_real_api_server(kube_apiserver, dirs,
                                                                                          caplog):
    admin = KubeDatastore(kube_apiserver.kubeconfig("admin"))
    for path in ("/api/v1/nodes", "/apis/podroute.io/v1/ippools", "/apis/podroute.io/v1/ipamblocks"):
        await asyncio.to_thread(admin.rest.call, "DELETE", path)
    await admin.put_resource(IPPool("pool", N("198.19.0.0/16"), 26))
    store = KubeDatastore(kube_apiserver.kubeconfig("agent"), node_name="n2")
    cfg = NodeConfig(node_name="n2", node_ip=IPv4Address("198.18.0.12"), pod_cidrs=(), ip_pools=(),
                     paths=Paths(dirs() / "state", dirs() / "run"),
                     datastore=DatastoreConfig("kubernetes", kubernetes=KubernetesConfig(None, False)))
    caplog.set_level(logging.ERROR, "podroute.blocks")
    starting = asyncio.create_task(start_node(cfg, store, backoff_s=(0.05, 0.2)))
    try:
        await until(lambda: logged(caplog, "no Node object named n2 yet"), T, "the reason it waits")
        assert not any(k.startswith("ipamblocks/") for k in (await admin.snapshot()).items)   # no orphan claim
        await admin.put_resource(Node("n2", IPv4Address("198.18.0.12")))      # kubelet registers the Node
        start = await asyncio.wait_for(starting, T)
        (block,) = start.blocks
        held = {s.value.cidr: s.value.affinity for k, s in (await admin.snapshot()).items.items()
                if k.startswith("ipamblocks/")}
        assert held == {block: "n2"} and block.prefixlen == 26
    finally:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await store.close()
        await admin.close()


async def test_another_nodes_bad_node_object_does_not_keep_an_agent_from_starting(kube_apiserver, dirs, caplog):
    """A Node podroute cannot use (here: created without any address, as ``kubectl create``
    of a bare manifest leaves it) is someone else's: the agent's first topology logs and skips
    it, as on etcd, instead of refusing to start (the file datastore, the operator's own file,
    still stops the start)."""
    from podroute.clusterwatch import ClusterWatch
    admin = KubeDatastore(kube_apiserver.kubeconfig("admin"))
    for path in ("/api/v1/nodes", "/apis/podroute.io/v1/ippools", "/apis/podroute.io/v1/ipamblocks"):
        await asyncio.to_thread(admin.rest.call, "DELETE", path)
    await admin.put_resource(IPPool("pool", N("198.19.0.0/16"), 26))
    await admin.put_resource(Node("n1", IPv4Address("198.18.0.11")))
    await asyncio.to_thread(admin.rest.call, "POST", "/api/v1/nodes",
                            body={"apiVersion": "v1", "kind": "Node", "metadata": {"name": "bare"}})
    store = KubeDatastore(kube_apiserver.kubeconfig("agent"), node_name="n1")
    try:
        snap = await store.snapshot()
        assert [b.key for b in snap.invalid] == ["nodes/bare"]
        caplog.set_level(logging.ERROR, "podroute.clusterwatch")
        w = ClusterWatch(store, node_name="n1", node_ip=IPv4Address("198.18.0.11"), on_change=lambda c: None,
                         register=Node("n1", IPv4Address("198.18.0.11")))
        cluster = w.prime(snap)
        assert [n.name for n in cluster.nodes] == ["n1"]
        assert logged(caplog, "nodes/bare") and w.errors == 1
    finally:
        await store.close()
        await admin.close()


# -- a node config with nothing of the node's own (the same file on every node) ----------------------
def test_on_kubernetes_node_name_and_ip_may_come_from_the_environment_and_the_node(tmp_path, monkeypatch):
    kc = str(kubeconfig(tmp_path / "kubeconfig"))
    shared = {"datastore": {"type": "kubernetes", "kubernetes": {"kubeconfig": kc}}, "metrics": {"port": 9091}}
    monkeypatch.setenv("NODENAME", "worker-3")
    c = parse(shared, "node.yaml")
    assert c.node_name == "worker-3" and c.node_ip_from_node
    r = c.with_node_ip(IPv4Address("198.18.0.23"))
    assert (r.node_ip, r.metrics.address, r.node_ip_from_node, r.bgp_router_id) == \
        (IPv4Address("198.18.0.23"),) * 2 + (False, IPv4Address("198.18.0.23"))
    monkeypatch.delenv("NODENAME")
    monkeypatch.setattr("socket.gethostname", lambda: "Worker-7.example.com")
    assert parse(shared, "node.yaml").node_name == "worker-7"          # Calico's fallback: the host name
    monkeypatch.setenv("NODENAME", "Bad_Name")
    with pytest.raises(ConfigError, match=r"^node.yaml: nodeName \(from the NODENAME environment variable\): "
                                          r"'Bad_Name' is not a DNS-1123 label"):
        parse(shared, "node.yaml")
    explicit = parse({**BASE, **shared}, "node.yaml")                   # set in the file: as given
    assert (explicit.node_name, explicit.node_ip, explicit.node_ip_from_node) == ("n1", IPv4Address("198.18.0.11"),
                                                                                  False)
    with pytest.raises(ConfigError, match=r"^node.yaml: nodeName: is required$"):   # elsewhere still required
        parse({"datastore": {"type": "etcd", "etcd": {"endpoints": ["http://198.18.0.2:2379"]}}}, "node.yaml")


async def test_a_node_without_node_ip_in_its_config_takes_its_nodes_internal_ip(kube_apiserver, dirs, tmp_path,
                                                                                monkeypatch):
    admin = KubeDatastore(kube_apiserver.kubeconfig("admin"))
    for path in ("/api/v1/nodes", "/apis/podroute.io/v1/ippools", "/apis/podroute.io/v1/ipamblocks"):
        await asyncio.to_thread(admin.rest.call, "DELETE", path)
    await admin.put_resource(IPPool("pool", N("198.19.0.0/16"), 26))
    await admin.put_resource(Node("w3", IPv4Address("198.18.0.23")))
    monkeypatch.setenv("NODENAME", "w3")
    d = dirs()
    cfg = parse({"datastore": {"type": "kubernetes",
                               "kubernetes": {"kubeconfig": str(kube_apiserver.kubeconfig("agent"))}},
                 "paths": {"stateDir": str(d / "s"), "runDir": str(d / "r")}}, "node.yaml")
    store = KubeDatastore(kube_apiserver.kubeconfig("agent"), node_name="w3")
    try:
        start = await asyncio.wait_for(start_node(cfg, store, backoff_s=(0.05, 0.2)), T)
        assert start.node.address == IPv4Address("198.18.0.23")
        agent_cfg = start.config(cfg)
        assert agent_cfg.node_ip == IPv4Address("198.18.0.23") and not agent_cfg.node_ip_from_node
        assert agent_cfg.pod_cidrs == start.blocks and len(start.blocks) == 1
    finally:
        await store.close()
        await admin.close()

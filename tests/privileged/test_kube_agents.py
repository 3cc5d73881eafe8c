"""Two real agents (``podroute node run``) on a real kube-apiserver, each in its own throwaway
netns, with the shipped role's credentials (tests/kubeutil.py's ``agent`` user, bound to
``configs/rbac.yaml``'s ClusterRole only) and RBAC on.

Layout (every address from 198.18.0.0/15, nothing in the root namespace)::

    ctl   br0 198.18.0.2/24: etcd on its loopback, kube-apiserver on 198.18.0.2
    n1    eth0 198.18.0.11/24 -- veth -- br0
    n2    eth0 198.18.0.12/24 -- veth -- br0

etcd, kube-apiserver and every admin call run from threads moved into ``ctl``
(``nlcore.netns.call_in_netns``), so the test process reaches them without a route.
The Nodes are created as kubelet creates them (InternalIP, hostname/os/zone labels), then
the agents start with nothing but a kubeconfig. The tests (issue 18's must-shows, on real
agents): each node claims one block (two distinct IPAMBlock objects, read back by
``kubectl``), the node-to-node session is Established on both and each FIB routes the other's
block (1's agent side); ``kubectl label`` moves a BIRD ToR session (2); ``kubectl delete
node`` and a Node created by ``kubectl create`` joining with only a kubeconfig (3); a verb
cut from the role (4). The 60 s outage (5) is tests/privileged/test_kube_outage.py.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
import yaml
from nsutil import sh, stop_group
from waiting import wait

from nlcore.netns import call_in_netns
from nlcore.route import PODROUTE_PROTO
from podroute.datastore import BGPConfiguration, BGPPeer, IPPool, Node
from podroute.datastore.model import labels

pytestmark = pytest.mark.privileged
ROOT = Path(__file__).resolve().parents[2]
CTL_IP = "198.18.0.2"
NODES = {"n1": "198.18.0.11", "n2": "198.18.0.12"}
POOL = IPPool("default-pool", IPv4Network("198.19.0.0/16"), block_size=26)
CONVERGE_S = 60      # both agents up, claimed, Established and programmed, on a loaded 2-core machine
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
GRACE_S = 2          # ipam.releaseGracePeriod: a deleted Node's blocks go back after this
TOR = BGPPeer("tor", IPv4Address(CTL_IP), 65000, node_selector=labels({"rack": "a"}))
ROLE = "/apis/rbac.authorization.k8s.io/v1/clusterroles/podroute-node"


def kubelet_node(name: str, ip: str, **extra: str) -> Node:
    """A Node as kubelet registers it: its InternalIP and the well-known labels."""
    return Node(name, IPv4Address(ip), labels=labels({"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                                      "topology.kubernetes.io/zone": "zone-a", **extra}))


class Agent:
    def __init__(self, name: str, ns: str, d: Path, kubeconfig: Path) -> None:
        self.name, self.ns, self.d = name, ns, d
        self.conf, self.log = d / "node.yaml", d / "agent.log"
        d.mkdir(parents=True)
        self.conf.write_text(yaml.safe_dump({
            "nodeName": name, "nodeIP": NODES[name],
            "datastore": {"type": "kubernetes", "kubernetes": {"kubeconfig": str(kubeconfig)}},
            "gracefulRestartTime": 10, "resyncInterval": 3600,
            "ipam": {"releaseGracePeriod": GRACE_S},
            "paths": {"stateDir": str(d / "state"), "runDir": str(d / "run")}}))
        self.proc: subprocess.Popen | None = None

    def start(self, *env: str) -> None:
        """``env``: ``NAME=value`` settings for the agent (``NODENAME=n2``)."""
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, "env", *env, sys.executable, "-m",
                                          "podroute.cli",
                                          "node", "run", "--config", str(self.conf)], cwd=ROOT, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def status(self) -> dict | None:
        p = subprocess.run([sys.executable, "-m", "podroute.cli", "status", "--json", "--config", str(self.conf)],
                           cwd=ROOT, capture_output=True, text=True, timeout=20)
        return json.loads(p.stdout) if p.returncode == 0 else None

    def peers(self) -> dict[str, dict]:
        """``{peer address: status row}`` ({} while the agent does not answer)."""
        st = self.status()
        return {p["address"]: p for p in st["bgp"]["peers"]} if st else {}

    def routes(self) -> str:
        return sh("ip", "route", "show", "proto", str(PODROUTE_PROTO), ns=self.ns).stdout

    def stop(self) -> None:
        stop_group(self.proc, 20, 5)

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"


@pytest.fixture
def cluster(make_netns, tmp_path):
    """ctl with etcd + kube-apiserver on the underlay, n1 and n2 wired to its bridge."""
    from kubeutil import KubeAPIServer, binary

    if shutil.which("etcd") is None or not binary().exists():
        pytest.skip(f"needs Debian's etcd-server and {binary()} (scripts/setup builds it)")
    ctl = make_netns("kctl")
    sh("ip", "link", "add", "br0", "type", "bridge", ns=ctl)
    sh("ip", "addr", "add", f"{CTL_IP}/24", "dev", "br0", ns=ctl)
    sh("ip", "link", "set", "br0", "up", ns=ctl)
    nss = {}
    for name, ip in NODES.items():
        ns = make_netns(f"k{name}")
        sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"p{name}", ns=ctl)
        sh("ip", "link", "set", f"p{name}", "master", "br0", "up", ns=ctl)
        sh("ip", "addr", "add", f"{ip}/24", "dev", "eth0", ns=ns)
        sh("ip", "link", "set", "eth0", "up", ns=ns)
        sh("ip", "route", "add", "default", "via", CTL_IP, ns=ns)   # a node has one; inside its netns
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=ns)          # it routes for its pods
        nss[name] = ns
    server = KubeAPIServer(tmp_path / "kube", host=CTL_IP)
    short = Path(tempfile.mkdtemp(prefix="prk-", dir="/tmp"))   # unix socket paths stay short
    agents: dict[str, Agent] = {}
    try:
        call_in_netns(ctl, server.start, timeout=120, name="kube-ctl")
        for name, ns in nss.items():
            agents[name] = Agent(name, ns, short / name, server.kubeconfig("agent"))
        yield ctl, server, agents
    finally:
        for a in agents.values():
            a.stop()
        server.stop()
        shutil.rmtree(short, ignore_errors=True)


def admin(ctl: str, server, op) -> object:
    """``await op(store)`` on an admin KubeDatastore, from a thread inside ``ctl``."""
    from podroute.datastore.kubestore import KubeDatastore

    async def run():
        ds = KubeDatastore(server.kubeconfig("admin"))
        try:
            return await op(ds)
        finally:
            await ds.close()
    return call_in_netns(ctl, lambda: asyncio.run(run()), timeout=60, name="kube-admin")


def kubectl(ctl: str, server, *args: str) -> str:
    return sh(KUBECTL, "--kubeconfig", str(server.kubeconfig("admin")), *args, ns=ctl, timeout=30).stdout


def test_two_agents_claim_peer_and_route_on_a_real_api_server(cluster):
    ctl, server, agents = cluster
    t0 = time.monotonic()
    seed(ctl, server)
    for a in agents.values():
        a.start()
    try:
        def blocks() -> dict[str, str] | None:
            out = json.loads(kubectl(ctl, server, "get", "ipamblocks", "-o", "json"))
            held = {i["spec"]["affinity"].removeprefix("host:"): i["spec"]["cidr"] for i in out["items"]}
            return held if set(held) == set(NODES) else None
        held = wait(blocks, CONVERGE_S, "an IPAMBlock for each node")
        assert len(out := kubectl(ctl, server, "get", "ipamblocks", "--no-headers").splitlines()) == 2, out
        assert held["n1"] != held["n2"]
        assert not IPv4Network(held["n1"]).overlaps(IPv4Network(held["n2"]))
        assert all(IPv4Network(c).subnet_of(POOL.cidr) and IPv4Network(c).prefixlen == 26 for c in held.values())

        def established(a: Agent) -> bool:
            st = a.status()
            return bool(st) and [p["state"] for p in st["bgp"]["peers"]] == ["established"]
        for a in agents.values():
            wait(lambda: established(a), CONVERGE_S, f"{a.name}'s session Established")
        other = {"n1": "n2", "n2": "n1"}
        for name, a in agents.items():
            want = f"{held[other[name]]} via {NODES[other[name]]} dev eth0"
            wait(lambda: want in a.routes(), CONVERGE_S, f"{name}'s route to {other[name]}'s block")
            st = a.status()
            assert st["datastore"]["datastore"] == "kubernetes" and st["datastore"]["state"] == "connected"
            assert [b["cidr"] for b in st["datastore"]["blocks"]] == [held[name]]
        # what podroute wrote on the Nodes (through nodes/status), as kubectl shows it
        ann = json.loads(kubectl(ctl, server, "get", "node", "n1", "-o", "json"))["metadata"]["annotations"]
        assert ann["podroute.io/IPv4Address"] == NODES["n1"] and ann["podroute.io/ASNumber"] == "64512"
        print(f"\ntwo agents on kube-apiserver: blocks {held}, converged in {time.monotonic() - t0:.1f} s")
        for a in agents.values():
            assert a.proc is not None and a.proc.poll() is None, a.tail()
    except BaseException:
        for a in agents.values():
            print(f"--- {a.name} log ---\n{a.tail()}")
        raise


def seed(ctl, server, *extra, nodes=None):
    async def op(ds):
        await ds.put_resource(BGPConfiguration())             # node-to-node mesh on
        await ds.put_resource(POOL)
        for r in extra:
            await ds.put_resource(r)
        for n in nodes or [kubelet_node(name, ip) for name, ip in NODES.items()]:
            await ds.put_resource(n)
    admin(ctl, server, op)


def held_blocks(ctl, server) -> dict[str, str]:
    out = json.loads(kubectl(ctl, server, "get", "ipamblocks", "-o", "json"))
    return {i["spec"]["affinity"].removeprefix("host:"): i["spec"]["cidr"] for i in out["items"]}


def converged(agents: dict[str, Agent], held: dict[str, str]) -> bool:
    for name, a in agents.items():
        for other, ip in NODES.items():
            if other != name and f"{held.get(other)} via {ip} dev eth0" not in a.routes():
                return False
    return True


def test_kubectl_delete_node_removes_its_session_and_routes_and_its_block_returns(cluster):
    """Must-show 3 on real agents: ``kubectl delete node n2`` takes n2's session and route off
    n1 at run time, and n2's block is released (deleted) after the grace period."""
    ctl, server, agents = cluster
    seed(ctl, server)
    for a in agents.values():
        a.start()
    try:
        held = wait(lambda: (h := held_blocks(ctl, server)) and set(h) == set(NODES) and h, CONVERGE_S,
                    "a block per node")
        wait(lambda: converged(agents, held), CONVERGE_S, "each FIB to route the other's block")
        n1 = agents["n1"]
        assert set(n1.peers()) == {NODES["n2"]}
        t0 = time.monotonic()
        kubectl(ctl, server, "delete", "node", "n2")
        wait(lambda: n1.status() and n1.peers() == {}, 15, "n1 to drop its session to the deleted n2")
        wait(lambda: held["n2"] not in n1.routes(), 15, "n1 to drop the route to n2's block")
        gone_s = time.monotonic() - t0
        wait(lambda: "n2" not in held_blocks(ctl, server), GRACE_S + 20, "n2's block released after the grace")
        released_s = time.monotonic() - t0
        assert released_s >= GRACE_S
        assert held_blocks(ctl, server) == {"n1": held["n1"]}
        assert n1.proc.poll() is None and agents["n2"].proc.poll() is None   # neither agent crashed
        print(f"\ndelete node n2: session and route gone in {gone_s:.1f} s, block released in {released_s:.1f} s "
              f"(grace {GRACE_S} s)")
    except BaseException:
        for a in agents.values():
            print(f"--- {a.name} log ---\n{a.tail()}")
        raise


def test_relabelling_a_node_moves_its_tor_session_at_run_time_and_nothing_else_flaps(cluster, tmp_path):
    """Must-show 2 on real agents and a real BIRD ToR: a BGPPeer with ``nodeSelector: rack ==
    'a'``; ``kubectl label`` moves the ToR session from n1 to n2 within seconds, and the
    node-to-node session never re-establishes."""
    from test_bgp_bird import Bird

    from podroute.lab.bird import BirdNeighbor, render
    ctl, server, agents = cluster
    seed(ctl, server, TOR, nodes=[kubelet_node("n1", NODES["n1"], rack="a"),
                                  kubelet_node("n2", NODES["n2"], rack="b")])
    neighbors = [BirdNeighbor(n, IPv4Address(ip), 64512) for n, ip in NODES.items()]
    bird = Bird(ctl, tmp_path / "bird", conf=render(IPv4Address(CTL_IP), 65000, neighbors,
                                                    tmp_path / "bird" / "bird.log", role="tor"))
    bird.start()
    for a in agents.values():
        a.start()
    n1, n2 = agents["n1"], agents["n2"]

    def up(a: Agent, addr: str) -> bool:
        return a.peers().get(addr, {}).get("state") == "established"
    try:
        wait(lambda: up(n1, CTL_IP) and up(n1, NODES["n2"]) and up(n2, NODES["n1"]), CONVERGE_S,
             "n1 on the ToR and the mesh up")
        assert set(n2.peers()) == {NODES["n1"]}                 # rack b: no ToR session
        mesh_since = (n1.peers()[NODES["n2"]]["since"], n2.peers()[NODES["n1"]]["since"])
        assert all(isinstance(t, (int, float)) and t > 0 for t in mesh_since), mesh_since   # when it came up
        t0 = time.monotonic()
        kubectl(ctl, server, "label", "node", "n1", "rack=b", "--overwrite")
        kubectl(ctl, server, "label", "node", "n2", "rack=a", "--overwrite")
        wait(lambda: up(n2, CTL_IP) and CTL_IP not in n1.peers(), 30, "the ToR session to move to n2")
        moved_s = time.monotonic() - t0
        assert "Established" in bird.birdc("show", "protocols", "n2")
        now = (n1.peers()[NODES["n2"]], n2.peers()[NODES["n1"]])
        assert [p["state"] for p in now] == ["established", "established"]
        assert (now[0]["since"], now[1]["since"]) == mesh_since          # the mesh session never flapped
        assert moved_s < 10, moved_s
        print(f"\nrelabel: ToR session moved n1 -> n2 in {moved_s:.1f} s; mesh session untouched")
    except BaseException:
        for a in agents.values():
            print(f"--- {a.name} log ---\n{a.tail()}")
        raise
    finally:
        bird.kill()


def test_a_verb_missing_from_the_role_is_a_clear_error_in_the_agents_log_and_status(cluster):
    """Must-show 4 on a real agent: with ``watch`` taken off the rule for pools, peers and the
    BGP configuration, the agent starts (list and claims are allowed), reports the denied verb
    in ``podroute status`` and its log, keeps running, and recovers once the role is restored."""
    ctl, server, agents = cluster
    seed(ctl, server)

    async def set_rules(ds, cut: bool):
        role = await asyncio.to_thread(ds.rest.call, "GET", ROLE)
        if cut:
            role["rules"] = [{**r, "verbs": [v for v in r["verbs"] if v != "watch"]}
                             if "bgppeers" in r.get("resources", ()) else r for r in role["rules"]]
            return role, await asyncio.to_thread(ds.rest.call, "PUT", ROLE, body=role)
        return role
    shipped = admin(ctl, server, lambda ds: set_rules(ds, False))
    admin(ctl, server, lambda ds: set_rules(ds, True))
    n1 = agents["n1"]
    n1.start()
    try:
        def denied() -> str | None:
            st = n1.status()
            err = (st or {}).get("datastore", {}).get("last_error") or ""
            return err if st and st["datastore"]["state"] == "unavailable" and "denied watch" in err else None
        err = wait(denied, CONVERGE_S, "the denied verb in n1's status")
        assert "podroute-agent" in err and "configs/rbac.yaml" in err, err
        assert "denied watch" in n1.log.read_text(errors="replace")
        time.sleep(2)                                  # several retry rounds: still running
        assert n1.proc.poll() is None and "Traceback" not in n1.log.read_text(errors="replace")

        async def restore(ds):
            role = await asyncio.to_thread(ds.rest.call, "GET", ROLE)
            role["rules"] = shipped["rules"]
            await asyncio.to_thread(ds.rest.call, "PUT", ROLE, body=role)
        admin(ctl, server, restore)
        wait(lambda: (n1.status() or {}).get("datastore", {}).get("state") == "connected", 60,
             "n1's watch to recover once the role grants watch again")
        assert n1.proc.poll() is None
        print(f"\nmissing verb: status said {err[:120]!r}; recovered without a restart")
    except BaseException:
        print(f"--- n1 log ---\n{n1.tail()}")
        raise


def test_a_node_created_by_kubectl_joins_with_nothing_of_its_own_in_its_config(cluster):
    """Must-show 3's second half: n2's Node is created with ``kubectl create`` (its address
    in status.addresses), and n2's agent runs with a config holding only the kubeconfig (and
    this test's private state paths); its name comes from NODENAME, as a DaemonSet's downward
    API sets it, and its address from the Node. It claims a block and joins the mesh."""
    ctl, server, agents = cluster
    seed(ctl, server, nodes=[kubelet_node("n1", NODES["n1"])])
    manifest = server.workdir / "n2-node.yaml"
    manifest.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Node",
                                        "metadata": {"name": "n2", "labels": {"topology.kubernetes.io/zone": "z"}},
                                        "status": {"addresses": [{"type": "InternalIP", "address": NODES["n2"]}]}}))
    kubectl(ctl, server, "create", "-f", str(manifest))
    n1, n2 = agents["n1"], agents["n2"]
    n2.conf.write_text(yaml.safe_dump({
        "datastore": {"type": "kubernetes", "kubernetes": {"kubeconfig": str(server.kubeconfig("agent"))}},
        "paths": {"stateDir": str(n2.d / "state"), "runDir": str(n2.d / "run")}}))
    n1.start()
    n2.start("NODENAME=n2")
    try:
        held = wait(lambda: (h := held_blocks(ctl, server)) and set(h) == set(NODES) and h, CONVERGE_S,
                    "a block per node, n2's claimed by its agent")
        wait(lambda: converged(agents, held), CONVERGE_S, "each FIB to route the other's block")
        st = n2.status()
        assert st["node"]["name"] == "n2" and st["node"]["ip"] == NODES["n2"]
        assert [p["state"] for p in st["bgp"]["peers"]] == ["established"]
        assert "node IP taken from the Node object" in n2.log.read_text(errors="replace")
    except BaseException:
        for a in agents.values():
            print(f"--- {a.name} log ---\n{a.tail()}")
        raise

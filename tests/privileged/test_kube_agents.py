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
the agents start with nothing but a kubeconfig. Asserts: each node claimed one block (two
distinct IPAMBlock objects, read back by ``kubectl``), the node-to-node session is
Established on both, and each FIB routes the other's block via the other's node IP.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
import yaml
from nsutil import sh
from waiting import wait

from nlcore.netns import call_in_netns
from nlcore.route import PODROUTE_PROTO
from podroute.datastore import BGPConfiguration, IPPool, Node
from podroute.datastore.model import labels

pytestmark = pytest.mark.privileged
ROOT = Path(__file__).resolve().parents[2]
CTL_IP = "198.18.0.2"
NODES = {"n1": "198.18.0.11", "n2": "198.18.0.12"}
POOL = IPPool("default-pool", IPv4Network("198.19.0.0/16"), block_size=26)
CONVERGE_S = 60      # both agents up, claimed, Established and programmed, on a loaded 2-core machine
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"


def kubelet_node(name: str, ip: str) -> Node:
    """A Node as kubelet registers it: its InternalIP and the well-known labels."""
    return Node(name, IPv4Address(ip), labels=labels({"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                                      "topology.kubernetes.io/zone": "zone-a"}))


class Agent:
    def __init__(self, name: str, ns: str, d: Path, kubeconfig: Path) -> None:
        self.name, self.ns, self.d = name, ns, d
        self.conf, self.log = d / "node.yaml", d / "agent.log"
        d.mkdir(parents=True)
        self.conf.write_text(yaml.safe_dump({
            "nodeName": name, "nodeIP": NODES[name],
            "datastore": {"type": "kubernetes", "kubernetes": {"kubeconfig": str(kubeconfig)}},
            "gracefulRestartTime": 10, "resyncInterval": 3600,
            "paths": {"stateDir": str(d / "state"), "runDir": str(d / "run")}}))
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, "-m", "podroute.cli",
                                          "node", "run", "--config", str(self.conf)], cwd=ROOT, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def status(self) -> dict | None:
        p = subprocess.run([sys.executable, "-m", "podroute.cli", "status", "--json", "--config", str(self.conf)],
                           cwd=ROOT, capture_output=True, text=True, timeout=20)
        return json.loads(p.stdout) if p.returncode == 0 else None

    def routes(self) -> str:
        return sh("ip", "route", "show", "proto", str(PODROUTE_PROTO), ns=self.ns).stdout

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

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

    async def seed(ds):
        await ds.put_resource(BGPConfiguration())             # node-to-node mesh on
        await ds.put_resource(POOL)
        for name, ip in NODES.items():
            await ds.put_resource(kubelet_node(name, ip))
    admin(ctl, server, seed)
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

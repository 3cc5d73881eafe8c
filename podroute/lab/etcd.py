"""The etcd of a lab on the etcd datastore (``podroute lab up --datastore etcd``).

One real etcd member (Debian's ``etcd-server``, installed by scripts/setup) runs in the lab
namespace ``prl-<name>-etcd`` at ``http://198.18.0.3:2379`` (:data:`podroute.lab.model.ETCD_IP`),
on underlay subnet 0 and reachable from every node namespace through the router namespace;
nothing listens in the root namespace. Its data is ``<root>/etcd/data``; lab.json records
``{"ns", "ip", "endpoint", "pid", "dir"}`` under ``etcd``; ``lab down`` stops it by PID.

The lab writes the cluster's shared resources into it (:func:`resources`): the IP pool, the
BGP configuration (node-to-node mesh on for ``mesh``, off otherwise) and the BGP peers of the
topology (the reflector(s) as global peers, a ToR or a per-subnet reflector as a peer of each
node). Nodes, their registrations and their IPAM blocks are written by the agents
themselves. Writes go through :class:`podroute.datastore.etcdstore.EtcdDatastore`
(``put_resource`` / ``delete_resource``) in a child Python process inside the etcd
namespace (:func:`apply`), since the lab's own process runs in the root namespace.

etcd runs with raft timings shortened as in tests/etcdutil.py (heartbeat 50 ms, election 500 ms:
etcd's minimum lease TTL becomes 1 s, so a lab with a short ``--lease-ttl`` honours it) and
``--unsafe-no-fsync`` (a lab's etcd is thrown away with the lab; fsync would only add disk
latency on a shared machine).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Any, Sequence

from podroute.etcd.keys import DEFAULT_PREFIX as PREFIX  # the lab keeps etcd's default key prefix
from podroute.datastore.model import BGPConfiguration, BGPPeer, IPPool, Resource, cidr_name, key_of
from podroute.lab import adminjob, netns
from podroute.lab.model import ASN, ETCD_CLIENT_PORT, ETCD_IP, POOL, RR2_IP, RR_IP, TOR_ASN, Lab, Node, router_ip
from podroute.lab.netns import LabError

START_TIMEOUT_S = 20.0
STOP_GRACE_S = 5.0
APPLY_TIMEOUT_S = 30.0
PEER_HOLD_TIME_S = 30          # the lab routers' hold time (podroute.lab.bird renders "hold time 30")


def argv(lab: Lab) -> list[str]:
    """The etcd command line for ``lab`` (client URL on the underlay, peer URL on loopback)."""
    peer = "http://127.0.0.1:2380"
    return [shutil.which("etcd") or "/usr/bin/etcd", "--name", f"{lab.name}-etcd",
            "--data-dir", str(lab.path / "etcd" / "data"),
            "--listen-client-urls", lab.etcd_endpoint, "--advertise-client-urls", lab.etcd_endpoint,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{lab.name}-etcd={peer}",
            "--heartbeat-interval", "50", "--election-timeout", "500", "--unsafe-no-fsync",
            "--logger", "zap", "--log-outputs", "stderr"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
    env["ETCDCTL_API"] = "3"
    return env


def etcdctl(lab: Lab, *args: str, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    """Debian's ``etcdctl`` (API v3) against the lab's etcd, run inside its namespace."""
    ns = lab.etcd.get("ns") or lab.prefix + "etcd"
    return netns.run([shutil.which("etcdctl") or "/usr/bin/etcdctl", "--endpoints", lab.etcd_endpoint,
                      "--dial-timeout=2s", "--command-timeout=5s", *args], ns=ns, check=check, timeout=timeout,
                     env=_env())


def healthy(lab: Lab) -> bool:
    return etcdctl(lab, "endpoint", "health", check=False).returncode == 0


def keys(lab: Lab) -> list[str] | None:
    """Every key under the lab's prefix, or None when etcd does not answer."""
    p = etcdctl(lab, "get", "--prefix", PREFIX, "--keys-only", check=False)
    return [k for k in p.stdout.splitlines() if k.strip()] if p.returncode == 0 else None


def key_counts(lab: Lab) -> dict[str, int] | None:
    """``{collection: number of keys}`` (``nodes``, ``ipam/blocks``, ...), None when etcd does
    not answer."""
    found = keys(lab)
    if found is None:
        return None
    out: dict[str, int] = {}
    for k in found:
        parts = k[len(PREFIX):].split("/")
        coll = "/".join(parts[:-1]) or parts[0]
        out[coll] = out.get(coll, 0) + 1
    return out


def running(lab: Lab) -> bool:
    pid = lab.etcd.get("pid")
    return bool(pid) and netns._alive(pid)


def start(lab: Lab) -> int:
    """Start (or restart, on the same data) the lab's etcd in its namespace, record its PID and
    wait until it answers ``endpoint health``. Returns the PID; raises LabError with the end of
    its log when it exits or stays unhealthy for START_TIMEOUT_S."""
    ns = lab.prefix + "etcd"
    d = lab.path / "etcd"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "etcd.log", "ab") as log:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv(lab)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=_env())
    lab.etcd.update({"ns": ns, "ip": str(ETCD_IP), "endpoint": lab.etcd_endpoint, "pid": proc.pid, "dir": str(d),
                     "port": ETCD_CLIENT_PORT})
    lab.save()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not healthy(lab):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (d / "etcd.log").read_text(errors="replace")[-1500:]
            raise LabError(f"etcd in {ns} did not become healthy (exit {proc.poll()}); its log ends:\n{tail}")
        time.sleep(0.05)
    return proc.pid


def stop(lab: Lab) -> None:
    """Stop the lab's etcd by its recorded PID (SIGTERM, SIGKILL after STOP_GRACE_S). Idempotent."""
    pid = lab.etcd.get("pid")
    if pid:
        netns.kill_pids([pid], grace=STOP_GRACE_S)
    lab.etcd["pid"] = None
    lab.save()


def pool(lab: Lab) -> IPPool:
    """The lab's one pool, named as Calico names objects after a CIDR."""
    return IPPool(cidr_name(POOL), POOL, 26, ipip_mode=lab.encap_mode if lab.encapsulation == "ipip" else "Never",
                  vxlan_mode=lab.encap_mode if lab.encapsulation == "vxlan" else "Never")


def global_peers(lab: Lab) -> list[BGPPeer]:
    """Peers every node has: the reflector(s) of a one-subnet rr / rr2 lab."""
    if lab.topology == "rr2":
        return [BGPPeer("rr", RR_IP, ASN, hold_time=PEER_HOLD_TIME_S),
                BGPPeer("rr2", RR2_IP, ASN, hold_time=PEER_HOLD_TIME_S)]
    if lab.topology == "rr" and lab.subnets == 1:
        return [BGPPeer("rr", RR_IP, ASN, hold_time=PEER_HOLD_TIME_S)]
    return []


def node_peers(lab: Lab, node: Node) -> list[BGPPeer]:
    """Peers of one node only (Calico BGPPeer ``node``): the router on its own subnet for a
    ToR lab or a multi-subnet rr lab."""
    if lab.topology == "tor" or (lab.topology == "rr" and lab.subnets > 1):
        asn = TOR_ASN if lab.topology == "tor" else ASN
        return [BGPPeer(f"{lab.node_name(node)}-{lab.topology}", router_ip(node.subnet), asn,
                        node=lab.node_name(node), hold_time=PEER_HOLD_TIME_S)]
    return []


def resources(lab: Lab) -> list[Resource]:
    """What the lab writes before any agent starts: pool, BGP configuration, peers."""
    out: list[Resource] = [pool(lab), BGPConfiguration(node_to_node_mesh_enabled=lab.topology == "mesh",
                                                       as_number=ASN)]
    out += global_peers(lab)
    for n in lab.nodes:
        out += node_peers(lab, n)
    return out


def apply(lab: Lab, puts: Sequence[Resource] = (), deletes: Sequence[str] = ()) -> dict[str, Any]:
    """Write ``puts`` (create or replace) and delete the keys ``deletes`` (datastore keys as
    :func:`podroute.datastore.model.key_of` spells them) through EtcdDatastore, from a child
    process inside the etcd namespace. Returns ``{"put": n, "deleted": [keys that existed]}``;
    raises LabError with the child's message when etcd refuses or cannot be reached."""
    ns = lab.etcd.get("ns") or lab.prefix + "etcd"
    return adminjob.run(ns, {"type": "etcd", "endpoint": lab.etcd_endpoint, "prefix": PREFIX}, puts, deletes,
                        what=f"the lab's etcd at {lab.etcd_endpoint}", timeout_s=APPLY_TIMEOUT_S)


def seed(lab: Lab) -> None:
    """Write :func:`resources` into the lab's etcd."""
    apply(lab, puts=resources(lab))


def forget_node(lab: Lab, node: Node) -> list[str]:
    """Delete ``node``'s registration and its own BGP peers (its blocks are left for the
    surviving nodes to release after their grace period, as for any departed node).
    Returns the keys that existed."""
    keys = [f"nodes/{lab.node_name(node)}", *(key_of(p) for p in node_peers(lab, node))]
    return apply(lab, deletes=keys)["deleted"]

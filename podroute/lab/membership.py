"""``podroute lab node add|remove``: nodes joining and leaving a running lab, timed.

``node add`` builds what ``lab up`` builds for one node (podroute.lab.fabric.add_node: its
namespace and uplink on its subnet's bridge), tells the cluster about it the way the lab's
datastore does (file: the cluster file lists it, for mesh / podroute-rr labs; etcd: nothing
to write unless the topology gives each node its own BGPPeer, the agent registers itself;
kubernetes: its Node object as kubelet would create it, and its own BGPPeers),
configures it on the external routers (podroute.lab.routers.add_neighbor) and, with
``--monitoring``, in Prometheus' targets (podroute.lab.monitoring.write_targets), writes its
node.yaml, installs its CNI plugin and starts its agent. Unless ``wait`` is off it then
waits for its sessions, times until its block is in every other node's FIB
(podroute.lab.probes.time_join: from the agent's start and from its registration), wires
its pods and pings one pod of every other node from each.

``node remove`` takes a node out: by default as an operator would, ``podroute node drain``
(withdraw its routes), stop the agent, delete its registration (etcd: ``nodes/<name>`` and
its own BGPPeers; kubernetes: its Node, as ``kubectl delete node``, and its BGPPeers; file:
rewrite the cluster file without it) and its router sessions. With
``expire`` (etcd labs) it dies instead: SIGKILL to everything in its namespace, nothing
withdrawn or deleted, so its registration lapses with its lease (``datastore.leaseTTL``)
and the surviving nodes release its blocks after ``ipam.releaseGracePeriod``; external
routers notice by their hold time. Either way its pods' and its own namespaces go.

Node indexes (address ``node_ip(i)``, fabric port ``n<i>``) are never reused in a lab: a
removed node's registration may still be in etcd with that address.
"""
from __future__ import annotations

import re
import shutil
import signal
import sys
import time
from pathlib import Path

from podroute import statusd
from podroute.lab import agents, control, fabric, monitoring, netns, pods, probes, routers
from podroute.lab.model import Lab, Node, say, wait
from podroute.lab.netns import LabError
from podroute.lab.options import (CLUSTER_FILE_TOPOLOGIES, MAX_LEASE_TTL_S, MAX_NODES, MAX_PODS_PER_NODE,
                                  MIN_LEASE_TTL_S)

NODE_NAME = re.compile(r"^[a-z][a-z0-9]{0,7}$")   # a BIRD protocol name and a short namespace suffix
RESERVED = ("fab", "rr", "rr2", "etcd")
ESTABLISH_TIMEOUT_S = 60
DRAIN_TIMEOUT_S = 10.0
DRAIN_SETTLE_S = 0.5
STOP_GRACE_S = 15.0


def check_new_name(lab: Lab, name: str) -> None:
    """Raise LabError unless ``name`` can name a new node of ``lab``."""
    if not NODE_NAME.match(name) or name in RESERVED:
        raise LabError(f"--name {name!r}: a node name is 1-8 lower-case letters and digits, starting with a "
                       f"letter, and not one of {', '.join(RESERVED)}")
    if any(n.name == name for n in lab.nodes):
        raise LabError(f"lab '{lab.name}' already has a node {name}")


def add(lab: Lab, name: str | None = None, *, wait_join: bool = True, n_pods: int = 1,
        lease_ttl: int | None = None) -> Node:
    """Add a node to the running ``lab`` (see the module docstring); returns it. With
    ``wait_join`` the join timings go into ``lab.timings`` as ``add_<node>_total_s`` /
    ``_converge_s`` / ``_registered_s``. Raises LabError from the failing step (what was
    built so far stays recorded, for ``node remove`` or ``lab down``)."""
    i = lab.last_index + 1
    if i > MAX_NODES:
        raise LabError(f"lab '{lab.name}' has used all {MAX_NODES} node addresses")
    name = name or f"n{i}"
    check_new_name(lab, name)
    if not 0 <= n_pods <= MAX_PODS_PER_NODE:
        raise LabError(f"--pods {n_pods}: need 0..{MAX_PODS_PER_NODE}")
    if lease_ttl is not None and lab.datastore != "etcd":
        raise LabError("--lease-ttl needs an etcd lab (the file datastore has no leases)")
    if lease_ttl is not None and not MIN_LEASE_TTL_S <= lease_ttl <= MAX_LEASE_TTL_S:
        raise LabError(f"--lease-ttl {lease_ttl}: need {MIN_LEASE_TTL_S}..{MAX_LEASE_TTL_S} seconds")
    shutil.rmtree(lab.path / name, ignore_errors=True)  # a removed node's leftovers under a reused name
    others = [n for n in lab.nodes if n.pid and agents.alive(n)]
    node = fabric.add_node(lab, i, name)
    node.lease_ttl = lease_ttl
    if lab.datastore == "etcd":
        from podroute.lab import etcd
        own = etcd.node_peers(lab, node)
        if own:
            etcd.apply(lab, puts=own)
    elif lab.datastore == "kubernetes":  # kubelet registers the Node before podroute starts
        from podroute.lab import etcd, kube
        kube.apply(lab, puts=[*etcd.node_peers(lab, node), kube.kubelet_node(lab, node)])
    elif lab.topology in CLUSTER_FILE_TOPOLOGIES:
        agents.write_cluster(lab, lab.nodes)
    routers.add_neighbor(lab, node)
    monitoring.write_targets(lab)   # Prometheus (--monitoring) scrapes it from now on
    pods.install(Path(node.dir), agents.node_config(lab, node))
    t_started = time.time()
    agents.start(lab, node, install_cni=False)
    say(f"node {name} ({node.ip}) added to lab '{lab.name}'; agent pid {node.pid}")
    if not wait_join:
        return node
    wait(f"{name}'s BGP sessions", lambda: agents.established(node), ESTABLISH_TIMEOUT_S, 0.05)
    join = probes.time_join(node, others, t_started)
    lab.timings[f"add_{name}_total_s"] = join.total_s
    lab.timings[f"add_{name}_converge_s"] = join.converge_s
    if join.registered_s is not None:
        lab.timings[f"add_{name}_registered_s"] = join.registered_s
    lab.save()
    say(f"{name}'s block {node.block} reached all {len(others)} other FIBs {join.total_s:.2f} s after its agent "
        f"started ({1000 * join.converge_s:.0f} ms after its BGP session came up"
        + (f", {1000 * join.registered_s:.0f} ms after it registered" if join.registered_s is not None else "")
        + ")")
    wait(f"{name}'s FIB to learn the other blocks",
         lambda: all(probes.fib_has(node.ns, m.block) for m in others if m.block), ESTABLISH_TIMEOUT_S)
    new = [pods.wire(lab, node, j) for j in range(1, n_pods + 1)]
    targets = [next(p for p in lab.pods if p.node == m.name) for m in others if any(p.node == m.name for p in lab.pods)]
    failed = [f"{s.name}->{d.name}" for s in new for d in targets if not probes.ping(s, d)]
    if failed:
        raise LabError(f"{name}'s pods cannot reach: {', '.join(failed)}")
    if new:
        say(f"{len(new)} pod(s) on {name} reach a pod on each of the {len(targets)} other node(s)")
    return node


def _stop_drained(lab: Lab, node: Node) -> None:
    """Withdraw the node's routes (``podroute node drain``), then make sure its agent and
    everything in its namespace has exited."""
    sock = Path(node.dir) / "run" / "agent.sock"
    try:
        statusd.request_drain(sock, settle_s=DRAIN_SETTLE_S, timeout_s=DRAIN_TIMEOUT_S)
    except statusd.AgentUnreachable as e:
        say(f"{node.name}: drain not possible ({e}); stopping it without")
    if node.pid:
        netns.kill_pids([node.pid], grace=STOP_GRACE_S)
    control.kill_agent(lab, node.name, signal.SIGKILL)  # ExaBGP and anything else left in the namespace


def remove(lab: Lab, name: str, *, expire: bool = False) -> list[str]:
    """Take node ``name`` out of the running ``lab`` (see the module docstring). Returns the
    datastore keys deleted (etcd; empty with ``expire`` or on the file datastore). Raises
    LabError for an unknown node, ``expire`` on a file lab, or etcd refusing the delete (the
    node is removed from the lab anyway)."""
    node = control.node(lab, name)
    if expire and lab.datastore != "etcd":
        raise LabError("--expire needs an etcd lab: the file datastore has no leases")
    if expire:
        control.kill_agent(lab, name, signal.SIGKILL)
    else:
        _stop_drained(lab, node)
    lab.nodes.remove(node)
    error: LabError | None = None
    deleted: list[str] = []
    if not expire:
        if lab.datastore == "etcd":
            from podroute.lab import etcd
            try:
                deleted = etcd.forget_node(lab, node)
            except LabError as e:
                error = e
        elif lab.datastore == "kubernetes":  # kubectl delete node, and its own peers
            from podroute.lab import etcd, kube
            try:
                keys = [f"nodes/{lab.node_name(node)}", *(f"bgppeers/{p.name}" for p in etcd.node_peers(lab, node))]
                deleted = kube.apply(lab, deletes=keys)["deleted"]
            except LabError as e:
                error = e
        elif lab.topology in CLUSTER_FILE_TOPOLOGIES:
            agents.write_cluster(lab, lab.nodes)
        routers.remove_neighbor(lab, node)
    monitoring.write_targets(lab)
    gone = [p for p in lab.pods if p.node == name]
    for ns in [p.ns for p in gone] + [node.ns]:
        netns.delete(ns)
        if ns in lab.namespaces:
            lab.namespaces.remove(ns)
    lab.pods = [p for p in lab.pods if p.node != name]
    lab.save()
    say(f"node {name} removed from lab '{lab.name}'" + (" (killed; its registration expires with its lease)"
                                                         if expire else "")
        + (f"; deleted {', '.join(deleted)}" if deleted else ""))
    if error:
        raise error
    return deleted


def node_add(*, lab_name: str, state_root: Path, name: str | None = None, wait_join: bool = True,
             n_pods: int = 1, lease_ttl: int | None = None) -> int:
    """CLI entry: exit 0 added (and joined, with ``wait_join``), 1 a step failed, 2 bad usage."""
    try:
        lab = control.load(lab_name, state_root)
    except LabError as e:
        print(f"podroute lab: {e}", file=sys.stderr)
        return 2
    try:
        add(lab, name, wait_join=wait_join, n_pods=n_pods, lease_ttl=lease_ttl)
    except LabError as e:
        print(f"podroute lab: {e}", file=sys.stderr)
        return 1
    return 0


def node_remove(*, lab_name: str, state_root: Path, name: str, expire: bool = False) -> int:
    """CLI entry: exit 0 removed, 1 a step failed, 2 unknown lab or node."""
    try:
        lab = control.load(lab_name, state_root)
        control.node(lab, name)
    except LabError as e:
        print(f"podroute lab: {e}", file=sys.stderr)
        return 2
    try:
        remove(lab, name, expire=expire)
    except LabError as e:
        print(f"podroute lab: {e}", file=sys.stderr)
        return 1
    return 0

"""``podroute lab up|down|status``: an N-node podroute cluster in network namespaces.

``lab up`` checks its options (podroute.lab.options), builds the underlay
(podroute.lab.fabric), starts the external routers (podroute.lab.routers) and the first
N-1 node agents (podroute.lab.agents), then starts the last node and times how long its
block takes to reach every other FIB (podroute.lab.probes), so that figure is measured on
every run. It wires pods through each node's installed conflist exactly as a container
runtime does (podroute.lab.pods, podroute.lab.libcni), pings every pod pair and writes
``report.txt`` and ``report.json`` (podroute.lab.report). With ``--monitoring`` a
Prometheus started before the agents must be scraping every one of them before the
report (podroute.lab.monitoring).

With ``--datastore kubernetes`` it starts etcd and a real kube-apiserver there instead, applies
the CRDs and the agent's role and registers a Node per lab node as kubelet would
(podroute.lab.kube); the agents run with the role's credentials and claim IPAMBlocks.

With ``--datastore etcd`` the lab first starts a real etcd in its own namespace and writes
the pool, the BGP configuration and the BGP peers into it (podroute.lab.etcd); the node
configs then carry ``datastore: {type: etcd}`` and no ``podCIDRs``: each agent registers
itself and claims its own block, which the lab reads back from the node's FIB.

Everything created is recorded in ``<state-dir>/<name>/lab.json`` (podroute.lab.model);
``lab down`` removes it: agents get SIGTERM first, then etcd and the routers are stopped by
PID, every process left in a lab namespace is killed by PID and the namespaces are deleted.
Nodes are added and removed at run time by podroute.lab.membership. Operations on a running lab
(kill/stop/restart an agent, stop/start a router) are in podroute.lab.control.

Exit status of ``lab up``: 0 every check passed, 1 a step or check failed, 2 bad options
or host (not root, a tool missing).
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from podroute import statusd
from podroute.lab import agents, fabric, monitoring, netns, pods, probes, report, routers
from podroute.lab.model import Lab, say, wait
from podroute.lab.netns import LabError
from podroute.lab.options import CLUSTER_FILE_TOPOLOGIES, LabOptions, check_host

AGENT_ESTABLISH_TIMEOUT_S = 60
FIB_LEARN_TIMEOUT_S = 30

# The names callers wrote against when this module held the whole lab (tests/e2e helpers
# import them from here); each is the one implementation in its concern's module.
from podroute.lab.model import (  # noqa: E402,F401
    ASN, POOL, RR2_IP, RR_IP, TIMEOUT_SCALE, TOR_ASN, Node, Pod, router_ip, subnet_net)
from podroute.lab.options import ENCAPSULATIONS, MAX_NODES, MAX_SUBNETS, ROUTER_IMPLS, TOPOLOGIES  # noqa: E402,F401
router_sessions = routers.sessions
_node_config = agents.node_config
_write_cluster = agents.write_cluster
_start_agent = agents.start
_status = agents.status
_check_agent = agents.check
_established = agents.established
_fib_routes = probes.fib_routes
_fib_has = probes.fib_has
_ping = probes.ping
_wait = wait
_check_ipip = fabric.check_ipip


def _build(lab: Lab, opts: LabOptions) -> tuple[str, bool, dict[str, Any]]:
    """Every step of ``lab up`` after the options are checked; returns (report text,
    passed, report.json document). Raises LabError from the failing step."""
    t_start = time.monotonic()
    t0 = time.monotonic()
    say(f"building the underlay, routers and {opts.nodes} node namespaces ({opts.topology}, {opts.peer})")
    fabric.build(lab, opts.nodes)
    lab.timings["fabric_s"] = time.monotonic() - t0
    if lab.datastore == "etcd":
        from podroute.lab import etcd  # lazy: a file lab does not load the etcd client
        t0 = time.monotonic()
        say(f"starting etcd at {lab.etcd_endpoint} and writing the pool, BGP configuration and peers into it")
        etcd.start(lab)
        etcd.seed(lab)
        lab.timings["etcd_s"] = time.monotonic() - t0
    if lab.datastore == "kubernetes":
        from podroute.lab import etcd, kube  # lazy: only a kubernetes lab loads the client
        t0 = time.monotonic()
        say(f"starting etcd and kube-apiserver at {kube.url()}, applying the CRDs and the agent's role, writing "
            "the pool, BGP configuration, peers and a Node per lab node")
        etcd.start(lab)
        kube.start(lab)
        kube.seed(lab, lab.nodes[:-1])
        lab.timings["kube_s"] = time.monotonic() - t0
    routers.start_all(lab)
    if opts.monitoring:  # before the agents: its target discovery (up to 5 s) overlaps their start
        say("starting Prometheus in the monitoring namespace")
        monitoring.start(lab)
    first, last = lab.nodes[:-1], lab.nodes[-1]
    cluster_file = opts.topology in CLUSTER_FILE_TOPOLOGIES and lab.datastore == "file"
    if cluster_file:
        agents.write_cluster(lab, first)
    t0 = time.monotonic()
    say(f"starting podroute agents on {', '.join(n.name for n in first)}")
    for n in first:
        agents.start(lab, n)
    for n in first:
        wait(f"{n.name}'s BGP sessions", lambda n=n: agents.established(n), AGENT_ESTABLISH_TIMEOUT_S, 0.1)
        if not n.block:  # etcd: the agent claimed its own
            probes.wait_claimed(n)
    lab.save()
    for n in first:
        for m in first:
            if m is not n:
                wait(f"{m.block} in {n.name}'s FIB", lambda n=n, m=m: probes.fib_has(n.ns, m.block),
                     FIB_LEARN_TIMEOUT_S)
    lab.timings["established_s"] = time.monotonic() - t0

    say(f"joining {last.name} and timing until its block {last.block or '(it claims one)'} is in every other FIB")
    pods.install(Path(last.dir), agents.node_config(lab, last))  # before the clock: times the agent only
    if lab.datastore == "kubernetes":  # its kubelet registers the Node as the node boots
        from podroute.lab import kube
        kube.register(lab, last)
    t_agent = time.time()
    if cluster_file:
        agents.write_cluster(lab, lab.nodes)  # the running nodes pick the new node up from the datastore
    agents.start(lab, last, install_cni=False)
    join = probes.time_join(last, first, t_agent)
    lab.timings["join_total_s"] = join.total_s
    lab.timings["join_converge_s"] = join.converge_s
    if join.registered_s is not None:
        lab.timings["join_registered_s"] = join.registered_s
    lab.save()
    wait(f"{last.name}'s FIB to learn the other blocks",
         lambda: all(probes.fib_has(last.ns, n.block) for n in first), FIB_LEARN_TIMEOUT_S)

    t0 = time.monotonic()
    say(f"wiring {opts.pods_per_node} pods per node through each node's installed conflist")
    for n in lab.nodes:
        for j in range(1, opts.pods_per_node + 1):
            pods.wire(lab, n, j)
    lab.timings["pods_s"] = time.monotonic() - t0
    if opts.monitoring:
        monitoring.wait_scraping(lab)
    say("pinging every pod pair")
    matrix = probes.ping_matrix(lab.pods)
    statuses = {n.name: agents.status(n) or {} for n in lab.nodes}
    router_states = routers.sessions(lab)
    lab.timings["total_s"] = time.monotonic() - t_start
    lab.save()
    fib = {n.name: probes.fib_routes(n.ns) for n in lab.nodes}
    text, passed = report.render(lab, statuses, matrix, router_states, fib)
    return text, passed, report.to_json(lab, passed, statuses, matrix, router_states, fib)


def lab_up(*, nodes: int, peer: str, name: str, state_root: Path, pods_per_node: int = 2,
           keep_on_failure: bool = False, encapsulation: str = "none", encap_mode: str = "Always",
           subnets: int = 1, topology: str = "rr", router_restart_time: int = 120,
           monitoring_on: bool = False, datastore: str = "file", lease_ttl: int = 30, release_grace: int = 60) -> int:
    """Build and prove the lab. Returns 0 when every check passed, 1 otherwise, 2 for bad
    options or a host that cannot run the lab (message on stderr). ``lease_ttl`` and
    ``release_grace`` (s) are the nodes' ``datastore.leaseTTL`` and ``ipam.releaseGracePeriod``
    on the etcd datastore."""
    opts = LabOptions(name=name, nodes=nodes, peer=peer, pods_per_node=pods_per_node,
                      encapsulation=encapsulation, encap_mode=encap_mode, subnets=subnets, topology=topology,
                      router_restart_time=router_restart_time, monitoring=monitoring_on, datastore=datastore,
                      lease_ttl=lease_ttl, release_grace=release_grace)
    try:
        opts.validate()
        check_host(peer, monitoring_on, datastore)
    except LabError as e:
        print(f"podroute lab: {e}", file=sys.stderr)
        return 2
    root = state_root / name
    if (root / "lab.json").exists() or netns.list_prefixed(f"prl-{name}-"):
        say(f"lab '{name}' exists: taking it down first")
        lab_down(name=name, state_root=state_root, quiet=True)
    root.mkdir(parents=True, exist_ok=True)
    lab = Lab(name, str(root), encapsulation=encapsulation, encap_mode=encap_mode, subnets=subnets,
              topology=topology, peer=peer, router_restart_time=router_restart_time, datastore=datastore,
              lease_ttl=lease_ttl, release_grace=release_grace)
    try:
        text, passed, doc = _build(lab, opts)
    except LabError as e:
        print(f"podroute lab: {e}", file=sys.stderr)
        if not keep_on_failure:
            print("podroute lab: removing the partial lab (use --keep to inspect it)", file=sys.stderr)
            lab_down(name=name, state_root=state_root, quiet=True)
        return 1
    print()
    print(text)
    (root / "report.txt").write_text(text + "\n")
    (root / "report.json").write_text(json.dumps(doc, indent=2))
    if lab.monitoring:
        print("\n" + "\n".join(monitoring.describe(lab)))
    if lab.datastore == "kubernetes":
        from podroute.lab import kube
        print("\n" + "\n".join(kube.usage(lab)))
    print(f"\nreport saved to {root / 'report.txt'}; inspect with: podroute lab status --name {name}; "
          f"remove with: podroute lab down --name {name}")
    return 0 if passed else 1


def lab_down(*, name: str, state_root: Path, quiet: bool = False) -> int:
    """Remove every namespace, process and file of lab ``name`` (its Prometheus, when it has
    one, stopped by PID with the rest). Idempotent. Returns 1 when
    a lab namespace is still present afterwards, else 0."""
    root = state_root / name
    lab = Lab.load(root)
    prefix = f"prl-{name}-"
    if lab:
        # SIGTERM first: each agent stops its speaker and ExaBGP itself.
        netns.kill_pids([n.pid for n in lab.nodes if n.pid], grace=10)
        if lab.kube.get("pid"):  # before its etcd
            netns.kill_pids([lab.kube["pid"]], grace=5)
        netns.kill_pids([r["pid"] for r in lab.routers if r.get("pid")] +
                        ([lab.etcd["pid"]] if lab.etcd.get("pid") else []), grace=5)
        monitoring.stop(lab)
    spaces = set(netns.list_prefixed(prefix)) | set(lab.namespaces if lab else [])
    for ns in sorted(spaces, reverse=True):  # pods before nodes before the fabric
        netns.delete(ns)
    shutil.rmtree(root, ignore_errors=True)
    left = netns.list_prefixed(prefix)
    if not quiet:
        print(f"lab '{name}': removed {len(spaces)} namespace(s)" + (f"; STILL PRESENT: {left}" if left else ""))
    return 1 if left else 0


def lab_status(*, name: str, state_root: Path) -> int:
    """Print each node's agent status (or "agent not answering"), and the lab's Prometheus
    with its targets' health when it has one. Returns 1 for an unknown lab."""
    lab = Lab.load(state_root / name)
    if not lab:
        print(f"no lab '{name}' under {state_root}", file=sys.stderr)
        return 1
    print(datastore_line(lab))
    print()
    for n in lab.nodes:
        st = agents.status(n)
        print(f"=== {n.name} ({n.ns}, {n.ip}, agent pid {n.pid})")
        print(statusd.render(st) if st else "agent not answering")
        print()
    if lab.monitoring:
        print("\n".join(monitoring.status_lines(lab)))
    return 0


def datastore_line(lab: Lab) -> str:
    """One line naming the lab's datastore and its state (etcd: PID, health, keys per collection)."""
    if lab.datastore == "file":
        where = lab.path / "cluster.yaml"
        return f"datastore: file ({where if where.exists() else 'each node config; no cluster file'})"
    from podroute.lab import etcd
    if lab.datastore == "kubernetes":
        from podroute.lab import kube
        state = "running" if kube.running(lab) else "STOPPED"
        return f"datastore: kubernetes, {kube.usage(lab)[0]}: {state}\n{kube.usage(lab)[1]}"
    pid = lab.etcd.get("pid")
    if not etcd.running(lab):
        return f"datastore: etcd at {lab.etcd_endpoint} in {lab.prefix}etcd: STOPPED"
    counts = etcd.key_counts(lab)
    state = "healthy" if counts is not None else "NOT ANSWERING"
    keys = ", ".join(f"{n} {k}" for k, n in sorted((counts or {}).items()))
    return (f"datastore: etcd at {lab.etcd_endpoint} in {lab.prefix}etcd (pid {pid}, {state})"
            + (f"; keys under {etcd.PREFIX}: {keys}" if keys else ""))

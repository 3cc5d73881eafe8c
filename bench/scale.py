"""Scale (issue 18, must-show 6): ONE real agent in a cluster of 1,000 Nodes, on the Kubernetes
datastore (a real etcd + kube-apiserver, RBAC on, the shipped role) against the file datastore
with the same cluster (the anchor), in the same run.

The cluster (both datastores): :data:`NODES` Nodes registered as kubelet registers them
(InternalIP from 198.18.0.0/16, hostname/os/zone labels) with no agents behind them, the
node-to-node mesh off and :data:`REFLECTORS` of them route reflectors
(``routeReflectorClusterID``; on Kubernetes the Node annotation podroute.kube.codec reads), so
the measured agent has 2 BGP sessions, not 999. One IPPool; every other Node holds an IPAM block
(N - 1 of them: IPAMBlock objects on Kubernetes, ``podCIDRs`` in the file). On
Kubernetes the measured node claims its block itself; in the file it is listed.

Per datastore, one agent (``podroute node run`` in a ``prb-`` netns, its kube-apiserver in
another one behind a veth) is started and measured:

- ``scale_ready_<N>`` (ms): from the process start until ``podroute status --json`` shows the
  datastore connected with all N nodes, the 2 reflector peers configured, the node's block and
  the FIB synced (health check ``fib``). Not ``/readyz``: its ``bgp`` check waits for the
  reflector sessions, which cannot come up (no agents behind them), for gracefulRestartTime.
  Status is polled every :data:`POLL_S` (each poll is a CLI process: ~0.3-0.5 s resolution).
- ``scale_rss_<N>`` (MB): the agent's peak RSS (VmHWM of the agent process, plus VmHWM of its
  ExaBGP child) after ready and the idle window.
- ``scale_api_requests_<N>`` (count, no anchor: a file agent makes none): requests by the
  agent's user, from the kube-apiserver's audit log (level Metadata, stage RequestReceived
  only, user ``podroute-agent`` only), split by verb and resource, from start to ready and over
  an :data:`IDLE_S` s idle window after ready. Watch, not poll: after the initial list of each
  resource there is one ``watch`` per resource and the idle window has no ``list``/``get``.

Opt-in (``python -m bench --only scale``), not in the default groups of either size, although it
takes ~35 s on an idle 2-core VM (seeding 2,000 objects ~5 s, each agent ~1.5 s to ready + the
idle window): it needs the kube-apiserver that ``scripts/setup`` builds and Debian's etcd, and a
default run must not fail where they are missing.

Measured on this VM (two runs): ready 1,394-1,434 ms on Kubernetes vs 1,457-1,553 ms on the file
(0.92-0.96x); peak RSS 106 vs 85 MB (1.25x; the agent process 76 vs 54 MB, ExaBGP 29 MB in both);
29 requests to ready: 21 ``list`` (3 full snapshots of the 5 kinds at start-up, nodes and
ipamblocks in 2 pages of kubestore.PAGE each), 5 ``watch`` (one per kind), 1 ``get`` node,
1 ``create`` ipamblock (the claim), 1 ``patch`` nodes/status (its annotations); 0 requests in
the idle 10 s.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import yaml

from . import ns as N

ROOT = Path(__file__).resolve().parent.parent
NODES = 1000
REFLECTORS = 2
CTL_IP = "198.18.0.2"
ME = "n0000"
POOL = IPv4Network("198.19.0.0/16")
BLOCK_PREFIX = 26
READY_TIMEOUT_S = 180.0
POLL_S = 0.2
IDLE_S = 10.0
SEED_BATCH = 16             # concurrent creates while seeding the API server
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [ResponseStarted, ResponseComplete, Panic]
rules:
  - level: Metadata
    users: ["podroute-agent"]
  - level: None
"""


def _kubeutil():
    """tests/kubeutil.py (the one owner of the kube-apiserver start-up) and its etcd helper
    are top-level modules of ``tests/``."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import kubeutil
    return kubeutil


def node_ip(i: int) -> IPv4Address:
    """Node i's InternalIP: 198.18.0.11 for the measured node, then 198.18.4.1 upward."""
    return IPv4Address("198.18.0.11") if i == 0 else IPv4Address("198.18.4.0") + (i // 250) * 256 + i % 250 + 1


def cluster_model():
    """(nodes, blocks, pool, bgp configuration) as model resources, the same for both datastores."""
    from podroute.datastore import BGPConfiguration, IPPool, Node
    from podroute.datastore.model import IPAMBlock, labels

    blocks = list(POOL.subnets(new_prefix=BLOCK_PREFIX))
    nodes, held = [], []
    for i in range(NODES):
        name = f"n{i:04d}"
        rr = node_ip(i) if 1 <= i <= REFLECTORS else None
        nodes.append(Node(name, node_ip(i), rr_cluster_id=rr, labels=labels({
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "topology.kubernetes.io/zone": f"zone-{i % 3}"})))
        if i > 0:
            held.append(IPAMBlock(blocks[i], name))
    return nodes, held, IPPool("default-pool", POOL, block_size=BLOCK_PREFIX), \
        BGPConfiguration(node_to_node_mesh_enabled=False)


def cluster_file(path: Path) -> None:
    nodes, held, _pool, _bgp = cluster_model()
    cidrs = {b.affinity: str(b.cidr) for b in held}
    cidrs[ME] = str(list(POOL.subnets(new_prefix=BLOCK_PREFIX))[0])
    doc = {"bgp": {"nodeToNodeMesh": False, "asn": 64512},
           "nodes": [{"name": n.name, "ip": str(n.address), "podCIDRs": [cidrs[n.name]], "labels": dict(n.labels),
                      **({"routeReflectorClusterID": str(n.rr_cluster_id)} if n.rr_cluster_id else {})}
                     for n in nodes],
           "ipPools": [{"cidr": str(POOL), "blockSize": BLOCK_PREFIX}]}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def seed_kube(server) -> float:
    """Create the cluster through the API server as admin; returns seconds taken."""
    from podroute.datastore.kubestore import KubeDatastore

    nodes, held, pool, bgp = cluster_model()

    async def run():
        ds = KubeDatastore(server.kubeconfig("admin"))
        try:
            await ds.put_resource(bgp)
            await ds.put_resource(pool)
            for objs in (nodes, held):
                for k in range(0, len(objs), SEED_BATCH):
                    await asyncio.gather(*(ds.put_resource(r) for r in objs[k:k + SEED_BATCH]))
        finally:
            await ds.close()
    t0 = time.monotonic()
    asyncio.run(run())
    return time.monotonic() - t0


def _hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss(pid: int) -> tuple[float, dict[str, float]]:
    """Sum of VmHWM (MB) over ``pid`` and its descendants, and per process."""
    from podroute.lab.netns import children

    kids = children()
    todo, total, parts = [pid], 0.0, {}
    while todo:
        p = todo.pop()
        todo.extend(kids.get(p, []))
        mb = _hwm_mb(p)
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:60]
        except OSError:
            continue
        total += mb
        parts[f"{cmd} [{p}]"] = round(mb, 1)
    return total, parts


def _status(conf: Path) -> dict | None:
    p = subprocess.run([sys.executable, "-m", "podroute.cli", "status", "--json", "--config", str(conf)],
                       cwd=ROOT, capture_output=True, text=True, timeout=20)
    return json.loads(p.stdout) if p.returncode == 0 else None


def is_ready(st: dict | None) -> bool:
    """Datastore connected with every node, the reflector peers configured, a block, FIB synced."""
    if not st or not st.get("datastore"):
        return False
    ds = st["datastore"]
    return (ds["state"] == "connected" and ds["nodes"] == NODES and len(st["bgp"]["peers"]) == REFLECTORS
            and bool(ds.get("blocks")) and st["health"]["ready"]["checks"]["fib"]["ok"])


def run_agent(ns: str, d: Path, store: dict, on_ready=None) -> dict:
    """Start one agent with ``store`` as its datastore section, wait for :func:`is_ready`, idle
    :data:`IDLE_S`, measure, stop it. ``on_ready()`` is called at ready and after the idle window."""
    d.mkdir(parents=True)
    conf = d / "node.yaml"
    conf.write_text(yaml.safe_dump({
        "nodeName": ME, "nodeIP": str(node_ip(0)), **store, "gracefulRestartTime": 10, "resyncInterval": 3600,
        "paths": {"stateDir": str(d / "state"), "runDir": str(d / "run")}}))
    t0 = time.monotonic()
    proc = N.popen([sys.executable, "-m", "podroute.cli", "node", "run", "--config", str(conf)], ns=ns,
                   log=d / "agent.log")
    try:
        st = None
        while not is_ready(st):
            if proc.poll() is not None:
                raise N.BenchError(f"agent exited {proc.returncode}: {(d / 'agent.log').read_text()[-800:]}")
            if time.monotonic() - t0 > READY_TIMEOUT_S:
                raise N.BenchError(f"agent not ready in {READY_TIMEOUT_S:.0f} s; last status datastore "
                                   f"{(st or {}).get('datastore')}; log {(d / 'agent.log').read_text()[-600:]}")
            time.sleep(POLL_S)
            st = _status(conf)
        ready_ms = (time.monotonic() - t0) * 1e3
        marks = [time.time()]
        time.sleep(IDLE_S)
        marks.append(time.time())
        rss, parts = peak_rss(proc.pid)
        return {"ready_ms": ready_ms, "rss_mb": rss, "rss_parts": parts, "marks": marks,
                "peers": [p["address"] for p in st["bgp"]["peers"]], "blocks": st["datastore"]["blocks"]}
    finally:
        N.stop(proc, grace=10)


def audit_counts(log: Path, ready_at: float, idle_end: float) -> dict:
    """The agent's requests from the audit log: ``{"to_ready": {verb: {resource: n}}, "idle": ...}``."""
    from datetime import datetime

    phases: dict[str, Counter] = {"to_ready": Counter(), "idle": Counter()}
    for line in log.read_text().splitlines():
        ev = json.loads(line)
        when = datetime.fromisoformat(ev["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
        ref = ev.get("objectRef") or {}
        res = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        phase = "to_ready" if when <= ready_at else "idle" if when <= idle_end else None
        if phase:
            phases[phase][(ev["verb"], res)] += 1
    out = {}
    for phase, c in phases.items():
        by: dict[str, dict[str, int]] = {}
        for (verb, res), n in sorted(c.items()):
            by.setdefault(verb, {})[res] = n
        out[phase] = by
    return out


def run() -> list[dict]:
    ku = _kubeutil()
    if shutil.which("etcd") is None or not ku.binary().exists():
        raise N.BenchError(f"needs Debian's etcd-server and {ku.binary()} (scripts/setup builds it)")
    from nlcore.netns import call_in_netns

    work = Path(tempfile.mkdtemp(prefix="prs-", dir="/tmp"))   # unix socket paths stay short
    ctl, node = N.new_ns("ctl"), N.new_ns("node")
    N.veth(ctl, "kc0", node, "kn0")
    N.ip("addr", "add", f"{CTL_IP}/16", "dev", "kc0", ns=ctl)
    N.ip("addr", "add", f"{node_ip(0)}/16", "dev", "kn0", ns=node)
    server = None
    try:
        # anchor first: the file datastore, same cluster, same namespace, nothing else running
        cluster_file(work / "cluster.yaml")
        file = run_agent(node, work / "file", {"clusterFile": str(work / "cluster.yaml"),
                                                 "ipPools": [{"cidr": str(POOL), "blockSize": BLOCK_PREFIX}],
                                                 "podCIDRs": [str(next(POOL.subnets(new_prefix=BLOCK_PREFIX)))]})

        policy = work / "audit-policy.yaml"
        policy.write_text(AUDIT_POLICY)
        audit = work / "kube" / "audit.log"
        server = ku.KubeAPIServer(work / "kube", host=CTL_IP, extra_args=(
            f"--audit-policy-file={policy}", f"--audit-log-path={audit}", "--audit-log-format=json",
            "--audit-log-mode=blocking"))
        call_in_netns(ctl, server.start, timeout=150, name="bench-kube")
        seed_s = call_in_netns(ctl, lambda: seed_kube(server), timeout=600, name="bench-kube-seed")
        kube = run_agent(node, work / "kube-agent", {"datastore": {
            "type": "kubernetes", "kubernetes": {"kubeconfig": str(server.kubeconfig("agent"))}}})
        reqs = audit_counts(audit, *kube["marks"])
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    polls = sum(n for verb in ("list", "get") for n in reqs["idle"].get(verb, {}).values())
    detail = {"nodes": NODES, "reflectors": REFLECTORS, "blocks_held_by_others": NODES - 1,
              "kube_seed_s": round(seed_s, 1), "kube": {k: v for k, v in kube.items() if k != "marks"},
              "file": {k: v for k, v in file.items() if k != "marks"}, "api_requests": reqs,
              "ready": "podroute status: datastore connected with every node, 2 reflector peers, a block, "
                       "FIB synced (not /readyz: its bgp check waits gracefulRestartTime for reflectors "
                       "with no agent behind them)"}
    total = sum(n for verb in reqs["to_ready"].values() for n in verb.values())
    return [
        {"figure": f"scale_ready_{NODES}", "unit": "ms", "higher_is_better": False,
         "podroute": kube["ready_ms"], "anchor": file["ready_ms"], "anchor_name": "file datastore, same cluster",
         "target_ratio": None, "target": "informational", "detail": detail},
        {"figure": f"scale_rss_{NODES}", "unit": "MB", "higher_is_better": False,
         "podroute": kube["rss_mb"], "anchor": file["rss_mb"], "anchor_name": "file datastore, same cluster",
         "target_ratio": None, "target": "informational (peak, agent + ExaBGP)", "detail": detail},
        {"figure": f"scale_api_requests_{NODES}", "unit": "req", "higher_is_better": False,
         "podroute": total, "anchor": None,
         "anchor_name": f"none; idle {IDLE_S:.0f} s after ready: {polls} list/get (0 = no polling)",
         "target_ratio": None, "target": "0 list/get when idle", "target_abs_mb": None, "detail": detail},
    ]

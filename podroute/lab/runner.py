"""``podroute lab up|down|status``: an N-node podroute cluster in network namespaces.

Topology (all addresses from 198.18.0.0/15; nothing is added to the root namespace)::

    prl-<name>-fab   L2 fabric: one bridge br<s> per underlay subnet 198.18.<s>.0/24
    prl-<name>-rr    BIRD 2 route reflector and the underlay router between subnets:
                     eth<s> 198.18.<s>.1/24 on each subnet, AS 64512
    prl-<name>-n<i>  node i, in subnet s = (i-1) mod K: eth0 198.18.<s>.(10+i)/24,
                     default via 198.18.<s>.1,
                     a real ``podroute node run`` agent (felix + ExaBGP speaker + CNI server),
                     IPAM block 198.19.<i>.0/26 from pool 198.19.0.0/16
    prl-<name>-n<i>p<j>  pod j of node i, wired through the node's installed conflist
                     (``podroute cni install``: podroute + portmap) exactly as a
                     container runtime does (podroute.lab.pods, podroute.lab.libcni)

The last node is started only after the others have converged, so that the time a
new node's block takes to reach every other FIB is measured on every run.
Everything created is recorded in ``<state-dir>/<name>/lab.json``; ``lab down`` removes
it (agents get SIGTERM first, then every process left in a lab namespace is killed
by PID and the namespaces are deleted).
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from podroute import statusd
from podroute.lab import bird, frr, netns, pods
from podroute.lab.netns import LabError

FABRIC_NET = ipaddress.IPv4Network("198.18.0.0/24")
RR_IP = ipaddress.IPv4Address("198.18.0.1")
ENCAPSULATIONS = ("none", "ipip", "vxlan")
TOPOLOGIES = ("rr", "rr2", "tor", "mesh", "podroute-rr")
ROUTER_IMPLS = ("bird", "frr")
TOR_ASN = 65000
RR2_IP = ipaddress.IPv4Address("198.18.0.2")
MAX_SUBNETS = 8


def subnet_net(s: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"198.18.{s}.0/24")


def router_ip(s: int) -> ipaddress.IPv4Address:
    return subnet_net(s).network_address + 1
POOL = ipaddress.IPv4Network("198.19.0.0/16")
ASN = 64512
MAX_NODES = 200
TIMEOUT_SCALE = max(1.0, float(os.environ.get("PODROUTE_LAB_TIMEOUT_SCALE", "1") or 1))


@dataclass
class Node:
    name: str
    ns: str
    ip: str
    block: str
    dir: str
    pid: int | None = None
    subnet: int = 0
    asn: int = ASN


@dataclass
class Pod:
    name: str
    node: str
    ns: str
    container_id: str
    ip: str | None = None
    add_ms: float | None = None


@dataclass
class Lab:
    name: str
    root: str
    nodes: list[Node] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    routers: list[dict[str, Any]] = field(default_factory=list)   # name, ns, impl, pid, ctl, ips
    timings: dict[str, float] = field(default_factory=dict)
    encapsulation: str = "none"
    encap_mode: str = "Always"
    subnets: int = 1
    topology: str = "rr"
    peer: str = "bird"
    router_restart_time: int = 120

    @property
    def prefix(self) -> str:
        return f"prl-{self.name}-"

    @property
    def path(self) -> Path:
        return Path(self.root)

    def save(self) -> None:
        tmp = self.path / "lab.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, self.path / "lab.json")

    @classmethod
    def load(cls, root: Path) -> "Lab | None":
        try:
            raw = json.loads((root / "lab.json").read_text())
        except (OSError, ValueError):
            return None
        return cls(raw["name"], raw["root"], [Node(**n) for n in raw["nodes"]], [Pod(**p) for p in raw["pods"]],
                   raw["namespaces"], raw.get("routers", []), raw.get("timings", {}),
                   raw.get("encapsulation", "none"), raw.get("encap_mode", "Always"), raw.get("subnets", 1),
                   raw.get("topology", "rr"), raw.get("peer", "bird"), raw.get("router_restart_time", 120))


def _say(msg: str) -> None:
    print(msg, flush=True)


def _wait(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.05) -> float:
    """Poll ``check`` until true; return the seconds it took. Raises LabError naming ``what``.

    ``PODROUTE_LAB_TIMEOUT_SCALE`` multiplies every timeout (an emulated VM is ~10x slower).
    """
    timeout *= TIMEOUT_SCALE
    t0 = time.monotonic()
    while True:
        if check():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _validate_name(name: str) -> None:
    if not name.replace("-", "").isalnum() or len(name) > 12:
        raise LabError(f"lab name {name!r} must be 1-12 letters, digits or '-'")


# --- building ---------------------------------------------------------------------------
def _check_ipip(fab: str) -> None:
    """Fail in one line, suggesting VXLAN, when this kernel cannot make an IPIP device."""
    # Endpoints are needed: a keyless ipip link duplicates the fallback tunl0 (EEXIST).
    probe = netns.ip("link", "add", "prl-probe", "type", "ipip", "remote", "198.18.255.254",
                     "local", "198.18.255.253", ns=fab, check=False)
    if probe.returncode != 0:
        raise LabError("this kernel has no IPIP support (module ipip not available); "
                       "use --encapsulation vxlan (or run the IPIP tests in the VM: pytest tests/vm)")
    netns.ip("link", "del", "prl-probe", ns=fab, check=False)


def _build_fabric(lab: Lab, n_nodes: int) -> None:
    fab = lab.prefix + "fab"
    netns.add(fab)
    lab.namespaces.append(fab)
    lab.save()
    if lab.encapsulation == "ipip":
        _check_ipip(fab)
    rr = lab.prefix + "rr"
    netns.add(rr)
    lab.namespaces.append(rr)
    lab.save()
    for s in range(lab.subnets):
        netns.ip("link", "add", f"br{s}", "type", "bridge", ns=fab)
        netns.ip("link", "set", f"br{s}", "up", ns=fab)
        netns.veth(rr, f"eth{s}", fab, f"rr{s}")
        netns.ip("link", "set", f"rr{s}", "master", f"br{s}", ns=fab)
        netns.ip("addr", "add", f"{router_ip(s)}/24", "dev", f"eth{s}", ns=rr)
    # The router namespace joins the subnets (the underlay's L3 hop for CrossSubnet labs).
    netns.sysctl(rr, "net.ipv4.ip_forward", "1")
    if lab.topology == "rr2":  # a second reflector on subnet 0, for losing one RR
        rr2 = lab.prefix + "rr2"
        netns.add(rr2)
        lab.namespaces.append(rr2)
        lab.save()
        netns.veth(rr2, "eth0", fab, "rr2")
        netns.ip("link", "set", "rr2", "master", "br0", ns=fab)
        netns.ip("addr", "add", f"{RR2_IP}/24", "dev", "eth0", ns=rr2)
    for i in range(1, n_nodes + 1):
        s = (i - 1) % lab.subnets
        node_ns = f"{lab.prefix}n{i}"
        netns.add(node_ns)
        lab.namespaces.append(node_ns)
        lab.save()
        netns.veth(node_ns, "eth0", fab, f"n{i}")
        netns.ip("link", "set", f"n{i}", "master", f"br{s}", ns=fab)
        node_ip = subnet_net(s).network_address + 10 + i
        netns.ip("addr", "add", f"{node_ip}/24", "dev", "eth0", ns=node_ns)
        # A node has a default route in real life; proxy ARP for 169.254.1.1 needs one too.
        netns.ip("route", "add", "default", "via", str(router_ip(s)), ns=node_ns)
        netns.sysctl(node_ns, "net.ipv4.ip_forward", "1")
        block = ipaddress.IPv4Network(f"198.19.{i}.0/26")
        ndir = lab.path / f"n{i}"
        ndir.mkdir(parents=True, exist_ok=True)
        asn = TOR_ASN + i if lab.topology == "tor" else ASN  # AS per node under a ToR
        lab.nodes.append(Node(f"n{i}", node_ns, str(node_ip), str(block), str(ndir), subnet=s, asn=asn))
    lab.save()


def _node_peers(lab: Lab, node: Node) -> list[dict[str, Any]]:
    if lab.topology in ("mesh", "podroute-rr"):
        return []  # from the cluster file
    if lab.topology == "rr2":
        return [{"address": str(RR_IP), "asn": ASN, "holdTime": 30}, {"address": str(RR2_IP), "asn": ASN, "holdTime": 30}]
    asn = TOR_ASN if lab.topology == "tor" else ASN
    return [{"address": str(router_ip(node.subnet)), "asn": asn, "holdTime": 30}]


def _write_cluster(lab: Lab, members: list[Node]) -> None:
    """The file datastore shared by mesh / podroute-rr labs (written atomically)."""
    nodes = []
    for n in members:
        entry: dict[str, Any] = {"name": f"{lab.name}-{n.name}", "ip": n.ip, "asn": n.asn, "podCIDRs": [n.block]}
        if lab.topology == "podroute-rr" and n is lab.nodes[0]:
            entry["routeReflectorClusterID"] = n.ip
        nodes.append(entry)
    doc = {"bgp": {"nodeToNodeMesh": lab.topology == "mesh", "asn": ASN}, "nodes": nodes}
    tmp = lab.path / "cluster.yaml.tmp"
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, lab.path / "cluster.yaml")


def _node_config(lab: Lab, node: Node) -> Path:
    ndir = Path(node.dir)
    cfg = {
        "nodeName": f"{lab.name}-{node.name}",
        "nodeIP": node.ip,
        "asn": node.asn,
        "podCIDRs": [node.block],
        "ipPools": [{"cidr": str(POOL), "blockSize": 26,
                     "ipipMode": lab.encap_mode if lab.encapsulation == "ipip" else "Never",
                     "vxlanMode": lab.encap_mode if lab.encapsulation == "vxlan" else "Never"}],
        "mtu": "auto",
        "peers": _node_peers(lab, node),
        "resyncInterval": 30,
        "paths": {"stateDir": str(ndir / "state"), "runDir": str(ndir / "run")},
    }
    if lab.topology in ("mesh", "podroute-rr"):
        cfg["clusterFile"] = str(lab.path / "cluster.yaml")
    path = ndir / "node.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _start_router(lab: Lab, name: str, ns: str, router_id: ipaddress.IPv4Address) -> None:
    """Start one BGP router (BIRD 2 or FRR bgpd) in ``ns`` as a reflector or ToR."""
    role = "tor" if lab.topology == "tor" else "rr"
    asn = TOR_ASN if role == "tor" else ASN
    rdir = lab.path / name
    rdir.mkdir(exist_ok=True)
    local = (lambda n: router_ip(n.subnet)) if name == "rr" else (lambda n: RR2_IP)
    neighbors = [bird.BirdNeighbor(n.name, ipaddress.IPv4Address(n.ip), n.asn, local(n)) for n in lab.nodes]
    if lab.peer == "bird":
        conf = rdir / "bird.conf"
        conf.write_text(bird.render(router_id, asn, neighbors, rdir / "bird.log", role, lab.router_restart_time))
        ctl = rdir / "bird.ctl"
        argv = ["bird", "-f", "-c", str(conf), "-s", str(ctl), "-P", str(rdir / "bird.pid")]
    else:
        conf = rdir / "bgpd.conf"
        conf.write_text(frr.render(router_id, asn, neighbors, rdir / "bgpd.log", role, lab.router_restart_time))
        ctl = rdir / "bgpd.vty"
        argv = frr.command(conf, rdir, rdir / "bgpd.pid")
    proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=open(rdir / "router.out", "wb"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    lab.routers.append({"name": name, "ns": ns, "impl": lab.peer, "pid": proc.pid, "dir": str(rdir),
                        "ctl": str(ctl), "role": role, "asn": asn, "router_id": str(router_id)})
    lab.save()
    ready = (lambda: ctl.exists()) if lab.peer == "bird" else (lambda: (rdir / "bgpd.vty").exists())
    _wait(f"{lab.peer} on {name} to start", lambda: ready() or proc.poll() is not None, 15)
    if proc.poll() is not None:
        raise LabError(f"{lab.peer} on {name} exited with {proc.returncode}: "
                       f"{(rdir / 'router.out').read_text(errors='replace')[-500:]}")


def _start_routers(lab: Lab) -> None:
    if lab.topology in ("mesh", "podroute-rr"):
        return  # podroute nodes peer among themselves; the rr namespace only routes the underlay
    _start_router(lab, "rr", lab.prefix + "rr", RR_IP)
    if lab.topology == "rr2":
        _start_router(lab, "rr2", lab.prefix + "rr2", RR2_IP)


def router_sessions(lab: Lab) -> dict[str, bool]:
    """``{"<router>:<node>": Established?}`` as each external router sees its sessions."""
    out: dict[str, bool] = {}
    by_ip = {n.ip: n.name for n in lab.nodes}
    for r in lab.routers:
        if r["impl"] == "bird":
            states = bird.established(Path(r["ctl"]), r["ns"])
        else:
            states = {by_ip.get(a, a): up for a, up in frr.established(Path(r["dir"]), r["ns"]).items()}
        for node, up in states.items():
            out[f"{r['name']}:{node}"] = up
    return out


def _start_agent(lab: Lab, node: Node, install_cni: bool = True) -> None:
    """Write the node's config, install its CNI plugin and conflist (the unit's
    ``ExecStartPre``; ``install_cni=False`` when the caller just did), then start its agent."""
    cfg = _node_config(lab, node)
    if install_cni:
        pods.install(Path(node.dir), cfg)
    log = open(Path(node.dir) / "agent.log", "ab")
    proc = subprocess.Popen(["ip", "netns", "exec", node.ns, sys.executable, "-m", "podroute.cli", "node", "run",
                             "--config", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    node.pid = proc.pid
    lab.save()


def _status(node: Node) -> dict[str, Any] | None:
    try:
        return statusd.query(Path(node.dir) / "run" / "agent.sock", timeout=2)
    except statusd.AgentUnreachable:
        return None


def _agent_alive(node: Node) -> bool:
    return bool(node.pid) and netns._alive(node.pid or -1)


def _check_agent(node: Node) -> None:
    if not _agent_alive(node):
        tail = (Path(node.dir) / "agent.log").read_text(errors="replace")[-1500:]
        raise LabError(f"agent of {node.name} exited; last log lines:\n{tail}")


def _established(node: Node) -> bool:
    _check_agent(node)
    st = _status(node)
    return bool(st) and all(p["state"] == "established" for p in st["bgp"]["peers"]) and bool(st["bgp"]["peers"])


def _fib_routes(ns: str) -> list[str]:
    """Our non-workload routes in ``ns`` as ``ip route`` prints them (proto 90, not scope link)."""
    out = netns.ip("route", "show", "proto", "90", ns=ns, check=False).stdout
    return [line.strip() for line in out.splitlines() if "scope link" not in line]


def _fib_has(ns: str, block: str) -> bool:
    out = netns.ip("route", "show", "exact", block, "proto", "90", ns=ns, check=False).stdout
    return block.split("/")[0] in out


def _wire_pod(lab: Lab, node: Node, j: int) -> Pod:
    """Pod ``j`` of ``node``: a namespace, attached by CNI ADD through the node's conflist."""
    name = f"{node.name}p{j}"
    pod_ns = f"{lab.prefix}{name}"
    netns.add(pod_ns)
    lab.namespaces.append(pod_ns)
    cid = f"{lab.name}{node.name}pod{j}".ljust(16, "0")
    pod = Pod(name, node.name, pod_ns, cid)
    lab.pods.append(pod)
    lab.save()
    try:
        result, pod.add_ms = pods.add(Path(node.dir), node.ns, pods.attachment(pod_ns, cid, name))
    except LabError as e:
        raise LabError(f"CNI ADD for pod {name} on {node.name}: {e}") from None
    pod.ip = result["ips"][0]["address"].split("/")[0]
    lab.save()
    return pod


def _ping(src: Pod, dst: Pod) -> bool:
    for _ in range(3):
        if netns.run(["ping", "-c", "1", "-W", "1", "-q", dst.ip or ""], ns=src.ns, check=False).returncode == 0:
            return True
    return False


# --- report -----------------------------------------------------------------------------
def _report(lab: Lab, statuses: dict[str, dict[str, Any]], matrix: dict[tuple[str, str], bool],
            bird_states: dict[str, bool]) -> tuple[str, bool]:
    out: list[str] = []
    t = lab.timings
    nets = ", ".join(str(subnet_net(s)) for s in range(lab.subnets))
    encap = "none (native routing)" if lab.encapsulation == "none" else f"{lab.encapsulation} {lab.encap_mode}"
    routers = {"rr": f"{lab.peer} route reflector {RR_IP} (AS {ASN})",
               "rr2": f"two {lab.peer} route reflectors {RR_IP}, {RR2_IP} (AS {ASN})",
               "tor": f"{lab.peer} ToR {RR_IP} (AS {TOR_ASN}), eBGP, one AS per node",
               "mesh": f"node-to-node full mesh (AS {ASN})",
               "podroute-rr": f"{lab.nodes[0].name} is a podroute route reflector (AS {ASN})"}[lab.topology]
    out.append(f"podroute lab '{lab.name}': {len(lab.nodes)} nodes, {len(lab.pods)} pods, {routers}; "
               f"underlay {nets}, pool {POOL}, encapsulation {encap}")
    out.append(f"lab up took {t.get('total_s', 0):.1f} s: namespaces {t.get('fabric_s', 0):.2f} s, "
               f"first {len(lab.nodes) - 1} agents established {t.get('established_s', 0):.2f} s, "
               f"pods {t.get('pods_s', 0):.2f} s")
    out.append(f"new node join: {lab.nodes[-1].name}'s block reached every other FIB "
               f"{1000 * t.get('join_converge_s', 0):.0f} ms after its BGP session came up "
               f"({t.get('join_total_s', 0):.2f} s after its agent started)")
    adds = [p.add_ms for p in lab.pods if p.add_ms is not None]
    if adds:
        out.append(f"CNI ADD (runtime-style, through the installed conflist: podroute + portmap, wall): p50 {statistics.median(adds):.1f} ms, "
                   f"max {max(adds):.1f} ms over {len(adds)} pods")
    out.append("")
    rows = []
    ok_sessions = True
    for n in lab.nodes:
        st = statuses.get(n.name) or {}
        peers = st.get("bgp", {}).get("peers", [])
        est = sum(1 for p in peers if p["state"] == "established")
        ok_sessions &= bool(peers) and est == len(peers)
        learned = len(st.get("bgp", {}).get("routes", []))
        fib = st.get("fib", {}).get("desired_by_owner", {})
        rows.append([n.name, n.ip, n.block, f"{est}/{len(peers)} Established", str(learned),
                     f"{fib.get('bgp', 0)} remote, {fib.get('blocks', 0)} blackhole, {fib.get('workloads', 0)} workload",
                     str(st.get("workloads", 0))])
    out.append("Nodes")
    out.append(statusd._table(["NODE", "NODE IP", "BLOCK", "BGP SESSIONS", "ROUTES LEARNED", "FIB (proto 90)", "PODS"], rows))
    out.append("")
    out.append("Routes to other nodes' blocks (ip route show proto 90, per node)")
    for n in lab.nodes:
        for line in _fib_routes(n.ns):
            out.append(f"  {n.name}: {line}")
    out.append("")
    if lab.routers:
        out.append(f"Router sessions: {sum(bird_states.values())}/{len(bird_states)} Established "
                   f"({', '.join(k + '=' + ('up' if v else 'DOWN') for k, v in sorted(bird_states.items()))})")
        ok_sessions &= bool(bird_states) and all(bird_states.values())
    out.append("")
    names = [p.name for p in lab.pods]
    width = max(len(n) for n in names) + 2
    out.append("Ping matrix (row pings column; ok = reply, FAIL = no reply, . = same pod)")
    out.append(" " * width + "".join(n.ljust(width) for n in names))
    for s in lab.pods:
        cells = []
        for d in lab.pods:
            cells.append("." if s is d else ("ok" if matrix[(s.name, d.name)] else "FAIL"))
        out.append(s.name.ljust(width) + "".join(c.ljust(width) for c in cells))
    cross = [(s, d) for s in lab.pods for d in lab.pods if s.node != d.node]
    cross_ok = sum(matrix[(s.name, d.name)] for s, d in cross)
    same = [(s, d) for s in lab.pods for d in lab.pods if s.node == d.node and s is not d]
    same_ok = sum(matrix[(s.name, d.name)] for s, d in same)
    passed = ok_sessions and cross_ok == len(cross) and same_ok == len(same)
    out.append("")
    out.append(f"cross-node pod pairs reachable: {cross_ok}/{len(cross)}; same-node: {same_ok}/{len(same)}; "
               f"BGP sessions {'all Established' if ok_sessions else 'NOT all Established'}")
    out.append(f"RESULT: {'PASS' if passed else 'FAIL'}")
    return "\n".join(out), passed


# --- commands ---------------------------------------------------------------------------
def lab_up(*, nodes: int, peer: str, name: str, state_root: Path, pods_per_node: int = 2,
           keep_on_failure: bool = False, encapsulation: str = "none", encap_mode: str = "Always",
           subnets: int = 1, topology: str = "rr", router_restart_time: int = 120) -> int:
    """Build and prove the lab. Returns 0 when every check passed, 1 otherwise."""
    try:
        _validate_name(name)
        if encapsulation not in ENCAPSULATIONS:
            raise LabError(f"--encapsulation {encapsulation}: need one of {', '.join(ENCAPSULATIONS)}")
        if encap_mode not in ("Always", "CrossSubnet"):
            raise LabError(f"--encap-mode {encap_mode}: need Always or CrossSubnet")
        if not 1 <= subnets <= min(nodes, MAX_SUBNETS):
            raise LabError(f"--subnets {subnets}: need 1..{min(nodes, MAX_SUBNETS)}")
        if topology not in TOPOLOGIES:
            raise LabError(f"--topology {topology}: need one of {', '.join(TOPOLOGIES)}")
        if peer not in ROUTER_IMPLS:
            raise LabError(f"--peer {peer}: need one of {', '.join(ROUTER_IMPLS)}")
        if topology == "rr2" and subnets != 1:
            raise LabError("--topology rr2 needs --subnets 1")
        if not 2 <= nodes <= MAX_NODES:
            raise LabError(f"--nodes {nodes}: need 2..{MAX_NODES} nodes")
        if not 1 <= pods_per_node <= 20:
            raise LabError(f"--pods {pods_per_node}: need 1..20 pods per node")
        if os.geteuid() != 0:
            raise LabError("the lab creates network namespaces and needs root")
        for tool in ("ip", "ping", *(("bird", "birdc") if peer == "bird" else (frr.BGPD, "vtysh"))):
            if not shutil.which(tool):
                raise LabError(f"{tool} not found: run scripts/setup first")
    except LabError as e:
        print(f"podroute lab: {e}", file=sys.stderr)
        return 2
    root = state_root / name
    if (root / "lab.json").exists() or netns.list_prefixed(f"prl-{name}-"):
        _say(f"lab '{name}' exists: taking it down first")
        lab_down(name=name, state_root=state_root, quiet=True)
    root.mkdir(parents=True, exist_ok=True)
    lab = Lab(name, str(root), encapsulation=encapsulation, encap_mode=encap_mode, subnets=subnets,
              topology=topology, peer=peer, router_restart_time=router_restart_time)
    t_start = time.monotonic()
    try:
        t0 = time.monotonic()
        _say(f"building the underlay, routers and {nodes} node namespaces ({topology}, {peer})")
        _build_fabric(lab, nodes)
        lab.timings["fabric_s"] = time.monotonic() - t0
        _start_routers(lab)
        first, last = lab.nodes[:-1], lab.nodes[-1]
        if topology in ("mesh", "podroute-rr"):
            _write_cluster(lab, first)
        t0 = time.monotonic()
        _say(f"starting podroute agents on {', '.join(n.name for n in first)}")
        for n in first:
            _start_agent(lab, n)
        for n in first:
            _wait(f"{n.name}'s BGP sessions", lambda n=n: _established(n), 60, 0.1)
        for n in first:
            for m in first:
                if m is not n:
                    _wait(f"{m.block} in {n.name}'s FIB", lambda n=n, m=m: _fib_has(n.ns, m.block), 30)
        lab.timings["established_s"] = time.monotonic() - t0

        _say(f"joining {last.name} and timing until its block {last.block} is in every other FIB")
        pods.install(Path(last.dir), _node_config(lab, last))  # before the clock: times the agent only
        t_agent = time.time()
        if topology in ("mesh", "podroute-rr"):
            _write_cluster(lab, lab.nodes)  # the running nodes pick the new node up from the datastore
        _start_agent(lab, last, install_cni=False)
        pending = {n.name for n in first}
        deadline = time.monotonic() + 60 * TIMEOUT_SCALE
        while pending:
            _check_agent(last)
            for n in first:
                if n.name in pending and _fib_has(n.ns, last.block):
                    pending.discard(n.name)
            if time.monotonic() > deadline:
                raise LabError(f"{last.block} never reached {', '.join(sorted(pending))}")
            time.sleep(0.005)
        t_converged = time.time()
        st = _status(last)
        since = max((p.get("since") or 0) for p in st["bgp"]["peers"]) if st else 0
        lab.timings["join_total_s"] = t_converged - t_agent
        lab.timings["join_converge_s"] = max(0.0, t_converged - since) if since else t_converged - t_agent
        _wait(f"{last.name}'s FIB to learn the other blocks",
              lambda: all(_fib_has(last.ns, n.block) for n in first), 30)

        t0 = time.monotonic()
        _say(f"wiring {pods_per_node} pods per node through each node's installed conflist")
        for n in lab.nodes:
            for j in range(1, pods_per_node + 1):
                _wire_pod(lab, n, j)
        lab.timings["pods_s"] = time.monotonic() - t0
        _say("pinging every pod pair")
        matrix = {(s.name, d.name): (s is d) or _ping(s, d) for s in lab.pods for d in lab.pods}
        statuses = {n.name: _status(n) or {} for n in lab.nodes}
        bird_states = router_sessions(lab)
        lab.timings["total_s"] = time.monotonic() - t_start
        lab.save()
        text, passed = _report(lab, statuses, matrix, bird_states)
    except LabError as e:
        print(f"podroute lab: {e}", file=sys.stderr)
        if not keep_on_failure:
            print("podroute lab: removing the partial lab (use --keep to inspect it)", file=sys.stderr)
            lab_down(name=name, state_root=state_root, quiet=True)
        return 1
    print()
    print(text)
    (root / "report.txt").write_text(text + "\n")
    (root / "report.json").write_text(json.dumps({
        "passed": passed, "timings": lab.timings,
        "pods": [asdict(p) for p in lab.pods], "nodes": [asdict(n) for n in lab.nodes],
        "encapsulation": lab.encapsulation, "encap_mode": lab.encap_mode, "subnets": lab.subnets,
        "fib_routes": {n.name: _fib_routes(n.ns) for n in lab.nodes},
        "router_sessions": bird_states, "topology": lab.topology, "peer": lab.peer,
        "matrix": [{"src": s, "dst": d, "ok": ok} for (s, d), ok in matrix.items()],
        "sessions": {n: [{"address": p["address"], "state": p["state"]} for p in (st.get("bgp", {}).get("peers", []))]
                     for n, st in statuses.items()},
    }, indent=2))
    print(f"\nreport saved to {root / 'report.txt'}; inspect with: podroute lab status --name {name}; "
          f"remove with: podroute lab down --name {name}")
    return 0 if passed else 1


def lab_down(*, name: str, state_root: Path, quiet: bool = False) -> int:
    """Remove every namespace, process and file of lab ``name``. Idempotent."""
    root = state_root / name
    lab = Lab.load(root)
    prefix = f"prl-{name}-"
    if lab:
        # SIGTERM first: each agent stops its speaker and ExaBGP itself.
        netns.kill_pids([n.pid for n in lab.nodes if n.pid], grace=10)
        netns.kill_pids([r["pid"] for r in lab.routers if r.get("pid")], grace=5)
    spaces = set(netns.list_prefixed(prefix)) | set(lab.namespaces if lab else [])
    for ns in sorted(spaces, reverse=True):  # pods before nodes before the fabric
        netns.delete(ns)
    shutil.rmtree(root, ignore_errors=True)
    left = netns.list_prefixed(prefix)
    if not quiet:
        print(f"lab '{name}': removed {len(spaces)} namespace(s)" + (f"; STILL PRESENT: {left}" if left else ""))
    return 1 if left else 0


def lab_status(*, name: str, state_root: Path) -> int:
    lab = Lab.load(state_root / name)
    if not lab:
        print(f"no lab '{name}' under {state_root}", file=sys.stderr)
        return 1
    for n in lab.nodes:
        st = _status(n)
        print(f"=== {n.name} ({n.ns}, {n.ip}, agent pid {n.pid})")
        print(statusd.render(st) if st else "agent not answering")
        print()
    return 0

"""Support for the churn and chaos e2e tests: CNI calls through the lab's installed plugin,
throwaway pod namespaces in bulk, a node's agent restarted with config overrides or killed
as a whole service, a status probe, and a node's leak snapshot.

Everything acts on one lab (``podroute.lab.control.load``) and only inside its namespaces;
processes are signalled by PID.
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from podroute import statusd
from podroute.lab import netns, runner

HOST_VETH_PREFIX = "prt"   # cni.plugin.CNIPlugin's default host_prefix, as the agent uses it
TRY_AGAIN_LATER = 11        # CNI spec "Well-known Error Codes"


# --- CNI through the installed plugin -------------------------------------------------------
@dataclass(frozen=True)
class CniCall:
    """One plugin execution: ``rc`` exit status (-1: our timeout), ``code``/``msg`` from the
    CNI error JSON (None on success), ``ip`` from an ADD result, ``seconds`` wall time."""
    command: str
    container_id: str
    rc: int
    code: int | None
    msg: str
    ip: ipaddress.IPv4Address | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.rc == 0


def plugin_config(node: runner.Node) -> str:
    """The network config a runtime would pass on stdin for ``node``: the lab's ``cni.json``,
    or the first plugin of a ``*.conflist`` with ``name``/``cniVersion`` injected (libcni)."""
    ndir = Path(node.dir)
    single = ndir / "cni.json"
    if single.exists():
        return single.read_text()
    for path in sorted(ndir.rglob("*.conflist")):
        doc = json.loads(path.read_text())
        plugin = dict(doc["plugins"][0])
        plugin.update(name=doc["name"], cniVersion=doc["cniVersion"])
        return json.dumps(plugin)
    raise FileNotFoundError(f"no CNI config for {node.name} under {ndir}")


def plugin_path(lab: runner.Lab, node: runner.Node) -> Path:
    """The plugin ``lab up`` installed (:func:`cni.install.install_shim`): the node's own CNI bin
    dir when the lab gives each node one (``podroute cni install``), else the lab's."""
    own = Path(node.dir) / "cni" / "bin" / "podroute"
    return own if own.exists() else Path(lab.root) / "cni-bin" / "podroute"


def cni(lab: runner.Lab, node: runner.Node, command: str, cid: str, pod_ns: str, pod_name: str,
        timeout: float = 90.0) -> CniCall:
    """Execute the installed plugin in ``node``'s namespace as a runtime does (CNI_* env, the
    config on stdin; CNI spec 1.0.0 "Section 3: Execution Protocol")."""
    shim = plugin_path(lab, node)
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": str(netns.NETNS_DIR / pod_ns),
           "CNI_IFNAME": "eth0", "CNI_PATH": str(shim.parent),
           "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=churn;K8S_POD_NAME={pod_name};"
                       f"K8S_POD_INFRA_CONTAINER_ID={cid}",
           "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    t0 = time.monotonic()
    try:
        p = subprocess.run(["ip", "netns", "exec", node.ns, str(shim)], input=plugin_config(node), env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return CniCall(command, cid, -1, None, f"plugin still running after {timeout}s", None, timeout)
    took = time.monotonic() - t0
    code, msg, ip = None, "", None
    try:
        out = json.loads(p.stdout) if p.stdout.strip() else {}
    except ValueError:
        out = {"msg": f"not JSON: {p.stdout[:200]!r} {p.stderr[:200]!r}"}
    if p.returncode != 0:
        code, msg = out.get("code"), f"{out.get('msg', '')} {out.get('details', '')}".strip() or p.stderr[:300]
    elif command == "ADD":
        ip = ipaddress.IPv4Address(out["ips"][0]["address"].split("/")[0])
    return CniCall(command, cid, p.returncode, code, msg, ip, took)


def cni_retrying(lab: runner.Lab, node: runner.Node, command: str, cid: str, pod_ns: str, pod_name: str,
                 deadline_s: float = 60.0) -> tuple[CniCall, int]:
    """``command`` as a runtime runs it: repeated while the answer is code 11 ("try again
    later", CNI spec "Well-known Error Codes"), up to ``deadline_s``. Returns (last call,
    number of code-11 answers before it)."""
    end = time.monotonic() + deadline_s
    retries = 0
    while True:
        call = cni(lab, node, command, cid, pod_ns, pod_name)
        if call.ok or call.code != TRY_AGAIN_LATER or time.monotonic() > end:
            return call, retries
        retries += 1
        time.sleep(0.2)


# --- pod namespaces in bulk -----------------------------------------------------------------
def _ip_batch(lines: Sequence[str]) -> None:
    if lines:
        p = subprocess.run(["ip", "-force", "-batch", "-"], input="\n".join(lines) + "\n",
                           capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"ip -batch failed: {p.stderr.strip()[:500]}")


def add_netns(names: Sequence[str]) -> None:
    """Create the namespaces (one ``ip -batch``); each must not exist yet."""
    _ip_batch([f"netns add {n}" for n in names])


def del_netns(names: Sequence[str]) -> None:
    """Delete the namespaces that exist (one ``ip -batch``); their veth ends go with them."""
    _ip_batch([f"netns delete {n}" for n in names if netns.exists(n)])


# --- agents ---------------------------------------------------------------------------------
def kill_agent_service(lab: runner.Lab, node: runner.Node, pids: Sequence[int] | None = None) -> list[int]:
    """SIGKILL the node's agent and its descendants (ExaBGP, relay), as systemd's
    ``KillMode=control-group`` does on a crash, but not CNI plugin runs in the namespace.
    ``pids``: that tree read beforehand (reading /proc takes milliseconds, which matter when
    the moment is aimed). Waits (bounded) until they are gone. Returns the PIDs signalled."""
    assert node.pid, f"{node.name} has no agent"
    pids = list(pids) if pids is not None else netns.process_tree(node.pid)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    end = time.monotonic() + 10
    while any(netns._alive(p) for p in pids) and time.monotonic() < end:
        time.sleep(0.02)
    return pids


def kill_exabgp(state: dict[str, Any]) -> int | None:
    """SIGKILL the ExaBGP whose PID the agent reports (status ``bgp.exabgp.pid``)."""
    pid = state["bgp"]["exabgp"]["pid"]
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pid


def start_agent_with(lab: runner.Lab, node: runner.Node, overrides: dict[str, Any]) -> int:
    """Start ``node``'s agent as ``lab up`` does, with ``overrides`` merged into the config
    ``runner._node_config`` renders (written to ``node-test.yaml`` beside it)."""
    doc = yaml.safe_load(runner._node_config(lab, node).read_text())
    doc.update(overrides)
    path = Path(node.dir) / "node-test.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    log = open(Path(node.dir) / "agent.log", "ab")
    proc = subprocess.Popen(["ip", "netns", "exec", node.ns, sys.executable, "-m", "podroute.cli", "node", "run",
                             "--config", str(path)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    node.pid = proc.pid
    lab.save()
    return proc.pid


def wait_ipam_write(node: runner.Node, timeout: float = 2.0, poll_s: float = 0.001) -> bool:
    """Wait until one of the node's IPAM block files is rewritten (an address claimed or
    released); False if none was within ``timeout`` s. Polls the files' mtimes."""
    def stamps() -> dict[str, int]:
        out = {}
        for f in (Path(node.dir) / "state" / "ipam").glob("block-*.json"):
            try:
                out[f.name] = f.stat().st_mtime_ns
            except FileNotFoundError:
                pass
        return out
    first, end = stamps(), time.monotonic() + timeout
    while time.monotonic() < end:
        if stamps() != first:
            return True
        time.sleep(poll_s)
    return False


def agent_status(node: runner.Node, timeout: float = 5.0) -> dict[str, Any] | None:
    try:
        return statusd.query(Path(node.dir) / "run" / "agent.sock", timeout=timeout)
    except statusd.AgentUnreachable:
        return None


def converged(lab: runner.Lab) -> list[str]:
    """What still stops the lab from being converged: an agent not answering, a session not
    Established, a graceful-restart hold, another node's block missing from a FIB."""
    problems = []
    for n in lab.nodes:
        st = agent_status(n, timeout=2)
        if st is None:
            problems.append(f"{n.name}: agent not answering")
            continue
        peers = st["bgp"]["peers"]
        if not peers or any(p["state"] != "established" for p in peers):
            problems.append(f"{n.name}: BGP not established")
        if st["fib"].get("graceful_restart_hold"):
            problems.append(f"{n.name}: graceful-restart hold")
        for m in lab.nodes:
            if m is not n and not runner._fib_has(n.ns, m.block):
                problems.append(f"{n.name}: no route to {m.block}")
    return problems


# --- status probe ---------------------------------------------------------------------------
class StatusProbe(threading.Thread):
    """Queries the agent's status every ``interval`` s until :meth:`stop`, each with a
    ``timeout`` s deadline, and records the latencies (a query that times out counts as
    ``timeout``). ``frozen`` is set on the first query that got no answer in ``timeout``."""

    def __init__(self, node: runner.Node, interval: float = 0.1, timeout: float = 5.0,
                 max_samples: int = 100_000) -> None:
        super().__init__(daemon=True, name=f"status-probe-{node.name}")
        self.sock = Path(node.dir) / "run" / "agent.sock"
        self.interval, self.timeout, self.max_samples = interval, timeout, max_samples
        self.samples = 0
        self.worst_s = 0.0
        self.failures: list[str] = []
        self.loop_worst_s: float | None = None
        self.frozen = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set() and self.samples < self.max_samples:
            t0 = time.monotonic()
            try:
                st = statusd.query(self.sock, timeout=self.timeout)
                loop = st.get("loop") or {}
                if isinstance(loop.get("worst_s"), (int, float)):
                    self.loop_worst_s = max(self.loop_worst_s or 0.0, float(loop["worst_s"]))
            except statusd.AgentUnreachable as e:
                if len(self.failures) < 20:
                    self.failures.append(f"{time.strftime('%H:%M:%S')} {e}")
                if time.monotonic() - t0 >= self.timeout * 0.9:
                    self.frozen.set()
            self.worst_s = max(self.worst_s, time.monotonic() - t0)
            self.samples += 1
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=self.timeout + 5)


# --- leak snapshot --------------------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    """One node's CNI-related state: IPAM ``allocations`` {ip: handle} (from the block files),
    ``alloc_veths`` {ip: host veth recorded}, ``host_veths`` (``prt*`` links), ``workload_routes``
    {ip: dev} (proto 90 scope link /32s) and every proto-90 route as ``ip -j`` gives it."""
    allocations: dict[ipaddress.IPv4Address, str]
    alloc_veths: dict[ipaddress.IPv4Address, str]
    host_veths: frozenset[str]
    workload_routes: dict[ipaddress.IPv4Address, str]
    routes: tuple[dict[str, Any], ...]


def snapshot(node: runner.Node) -> Snapshot:
    allocations, veths = {}, {}
    for f in sorted((Path(node.dir) / "state" / "ipam").glob("block-*.json")):
        for ip, a in json.loads(f.read_text()).get("allocations", {}).items():
            allocations[ipaddress.IPv4Address(ip)] = a["handle"]
            veths[ipaddress.IPv4Address(ip)] = a.get("attrs", {}).get("host_ifname", "")
    links = netns.ip_json("link", "show", ns=node.ns)
    routes = netns.ip_json("route", "show", "proto", "90", ns=node.ns)
    wl = {ipaddress.IPv4Address(r["dst"]): r.get("dev", "") for r in routes
          if r.get("scope") == "link" and "/" not in r["dst"]}
    return Snapshot(allocations, veths, frozenset(link["ifname"] for link in links
                                                  if link["ifname"].startswith(HOST_VETH_PREFIX)),
                    wl, tuple(routes))


def leaks(base: Snapshot, now: Snapshot) -> list[str]:
    """Differences of ``now`` from ``base`` (taken when only the lab's own pods existed)."""
    out = []
    extra = {ip: h for ip, h in now.allocations.items() if base.allocations.get(ip) != h}
    if extra:
        out.append(f"leaked IPAM records {len(extra)}: {sorted(extra.items())[:5]}")
    lost = set(base.allocations) - set(now.allocations)
    if lost:
        out.append(f"lost IPAM records of live pods: {sorted(lost)[:5]}")
    if now.host_veths - base.host_veths:
        out.append(f"leaked host veths {len(now.host_veths - base.host_veths)}: "
                   f"{sorted(now.host_veths - base.host_veths)[:5]}")
    if base.host_veths - now.host_veths:
        out.append(f"host veths of live pods gone: {sorted(base.host_veths - now.host_veths)}")
    if now.workload_routes != base.workload_routes:
        diff = set(now.workload_routes.items()) ^ set(base.workload_routes.items())
        out.append(f"workload /32 routes differ from the live pods' ({len(diff)}): {sorted(diff)[:5]}")
    return out


def fib_problems(node: runner.Node, others: Sequence[runner.Node], snap: Snapshot,
                 state: dict[str, Any]) -> list[str]:
    """The FIB against desired state: one /32 per IPAM record via its recorded veth, a blackhole
    per own pod CIDR, a route to each other node's block via that node, and nothing more
    (the kernel's proto-90 count equals the agent's ``fib.desired_by_owner.total``)."""
    out = []
    want_wl = dict(snap.alloc_veths)
    if snap.workload_routes != want_wl:
        out.append(f"workload routes {sorted(set(snap.workload_routes.items()) ^ set(want_wl.items()))[:5]} "
                   "differ from the IPAM records")
    dsts = {r["dst"]: r for r in snap.routes}
    for cidr in state["node"]["pod_cidrs"]:
        if dsts.get(cidr, {}).get("type") != "blackhole":
            out.append(f"no blackhole for own block {cidr}")
    for m in others:
        if not any(r["dst"] == m.block and r.get("gateway") == m.ip for r in snap.routes):
            out.append(f"no route to {m.block} via {m.ip}")
    total = state["fib"]["desired_by_owner"]["total"]
    if total != len(snap.routes):
        out.append(f"kernel has {len(snap.routes)} proto-90 routes, the agent desires {total}")
    if state["workloads"] != len(snap.allocations):
        out.append(f"agent reports {state['workloads']} workloads, IPAM has {len(snap.allocations)}")
    return out


def keep_logs(lab: runner.Lab, dest: Path) -> None:
    """Copy each node's ``agent.log`` to ``dest/<node>-agent.log`` (``lab down`` removes the
    lab's state dir, and a failed run needs them)."""
    for n in lab.nodes:
        log = Path(n.dir) / "agent.log"
        if log.exists():
            (dest / f"{n.name}-agent.log").write_bytes(log.read_bytes())


def ping(src_ns: str, dst: str, tries: int = 3) -> bool:
    for _ in range(tries):
        if subprocess.run(["ip", "netns", "exec", src_ns, "ping", "-c", "1", "-W", "1", "-q", dst],
                          capture_output=True, timeout=10).returncode == 0:
            return True
    return False

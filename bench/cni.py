"""CNI ADD/DEL latency: podroute (installed shim -> agent-side CNI server) vs Debian's ``ptp`` +
``host-local``.

Layout, the same for both sides: a fresh ``prb-<hex>`` "host" namespace and one fresh
``prb-<hex>`` namespace per pod. The plugin executable is exec'd exactly as a runtime does
(CNI_* environment, network config on stdin) by a thread of this process that has ``setns``-ed
into the host namespace, so no ``ip netns exec`` start-up is added to either side. For podroute
the agent-side server (``bench.cni_server``: CNIServer + CNIPlugin + IPAM + NetlinkWiring, the
agent's own objects) runs in the host namespace. Pod addresses: podroute 198.19.1.0/24,
ptp 198.19.2.0/24; no traffic is sent.

Sequential: ``pods`` ADDs one after another (each timed), then ``pods`` DELs. podroute's DEL
answers once the pod is detached and deletes the veth pairs in a batch just after
(cni.netlink_wiring); the time from the last DEL until no pair is left is recorded as
``podroute_pairs_gone_after_last_del_ms`` in the DEL figures' detail. Concurrent: 20 ADDs
started at once into 20 fresh pod namespaces; the wall time until the last one exits.

Method, the same for both sides (``Side.call`` / ``Side.concurrent_add``): the clock runs from
just before the plugin executable is exec'd to its exit, what a runtime waits for; the same
network config fields (``mtu`` 1500, no masquerade), one untimed ADD+DEL warm-up each, pod
namespaces created before the clock, IPAM state in the same work directory. Differences
that are the designs under test, not the measurement: podroute's plugin is a shim that asks a
long-running agent-side server (started, and warmed up, before the clock), ptp does the work
in its own process and execs ``host-local``; podroute's DEL answers once the pod is detached
and its veth pairs are deleted in a batch just after, while ptp's DEL deletes the veth
before it exits. In the sequential loop that batch work runs during the following DELs, so
only the tail after the last DEL is outside every clock; it is recorded (above) rather than
added to a DEL the runtime no longer waits for.
"""
from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from nlcore.netns import call_in_netns as in_netns  # (ns name, fn) -> fn() run in ns

from . import ns as N

CONCURRENT = 20
CNI_BIN = "/usr/lib/cni"
def _env(cmd: str, cid: str, pod_ns: str, cni_path: str, pod: str) -> dict:
    return {"CNI_COMMAND": cmd, "CNI_CONTAINERID": cid, "CNI_NETNS": N.netns_path(pod_ns),
            "CNI_IFNAME": "eth0", "CNI_PATH": cni_path,
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={pod}",
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


class Side:
    def __init__(self, name: str, plugin: str, cni_path: str, conf: dict, host_prefix: str = "") -> None:
        self.name, self.plugin, self.cni_path = name, plugin, cni_path
        self.host_prefix = host_prefix  # host veth name prefix, to wait for retired pairs
        self.conf = json.dumps(conf)

    def call(self, cmd: str, cid: str, pod_ns: str, pod: str) -> float:
        t0 = time.perf_counter()
        p = subprocess.run([self.plugin], input=self.conf.encode(), capture_output=True, timeout=60,
                           env=_env(cmd, cid, pod_ns, self.cni_path, pod))
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            raise N.BenchError(f"{self.name} {cmd} {pod} failed: {p.stdout[:300]!r} {p.stderr[:300]!r}")
        return dt

    def concurrent_add(self, jobs: list[tuple[str, str, str]]) -> float:
        t0 = time.perf_counter()
        procs = [subprocess.Popen([self.plugin], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=_env("ADD", cid, pns, self.cni_path, pod))
                 for cid, pns, pod in jobs]
        outs = [p.communicate(self.conf.encode(), timeout=120) for p in procs]
        dt = time.perf_counter() - t0
        for p, (o, e) in zip(procs, outs):
            if p.returncode != 0:
                raise N.BenchError(f"{self.name} concurrent ADD failed: {o[:300]!r} {e[:300]!r}")
        return dt


def _measure(side: Side, host: str, pods: int, tag: str) -> dict:
    pod_ns = [N.new_ns() for _ in range(pods)]
    conc_ns = [N.new_ns() for _ in range(CONCURRENT)]
    try:
        def work():
            # warm-up (page cache, first-connection costs), untimed
            side.call("ADD", f"{tag}warm", pod_ns[0], "warm")
            side.call("DEL", f"{tag}warm", pod_ns[0], "warm")
            adds, dels = [], []
            for i, pns in enumerate(pod_ns):
                adds.append(side.call("ADD", f"{tag}{i:06d}", pns, f"p{i}"))
            for i, pns in enumerate(pod_ns):
                dels.append(side.call("DEL", f"{tag}{i:06d}", pns, f"p{i}"))
            # podroute's DEL retires the host veth and reaps the pairs in a batch: how long
            # after the last DEL until no pair is left (ptp deletes inside DEL: ~0)
            t0 = time.perf_counter()
            while (side.host_prefix and time.perf_counter() - t0 < 10
                   and any(n.startswith(side.host_prefix) for _, n in socket.if_nameindex())):
                time.sleep(0.002)
            reaped = time.perf_counter() - t0
            jobs = [(f"{tag}c{i:05d}", pns, f"c{i}") for i, pns in enumerate(conc_ns)]
            wall = side.concurrent_add(jobs)
            for cid, pns, pod in jobs:
                side.call("DEL", cid, pns, pod)
            return adds, dels, wall, reaped
        adds, dels, wall, reaped = in_netns(host, work)
    finally:
        for x in pod_ns + conc_ns:
            N.delete_ns(x)
    return {"add_ms": [a * 1e3 for a in adds], "del_ms": [d * 1e3 for d in dels], "concurrent_ms": wall * 1e3,
            "pairs_gone_after_last_del_ms": reaped * 1e3}


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def run(pods: int, workdir: Path) -> list[dict]:
    from cni.install import install_shim
    workdir.mkdir(parents=True, exist_ok=True)
    # --- anchor: ptp + host-local ---------------------------------------------------------------
    host = N.new_ns()
    try:
        N.sysctl(host, "net.ipv4.ip_forward", "1")
        ptp = Side("ptp", f"{CNI_BIN}/ptp", CNI_BIN, {
            "cniVersion": "1.0.0", "name": "prbptp", "type": "ptp", "ipMasq": False, "mtu": 1500,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "198.19.2.0/24"}]],
                     "dataDir": str(workdir / "host-local")}})
        anchor = _measure(ptp, host, pods, "ptp")
    finally:
        N.delete_ns(host)
    # --- podroute: installed shim -> CNI server in the host namespace ---------------------------
    host = N.new_ns()
    srv = None
    try:
        N.sysctl(host, "net.ipv4.ip_forward", "1")
        shim = install_shim(workdir / "cni-bin")
        sock = workdir / "cni.sock"
        srv = N.popen([sys.executable, "-m", "bench.cni_server", str(sock), str(workdir / "ipam"),
                       "198.19.1.0/24"], ns=host, log=workdir / "cni_server.log",
                      env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        deadline = time.monotonic() + 30
        while not sock.exists():
            if srv.poll() is not None or time.monotonic() > deadline:
                raise N.BenchError(f"CNI server did not start: {(workdir / 'cni_server.log').read_text()[-500:]}")
            time.sleep(0.02)
        pr = Side("podroute", str(shim), str(shim.parent), {
            "cniVersion": "1.0.0", "name": "podroute", "type": "podroute", "agentSocket": str(sock), "mtu": 1500},
            host_prefix="prt")
        mine = _measure(pr, host, pods, "pr")
    finally:
        if srv is not None:
            N.stop(srv)
        N.delete_ns(host)

    def fig(name, key, fn, target, tr, label):
        return {"figure": name, "unit": "ms", "higher_is_better": False,
                "podroute": fn(mine[key]), "anchor": fn(anchor[key]), "anchor_name": "ptp + host-local",
                "target_ratio": tr, "target": target, "detail": {
                    "podroute": mine[key], "anchor": anchor[key], "what": label, "pods": pods,
                    "podroute_pairs_gone_after_last_del_ms": mine["pairs_gone_after_last_del_ms"]}}
    return [
        fig("cni_add_p50", "add_ms", statistics.median, "<= 1.5x ptp", 1.5, "sequential ADD p50"),
        fig("cni_add_p99", "add_ms", lambda x: _pct(x, 0.99), "(report)", None, "sequential ADD p99"),
        fig("cni_del_p50", "del_ms", statistics.median, "<= 1x ptp", 1.0, "sequential DEL p50"),
        fig("cni_del_p99", "del_ms", lambda x: _pct(x, 0.99), "(report)", None, "sequential DEL p99"),
        fig(f"cni_concurrent_{CONCURRENT}", "concurrent_ms", lambda x: x, "<= 2x ptp", 2.0,
            f"{CONCURRENT} concurrent ADDs, wall"),
    ]

"""Issue 14, "What it must show" 2: pod churn on a lab node with links coming and going
during the agent's route and link dumps, the agent's status probed throughout.

Each burst: N throwaway pod namespaces, N concurrent CNI ADDs through the installed plugin
(as a runtime execs it), one pod pings a pod on the other node, N concurrent DELs (their
starts spread over a second), a wait until their host veths are gone while the pod
namespaces still exist, the namespaces deleted. Meanwhile veth pairs are created and deleted
back to back in the node's namespace and a stray proto-90 route is added now and then (the
agent's route monitor takes it for drift: a full dump and repair), and the node runs with
``resyncInterval: 1`` and as many /26 blocks of its /24 as N needs.

Size: ``PODROUTE_CHURN_BURSTS`` bursts (default 5) of ``PODROUTE_CHURN_PODS`` pods
(default 20, at most 250); the issue's size is 50 x 100. ``PODROUTE_CHURN_DEADLINE_S`` (default 900)
bounds the run. Results: ``<tmp>/churn.json`` and one printed line.
"""
from __future__ import annotations

import ipaddress
import json
import math
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from chaosutil import (HOST_VETH_PREFIX, StatusProbe, add_netns, agent_status, cni, converged, del_netns,
                       fib_problems, keep_logs, leaks, ping, snapshot, start_agent_with)
from labutil import lab, wait_for

pytestmark = pytest.mark.e2e

STATUS_BOUND_S = 1.0   # the bound on a `podroute status` answer, and on the loop lag
BURSTS = int(os.environ.get("PODROUTE_CHURN_BURSTS", "5"))
PODS = int(os.environ.get("PODROUTE_CHURN_PODS", "20"))
DEADLINE_S = float(os.environ.get("PODROUTE_CHURN_DEADLINE_S", "900"))
# DELs of a burst start spread over this many seconds (kubelets tear pods down over a moment,
# not in one instant); some land while the plugin's batched veth reap is already running.
DEL_SPREAD_S = 1.0
STRAY = "198.19.255.{}/32"   # in the pool, in no node's block: the agent deletes it as not desired


class LinkChurn(threading.Thread):
    """Veth pairs ``chz<k>a``/``chz<k>b`` added and deleted in ``ns`` through one long-lived
    ``ip -batch`` (no process per change), a stray proto-90 route every ``stray_every`` changes.
    Bounded by :meth:`stop` and ``max_ops``."""

    SLOTS = 16

    def __init__(self, ns: str, pause_s: float = 0.004, stray_every: int = 25, max_ops: int = 500_000) -> None:
        super().__init__(daemon=True, name="link-churn")
        self.ns, self.pause_s, self.stray_every, self.max_ops = ns, pause_s, stray_every, max_ops
        self.ops = 0
        self.strays = 0
        self._halt = threading.Event()
        self._ip = subprocess.Popen(["ip", "-n", ns, "-force", "-batch", "-"], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)

    def run(self) -> None:
        live = [False] * self.SLOTS
        try:
            while not self._halt.is_set() and self.ops < self.max_ops:
                k = self.ops % self.SLOTS
                line = f"link del chz{k}a" if live[k] else f"link add chz{k}a type veth peer name chz{k}b"
                live[k] = not live[k]
                if self.ops % self.stray_every == 0:
                    line += f"\nroute replace blackhole {STRAY.format(self.strays % 250 + 1)} proto 90"
                    self.strays += 1
                self._ip.stdin.write(line + "\n")
                self._ip.stdin.flush()
                self.ops += 1
                self._halt.wait(self.pause_s)
            self._ip.stdin.write("".join(f"link del chz{k}a\n" for k in range(self.SLOTS) if live[k]))
        finally:
            self._ip.stdin.close()
            self._ip.wait(timeout=60)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=70)


def _extra_blocks(node_block: str, pods: int) -> list[str]:
    """The node's /26 plus the next /26s of its /24, enough for ``pods`` plus the lab's pod."""
    first = ipaddress.IPv4Network(node_block)
    n = min(4, math.ceil((pods + 2) / first.num_addresses))
    return [str(ipaddress.IPv4Network((int(first.network_address) + i * first.num_addresses, first.prefixlen)))
            for i in range(max(1, n))]


def _veths_left(node, base_veths: frozenset[str], timeout: float = 10.0) -> list[str]:
    """Host veths beyond ``base_veths`` still in the node once ``timeout`` has passed (the pods'
    namespaces still exist, so only the plugin's DEL and veth reaper can remove them), as
    ``"<name> group <group> <operstate>"``."""
    from podroute.lab import netns
    end = time.monotonic() + timeout
    while snapshot(node).host_veths - base_veths and time.monotonic() < end:
        time.sleep(0.1)
    return [f"{link['ifname']} group {link.get('group')} {link.get('operstate')}"
            for link in netns.ip_json("link", "show", ns=node.ns)
            if link["ifname"].startswith(HOST_VETH_PREFIX) and link["ifname"] not in base_veths]


def _del_after(delay: float, lb, node, cid: str, pod_ns: str, pod_name: str):
    time.sleep(delay)  # a stagger, not a synchronisation: the DELs' start times spread over DEL_SPREAD_S
    return cni(lb, node, "DEL", cid, pod_ns, pod_name)


def _burst(lb, node, b: int, pods: int, pool: ThreadPoolExecutor, target_ip: str, base_veths: frozenset[str]):
    names = [f"{lb.prefix}c{b}x{j}" for j in range(pods)]
    cids = [f"churn{b:04d}x{j:04d}" for j in range(pods)]
    add_netns(names)
    try:
        adds = list(pool.map(lambda j: cni(lb, node, "ADD", cids[j], names[j], f"c{b}x{j}"), range(pods)))
        first = next((j for j, a in enumerate(adds) if a.ok), None)
        pinged = first is not None and ping(names[first], target_ip)
        dels = list(pool.map(lambda j: _del_after(j * DEL_SPREAD_S / pods, lb, node, cids[j], names[j], f"c{b}x{j}"),
                             range(pods)))
        left = _veths_left(node, base_veths) if all(d.ok for d in dels) else []
    finally:
        del_netns(names)
    return adds, dels, pinged, left


def _run_bursts(lb, n1, base, target_ip: str, res: dict, t_start: float) -> StatusProbe:
    """The bursts, with the link churn and the status probe running; fills ``res``."""
    from podroute.lab import netns
    probe = StatusProbe(n1)
    churn = LinkChurn(n1.ns)
    probe.start()
    churn.start()
    try:
        with ThreadPoolExecutor(max_workers=PODS) as pool:
            for b in range(BURSTS):
                if probe.frozen.is_set() or time.monotonic() - t_start > DEADLINE_S:
                    break
                if not netns._alive(n1.pid):
                    res["agent_exited"] = f"before burst {b}"
                    break
                adds, dels, pinged, stuck = _burst(lb, n1, b, PODS, pool, target_ip, base.host_veths)
                res["bursts_run"] += 1
                res["adds"] += len(adds)
                res["dels"] += len(dels)
                for kind, calls in (("add_failures", adds), ("del_failures", dels)):
                    res[kind] += [f"burst {b} {c.container_id}: rc {c.rc} code {c.code} {c.msg[:200]} "
                                  f"({c.seconds:.1f} s)" for c in calls if not c.ok]
                res["ping_failures"] += not pinged
                res["veths_left_after_del"] += stuck
    finally:
        churn.stop()
        probe.stop()
    res.update(status_samples=probe.samples, status_worst_s=round(probe.worst_s, 3), status_failures=probe.failures,
               frozen=probe.frozen.is_set(), link_changes=churn.ops, stray_routes=churn.strays)
    return probe


def _final_state(n1, n2, base, probe: StatusProbe, res: dict) -> None:
    """Leaks (after the reaper and felix had up to 30 s), the FIB against desired state, the
    loop lag the agent reports; into ``res``."""
    if not probe.frozen.is_set():
        try:
            wait_for("no leak on n1", lambda: not leaks(base, snapshot(n1)), 30, 0.2)
        except AssertionError:
            pass
    res["leaks"] = leaks(base, snapshot(n1))
    st = agent_status(n1)
    res["fib_problems"] = fib_problems(n1, [n2], snapshot(n1), st) if st else ["agent not answering"]
    res["loop_worst_s"] = ((st or {}).get("loop") or {}).get("worst_s", "n/a")
    res["loop_worst_seen_by_probe_s"] = probe.loop_worst_s if probe.loop_worst_s is not None else "n/a"
    if st:
        res.update(resyncs=st["fib"]["resyncs"], monitor_triggers=st["fib"]["monitor_triggers"])


def _problems(res: dict, target_ip: str) -> list[str]:
    problems = [f"n1's agent exited {res['agent_exited']}"] if "agent_exited" in res else []
    if res["frozen"] or res["status_worst_s"] > STATUS_BOUND_S:
        problems.append(f"status did not answer within {STATUS_BOUND_S} s: worst {res['status_worst_s']} s, "
                        f"failures {res['status_failures'][:3]}")
    worst_loop = [v for v in (res["loop_worst_s"], res["loop_worst_seen_by_probe_s"]) if isinstance(v, float)]
    if worst_loop and max(worst_loop) > STATUS_BOUND_S:
        problems.append(f"event loop lag {max(worst_loop)} s")
    if res["bursts_run"] != BURSTS:
        problems.append(f"only {res['bursts_run']} of {BURSTS} bursts ran")
    for kind in ("add_failures", "del_failures"):
        if res[kind]:
            problems.append(f"{len(res[kind])} {kind}: {res[kind][:3]}")
    if res["ping_failures"]:
        problems.append(f"{res['ping_failures']} bursts' first pod could not ping {target_ip}")
    if res["veths_left_after_del"]:
        problems.append(f"{len(res['veths_left_after_del'])} host veths still there 10 s after their successful "
                        f"DEL (pod namespaces alive): {res['veths_left_after_del'][:5]}")
    return problems + res["leaks"] + res["fib_problems"]


def test_churn_bursts_of_concurrent_adds_and_dels_no_stall_no_leak(tmp_path):
    from podroute.lab import control, netns, runner
    assert BURSTS >= 1 and 1 <= PODS <= 250, "PODROUTE_CHURN_BURSTS >= 1, PODROUTE_CHURN_PODS 1..250 (one /24)"
    t_start = time.monotonic()
    with lab(tmp_path, "--nodes", "2", "--pods", "1") as (name, state, rep):
        lb = control.load(name, state)
        n1, n2 = lb.nodes
        target_ip = next(p["ip"] for p in rep["pods"] if p["node"] == "n2")
        blocks = _extra_blocks(n1.block, PODS)
        res = {"bursts_requested": BURSTS, "pods_per_burst": PODS, "bursts_run": 0, "adds": 0, "dels": 0,
               "add_failures": [], "del_failures": [], "ping_failures": 0, "veths_left_after_del": [],
               "blocks": blocks}
        try:
            netns.kill_pids([n1.pid], grace=20)
            start_agent_with(lb, n1, {"podCIDRs": blocks, "resyncInterval": 1})
            wait_for("the lab to converge with n1's blocks " + ", ".join(blocks),
                     lambda: not converged(lb) and all(runner._fib_has(n2.ns, b) for b in blocks), 60, 0.2)
            base = snapshot(n1)
            probe = _run_bursts(lb, n1, base, target_ip, res, t_start)
            _final_state(n1, n2, base, probe, res)
        finally:
            keep_logs(lb, tmp_path)
    res["seconds"] = round(time.monotonic() - t_start, 1)
    (tmp_path / "churn.json").write_text(json.dumps(res, indent=2))
    print(f"\nchurn: {res['bursts_run']}/{BURSTS} bursts x {PODS} pods, {res['link_changes']} link changes, "
          f"status worst {res['status_worst_s']} s over {res['status_samples']} queries"
          f"{' (FROZEN)' if res['frozen'] else ''}, loop worst {res['loop_worst_s']}, "
          f"add failures {len(res['add_failures'])}, del failures {len(res['del_failures'])}, "
          f"ping failures {res['ping_failures']}, veths left after DEL {len(res['veths_left_after_del'])}, "
          f"leaks {len(res['leaks'])}, fib problems {len(res['fib_problems'])}; {tmp_path / 'churn.json'}")
    problems = _problems(res, target_ip)
    assert not problems, "\n".join(problems)

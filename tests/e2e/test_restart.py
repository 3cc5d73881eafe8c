"""Issue 14 item 7 end to end: a planned restart is as lossless as a crash, and a drain
withdraws before the agent exits. Real agents, ExaBGP, BIRD 2 and FRR in namespaces.

Restart: ``systemctl restart`` sends SIGTERM to the agent (``KillMode=mixed``); a crash is a
SIGKILL of everything in the service. Either way a 10 ms pod-to-pod ping across nodes must
lose nothing: peers keep the restarting node's routes as stale (RFC 4724 §4.2) and its own
FIB keeps the routes to the others, until the new agent has replayed and sent End-of-RIB.
"""
import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from labutil import fib, lab, peers_established, podroute, status, wait_for

pytestmark = pytest.mark.e2e

PING_INTERVAL = "0.01"
PING_DEADLINE_S = "120"   # ping's own bound (-w) should the test never stop it


def _fib_or_none(ns: str) -> dict[str, str] | None:
    """labutil.fib's ``{dst: line}``, or None when ``ip`` itself failed: the lab's "kill
    everything in the node's namespace" also kills an ``ip -n <ns>`` that is in it then."""
    p = subprocess.run(["ip", "-n", ns, "route", "show", "proto", "90"], capture_output=True, text=True)
    if p.returncode != 0 or not p.stdout:   # never empty: the node's own block is a blackhole
        return None
    return {line.split()[1] if line.startswith("blackhole") else line.split()[0]: line
            for line in p.stdout.splitlines() if "scope link" not in line}


class Ping:
    """A 10 ms ping from ``src_ns`` to ``dst`` whose output goes to a file (a pipe would
    fill up and stall it); bounded by ping's own ``-w``."""

    def __init__(self, src_ns: str, dst: str, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(["ip", "netns", "exec", src_ns, "ping", "-i", PING_INTERVAL, "-W", "1",
                                      "-w", PING_DEADLINE_S, dst], stdout=open(out, "w"),
                                     stderr=subprocess.STDOUT)

    def replies(self) -> int:
        return self.out.read_text().count("bytes from")

    def stop(self) -> tuple[int, int, str]:
        """SIGINT our own ping by PID (it then prints its summary); (transmitted, received, line)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        text = self.out.read_text()
        stats = next((line for line in text.splitlines() if "packets transmitted" in line), "")
        assert stats, text[-2000:]
        return int(stats.split()[0]), int(stats.split()[3]), stats


@pytest.mark.parametrize("topology,peer,sig", [
    ("rr", "bird", signal.SIGTERM), ("rr", "frr", signal.SIGTERM), ("mesh", "bird", signal.SIGTERM),
    ("rr", "bird", signal.SIGKILL), ("rr", "frr", signal.SIGKILL), ("mesh", "bird", signal.SIGKILL)],
    ids=["bird-sigterm", "frr-sigterm", "mesh-sigterm", "bird-kill9", "frr-kill9", "mesh-kill9"])
def test_agent_restart_under_ping_loses_no_packet(tmp_path, topology, peer, sig):
    """A route reflector (BIRD 2, FRR) or, in a mesh, the other node's own speaker is the
    peer that must keep the restarting node's routes."""
    from podroute.lab import control, runner
    # A mesh lab of 2 would start n1 with no peer at all, which today's speaker cannot do
    # (its state dir is only created with a peer): 3 nodes, ping n1 -> n2 all the same.
    nodes = "3" if topology == "mesh" else "2"
    with lab(tmp_path, "--topology", topology, "--nodes", nodes, "--pods", "1", "--peer", peer) as (name, state, rep):
        pods = {p["name"]: p for p in rep["pods"]}
        lb = control.load(name, state)
        n1, n2 = lb.nodes[:2]
        ping = Ping(pods["n1p1"]["ns"], pods["n2p1"]["ip"], tmp_path / "ping.out")
        try:
            wait_for("ping replies before the restart", lambda: ping.replies() >= 50, 30)
            old_pid = n2.pid
            # The routes both ways (n1 -> n2's block for the echo, n2 -> n1's for the reply)
            # are watched from a thread for the whole restart: a withdrawal would be seen even
            # when it is too short for the ping to catch.
            missing: list[str] = []
            done = threading.Event()

            def watch() -> None:
                while not done.is_set():
                    for ns, dst, who in ((n1.ns, "198.19.2.0/26", "n1"), (n2.ns, "198.19.1.0/26", "n2")):
                        routes = _fib_or_none(ns)
                        if routes is not None and dst not in routes:
                            missing.append(f"{who} lost {dst}")
                    time.sleep(0.02)
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            try:
                new_pid = control.restart_agent(lb, "n2", sig)
                assert new_pid != old_pid
                wait_for("n2's sessions Established again", lambda: peers_established(state, name, "n2"), 60)
                wait_for("End-of-RIB and no stale routes left on n2", lambda: all(
                    p["eor_received"] and not p["stale_routes"] for p in status(state, name, "n2")["bgp"]["peers"]), 30)
                wait_for("the routers to see every session Established",
                         lambda: all(runner.router_sessions(lb).values()), 30)
                time.sleep(1.0)  # traffic on the settled path after the restart, too
            finally:
                done.set()
                watcher.join(5)
        finally:
            tx, rx, line = ping.stop()
        assert tx >= 100 and rx == tx, f"{line}; route gaps seen: {len(missing)} {sorted(set(missing))}"
        assert not missing, sorted(set(missing))


SVC = "198.18.128.0/24"   # a service range exported by two nodes (anycast), outside the pod pool
VIP = "198.18.128.1"


def _via(route_line: str | None) -> str | None:
    parts = (route_line or "").split()
    return parts[parts.index("via") + 1] if "via" in parts else None


def test_drain_withdraws_before_the_agent_exits_and_moves_traffic_first(tmp_path):
    """`podroute node drain` on a node that exports a service range another node exports too:
    before its agent exits, its block is gone from every other node's FIB and the service
    route points at the other node; a 10 ms ping to the service address loses nothing."""
    from podroute.lab import control, netns, runner
    with lab(tmp_path, "--nodes", "3", "--pods", "1") as (name, state, rep):
        pods = {p["name"]: p for p in rep["pods"]}
        lb = control.load(name, state)
        by_name = {n.name: n for n in lb.nodes}
        for n in ("n2", "n3"):
            netns.ip("addr", "add", f"{VIP}/32", "dev", "lo", ns=by_name[n].ns)
            control.restart_agent(lb, n, signal.SIGTERM, config={"serviceCIDRs": [{"cidr": SVC}]})
        control.restart_agent(lb, "n1", signal.SIGTERM, config={"importExtraCIDRs": [SVC]})
        for n in by_name:
            wait_for(f"{n}'s sessions Established", lambda n=n: peers_established(state, name, n), 60)
        n1 = by_name["n1"]
        wait_for("the service route on n1", lambda: SVC in fib(n1.ns), 30)
        # The reflector reflects one best path: drain the node n1 sends the service traffic to.
        first = _via(fib(n1.ns)[SVC])
        drained = next(n for n in lb.nodes if n.ip == first)
        other = next(n for n in lb.nodes if n.name in ("n2", "n3") and n is not drained)
        block = drained.block
        for n in lb.nodes:
            if n is not drained:
                assert block in fib(n.ns), (n.name, fib(n.ns))

        ping = Ping(pods["n1p1"]["ns"], VIP, tmp_path / "ping.out")
        seen: dict[str, float] = {}
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                now = time.monotonic()
                for n in lb.nodes:
                    routes = _fib_or_none(n.ns)
                    if n is not drained and routes is not None and block not in routes:
                        seen.setdefault(f"{n.name} without {block}", now)
                if _via((_fib_or_none(n1.ns) or {}).get(SVC)) == other.ip:
                    seen.setdefault("service via the other node", now)
                time.sleep(0.01)
        watcher = threading.Thread(target=watch, daemon=True)
        try:
            wait_for("ping replies from the service address", lambda: ping.replies() >= 50, 30)
            watcher.start()
            pid = drained.pid
            t_drain = time.monotonic()
            out = podroute("node", "drain", "--socket", str(state / name / drained.name / "run" / "agent.sock"),
                           "--settle", "1", "--json", timeout=60)
            wait_for("the drained agent to exit", lambda: not netns._alive(pid), 30, 0.005)
            t_exit = time.monotonic()
            time.sleep(0.5)
        finally:
            done.set()
            watcher.join(5)
            tx, rx, line = ping.stop()
        assert out.returncode == 0, out.stdout + out.stderr
        report = json.loads(out.stdout)
        assert report["complete"] and report["acked"], report
        assert set(report["withdrawn"]) == {block, SVC}, report
        assert report["delivered"] == [str(runner.RR_IP)], report
        want = {f"{n.name} without {block}" for n in lb.nodes if n is not drained} | {"service via the other node"}
        assert set(seen) == want, (seen, want)
        for what, t in seen.items():
            assert t_drain < t < t_exit, (what, f"{t - t_drain:.3f}s after the drain began",
                                          f"agent exited {t_exit - t_drain:.3f}s after")
        assert tx >= 100 and rx == tx, line
        # The drained node's own FIB keeps its routes (pods there still reach the others).
        assert by_name["n1"].block in fib(drained.ns)

"""Issue 4 end to end: BGP topologies against real BIRD 2 and FRR, failures and restarts.

Each test builds its own lab in namespaces (podroute lab up), proves pod reachability
across every node pair from the lab's report, then exercises the topology.
"""
import signal
import subprocess
import sys
import time

import pytest

from labutil import fib, lab, peers_established, status, wait_for

pytestmark = pytest.mark.e2e


def _cross_ok(report):
    cross = [m for m in report["matrix"] if m["src"][:2] != m["dst"][:2]]
    return cross and all(m["ok"] for m in cross), [m for m in cross if not m["ok"]]


def _owner_next_hops_ok(report):
    """Every node routes each other node's block via that node's own IP."""
    ip_of = {n["block"]: n["ip"] for n in report["nodes"]}
    for n in report["nodes"]:
        ns_routes = report["fib_routes"][n["name"]]
        for block, ip in ip_of.items():
            if block == n["block"]:
                continue
            line = next((r for r in ns_routes if r.startswith(block)), None)
            assert line is not None and f"via {ip} " in line + " ", (n["name"], block, ns_routes)


def test_full_mesh_four_nodes_and_removing_a_node_keeps_other_sessions(tmp_path):
    from podroute.lab import control
    with lab(tmp_path, "--topology", "mesh", "--nodes", "4", "--pods", "1") as (name, state, rep):
        ok, bad = _cross_ok(rep)
        assert ok, bad
        _owner_next_hops_ok(rep)
        st = status(state, name, "n1")
        peers = {p["address"]: p for p in st["bgp"]["peers"]}
        assert sorted(peers) == ["198.18.0.12", "198.18.0.13", "198.18.0.14"]
        assert all(p["state"] == "established" for p in peers.values())
        # exactly one side of each pair dials: the higher IP is passive
        assert [peers[a]["passive"] for a in sorted(peers)] == [False, False, False]
        since_before = {a: p["since"] for a, p in peers.items()}
        # n4 leaves the cluster: the others drop that session and nothing else
        lb = control.load(name, state)
        control.set_cluster_members(lb, ["n1", "n2", "n3"])
        wait_for("n1 to drop its session to n4",
                 lambda: "198.18.0.14" not in {p["address"] for p in status(state, name, "n1")["bgp"]["peers"]}, 20)
        after = {p["address"]: p for p in status(state, name, "n1")["bgp"]["peers"]}
        assert sorted(after) == ["198.18.0.12", "198.18.0.13"]
        for a in after:
            assert after[a]["state"] == "established" and after[a]["since"] == since_before[a], a
        ns1 = f"prl-{name}-n1"
        wait_for("n4's block to leave n1's FIB", lambda: "198.19.4.0/26" not in fib(ns1), 20)


def test_two_route_reflectors_six_nodes_survive_losing_one(tmp_path):
    from podroute.lab import control
    with lab(tmp_path, "--topology", "rr2", "--nodes", "6", "--pods", "1") as (name, state, rep):
        ok, bad = _cross_ok(rep)
        assert ok, bad
        assert len(rep["router_sessions"]) == 12 and all(rep["router_sessions"].values())
        _owner_next_hops_ok(rep)
        lb = control.load(name, state)
        before = {n.name: fib(n.ns) for n in lb.nodes}
        control.stop_router(lb, "rr", signal.SIGKILL)
        # every node notices (TCP closed) and keeps all routes through the second reflector
        wait_for("all nodes to see rr down", lambda: all(
            any(p["address"] == "198.18.0.1" and p["state"] != "established" for p in status(state, name, n.name)["bgp"]["peers"])
            for n in lb.nodes), 40)
        time.sleep(1)
        for n in lb.nodes:
            assert fib(n.ns) == before[n.name], n.name
        pods = {p["name"]: p for p in rep["pods"]}
        for src in ("n1p1", "n4p1"):
            for dst in ("n2p1", "n3p1", "n5p1", "n6p1"):
                r = subprocess.run(["ip", "netns", "exec", pods[src]["ns"], "ping", "-c", "1", "-W", "1",
                                    pods[dst]["ip"]], capture_output=True)
                assert r.returncode == 0, (src, dst)


def test_tor_ebgp_one_as_per_node_frr(tmp_path):
    with lab(tmp_path, "--topology", "tor", "--peer", "frr", "--nodes", "3", "--pods", "1") as (name, state, rep):
        ok, bad = _cross_ok(rep)
        assert ok, bad
        assert rep["peer"] == "frr" and all(rep["router_sessions"].values())
        asns = set()
        for n in rep["nodes"]:
            st = status(state, name, n["name"])
            asns.add(st["node"]["asn"])
            assert [(p["asn"], p["type"], p["state"]) for p in st["bgp"]["peers"]] == [(65000, "eBGP", "established")]
        assert asns == {65001, 65002, 65003}
        _owner_next_hops_ok(rep)


def test_podroute_node_as_route_reflector(tmp_path):
    with lab(tmp_path, "--topology", "podroute-rr", "--nodes", "3", "--pods", "1") as (name, state, rep):
        ok, bad = _cross_ok(rep)
        assert ok, bad
        _owner_next_hops_ok(rep)
        # clients peer only with the reflector n1; n3's block reaches n2 through it
        st2 = status(state, name, "n2")
        assert [p["address"] for p in st2["bgp"]["peers"]] == ["198.18.0.11"]
        learned = {r["prefix"]: r for r in st2["bgp"]["routes"]}
        assert learned["198.19.3.0/26"]["next_hops"] == ["198.18.0.13"]
        assert learned["198.19.3.0/26"]["peers"] == ["198.18.0.11"]


def test_agent_kill9_and_restart_loses_no_packet(tmp_path):
    from podroute.lab import control
    with lab(tmp_path, "--nodes", "2", "--pods", "1") as (name, state, rep):
        pods = {p["name"]: p for p in rep["pods"]}
        lb = control.load(name, state)
        n1, n2 = lb.nodes
        # 10 ms interval, bounded: 1000 probes = 10 s
        ping = subprocess.Popen(["ip", "netns", "exec", pods["n1p1"]["ns"], "ping", "-i", "0.01", "-c", "1000",
                                 "-W", "1", pods["n2p1"]["ip"]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        try:
            time.sleep(1.5)
            control.kill_agent(lb, "n2", signal.SIGKILL)
            gone_at = time.monotonic()
            # routes stay in both FIBs while n2's agent is dead
            while time.monotonic() - gone_at < 2:
                assert "198.19.2.0/26" in fib(n1.ns) and "198.19.1.0/26" in fib(n2.ns)
                time.sleep(0.05)
            control.start_agent(lb, "n2")
            wait_for("n2's session back", lambda: peers_established(state, name, "n2"), 30)
            while ping.poll() is None:
                assert "198.19.2.0/26" in fib(n1.ns) and "198.19.1.0/26" in fib(n2.ns)
                time.sleep(0.05)
            out = ping.communicate(timeout=30)[0]
        finally:
            if ping.poll() is None:
                ping.kill()
        stats = next(line for line in out.splitlines() if "packets transmitted" in line)
        tx, rx = int(stats.split()[0]), int(stats.split()[3])
        assert tx == 1000 and rx == tx, stats


def test_peer_restart_within_and_beyond_restart_time(tmp_path):
    """BIRD (the only path) advertises a 6 s restart time (RFC 4724 §4.2, receiving side).
    Killed and back within it: the routes never leave the FIB. Killed for longer: they
    are removed once the timer runs out, not before."""
    from podroute.lab import control
    restart = 6
    with lab(tmp_path, "--nodes", "2", "--pods", "1", "--router-restart-time", str(restart)) as (name, state, rep):
        lb = control.load(name, state)
        n1 = lb.nodes[0]
        peer = lambda: status(state, name, "n1")["bgp"]["peers"][0]  # noqa: E731
        assert peer().get("gr_restart_time") == restart
        control.stop_router(lb, "rr", signal.SIGKILL)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3:
            assert "198.19.2.0/26" in fib(n1.ns)
            time.sleep(0.1)
        control.start_router(lb, "rr")
        wait_for("session back", lambda: peers_established(state, name, "n1"), 30)
        # The reflector restarted with an empty RIB: it may send End-of-RIB to n1 before n2 has
        # re-announced, and n1 then rightly sweeps the stale path and re-learns it from n2's
        # new announcement. Graceful restart's promise is the outage above, not this instant.
        wait_for("End-of-RIB from the restarted peer", lambda: peer().get("stale_routes", 0) == 0, 15)
        wait_for("n2's block re-learned through the reflector", lambda: "198.19.2.0/26" in fib(n1.ns), 15)
        # now down for longer than the restart time
        control.stop_router(lb, "rr", signal.SIGKILL)
        t0 = time.monotonic()
        gone = wait_for("stale routes to expire", lambda: "198.19.2.0/26" not in fib(n1.ns), restart + 10, 0.05)
        assert restart - 1 <= gone <= restart + 5, gone


ROGUE_BIRD = """
router id 198.18.0.99;
protocol device {{}}
protocol static rogue {{
  ipv4;
  route 198.19.2.0/26 via 198.18.0.99;     # n2's block, wrong next hop
  route 0.0.0.0/0 via 198.18.0.99;         # a default route
  route 203.0.113.0/24 via 198.18.0.99;    # outside every pool (TEST-NET-3, never sent to)
{extra}
}}
protocol bgp n1 {{
  local 198.18.0.99 as 64512; neighbor 198.18.0.11 as 64512; direct;
  ipv4 {{ import none; export all; }};
}}
"""


def test_policy_rejects_and_counts_bad_routes_fib_unchanged(tmp_path):
    """A rogue iBGP peer of n1 (a node peer from the cluster file, maxPrefixes 5)."""
    import yaml
    from podroute.lab import control, netns
    with lab(tmp_path, "--topology", "mesh", "--nodes", "3", "--pods", "1") as (name, state, rep):
        lb = control.load(name, state)
        n1 = lb.nodes[0]
        before = fib(n1.ns)
        rogue = f"prl-{name}-rogue"   # lab down removes every prl-<name>- namespace
        netns.add(rogue)
        netns.veth(rogue, "eth0", f"prl-{name}-fab", "rogue")
        netns.ip("link", "set", "rogue", "master", "br0", ns=f"prl-{name}-fab")
        netns.ip("addr", "add", "198.18.0.99/24", "dev", "eth0", ns=rogue)
        extra = "\n".join(f"  route 198.19.{100 + i}.0/26 via 198.18.0.99;" for i in range(8))
        conf = tmp_path / "rogue.conf"
        conf.write_text(ROGUE_BIRD.format(extra=extra))
        bird = subprocess.Popen(["ip", "netns", "exec", rogue, "bird", "-f", "-c", str(conf), "-s",
                                 str(tmp_path / "rogue.ctl")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            cluster = yaml.safe_load((state / name / "cluster.yaml").read_text())
            cluster["nodes"][0]["peers"] = [{"address": "198.18.0.99", "asn": 64512, "maxPrefixes": 5}]
            (state / name / "cluster.yaml").write_text(yaml.safe_dump(cluster))

            def rogue_peer():
                return next((p for p in status(state, name, "n1")["bgp"]["peers"] if p["address"] == "198.18.0.99"), None)
            wait_for("rogue session and its 11 routes", lambda: (rogue_peer() or {}).get("prefixes_received") == 11, 30)
            st = status(state, name, "n1")
            reasons = st["bgp"]["rejections"]
            assert reasons.get("wrong_next_hop") == 1 and reasons.get("default") == 1
            assert reasons.get("outside_pool") == 1 and reasons.get("max_prefixes") == 3, reasons
            assert rogue_peer()["prefixes_accepted"] == 5 and rogue_peer()["prefixes_rejected"] == 6
            after = fib(n1.ns)
            # the FIB kept n2's real route; the rogue's default/outside/wrong-next-hop routes never landed
            assert after["198.19.2.0/26"] == before["198.19.2.0/26"]
            assert "default" not in after and "0.0.0.0/0" not in after and "203.0.113.0/24" not in after
            text = subprocess.run([sys.executable, "-m", "podroute.cli", "status", "--socket",
                                   str(state / name / "n1" / "run" / "agent.sock")], capture_output=True, text=True).stdout
            assert "Rejected routes by reason:" in text and "wrong_next_hop=1" in text and "max_prefixes=3" in text
        finally:
            bird.kill()
            bird.wait(timeout=10)

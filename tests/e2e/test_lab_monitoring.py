"""Issue 19 end to end: ``podroute lab up --monitoring``, a real Prometheus (Debian's) in
the lab scraping every agent, asked through its HTTP API from inside the monitoring
namespace (podroute.lab.monitoring).

Two route reflectors (rr2, BIRD) and three nodes: six sessions. It asserts that every
expected session has exactly one ``podroute_bgp_session_up`` series and it is 1; that each
node's ``podroute_fib_routes`` add up to its ``ip route show table main proto 90`` routes
(and the kinds to the kernel's own route types); that ``promtool check metrics`` accepts an
agent's /metrics; that Prometheus loaded configs/prometheus/alerts.yml and evaluates it.
Then it kills one reflector: its three series must read 0 in a scrape no later than one
scrape interval plus :data:`FLIP_BOUND_S` after the kill (the scrape's own timestamp, read
back from the TSDB), the other reflector's stay 1, PodrouteBGPSessionDown goes pending for
exactly those three; the reflector restarts and every series is 1 again. Last it kills a
node's agent: its ``up`` reads 0 at the next scrape and PodrouteAgentDown goes pending for it.
"""
import json
import signal
import subprocess
import time

import pytest
import yaml

from labutil import lab, podroute, wait_for
from nlcore.route import PODROUTE_PROTO
from podroute.lab import agents, control, monitoring, netns
from podroute.lab.model import RR2_IP, RR_IP, TIMEOUT_SCALE

pytestmark = pytest.mark.e2e

# The agent noticing the reflector's closed TCP session (SIGKILL: the kernel closes it at
# once) and its gauge changing; added to one scrape interval (0.1-0.9 s measured here).
FLIP_BOUND_S = 2.0 * TIMEOUT_SCALE


def session_series(lb, selector=""):
    return {(r["metric"]["node"], r["metric"]["peer"]): float(r["value"][1])
            for r in monitoring.query(lb, f"podroute_bgp_session_up{selector}")}


def kernel_routes(ns):
    """Our routes in ``ns``'s main table, one line each (an ECMP route's indented ``nexthop``
    lines belong to the route above them)."""
    out = subprocess.run(["ip", "-n", ns, "route", "show", "table", "main", "proto", str(PODROUTE_PROTO)],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line and not line[0].isspace()]


def route_kinds(lines):
    """Our routes by kind as the kernel shows them in a lab without encapsulation."""
    return {"blackhole": sum(1 for r in lines if r.startswith("blackhole ")),
            "workload": sum(1 for r in lines if " scope link" in r and " via " not in r),
            "remote": sum(1 for r in lines if " via " in r)}


def fib_matches(lb, node):
    lines = kernel_routes(node.ns)
    total = monitoring.query(lb, f'sum(podroute_fib_routes{{node="{node.name}"}})')
    return bool(total) and float(total[0]["value"][1]) == len(lines)


def alerts(lb, alertname, *labels):
    """``{(label values...): state}`` of the active alerts named ``alertname``."""
    return {tuple(a["labels"][k] for k in labels): a["state"]
            for a in monitoring.api(lb, "/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == alertname}


def session_down_alerts(lb):
    return alerts(lb, "PodrouteBGPSessionDown", "node", "peer")


def test_prometheus_sees_sessions_fib_and_a_reflector_going_down(tmp_path):
    with lab(tmp_path, "--topology", "rr2", "--nodes", "3", "--pods", "1", "--monitoring") as (name, state, rep):
        assert rep["passed"] is True
        lb = control.load(name, state)
        mon_pid = lb.monitoring["pid"]
        assert lb.monitoring["ns"] == f"prl-{name}-mon" and netns._alive(mon_pid)

        # lab up waited until every agent is a healthy target; each is ready
        assert monitoring.target_health(lb) == {n.name: ("up", "") for n in lb.nodes}
        wait_for("every agent ready", lambda: sorted(
            (r["metric"]["node"], r["value"][1]) for r in monitoring.query(lb, "podroute_ready")) == [
            (n.name, "1") for n in lb.nodes], 10)

        # one series per session the lab configured, each 1
        expected = {(n.name, p["address"]) for n in lb.nodes for p in agents.node_peers(lb, n)}
        assert len(expected) == 6
        wait_for("every session up in Prometheus", lambda: session_series(lb) == dict.fromkeys(expected, 1.0), 10)

        # FIB gauges against the kernel, per node and per kind
        for n in lb.nodes:
            wait_for(f"{n.name}'s FIB gauges to match the kernel", lambda n=n: fib_matches(lb, n), 10)
            by_kind = {r["metric"]["kind"]: float(r["value"][1])
                       for r in monitoring.query(lb, f'podroute_fib_routes{{node="{n.name}"}}')}
            lines = kernel_routes(n.ns)
            want = route_kinds(lines)
            assert sum(want.values()) == len(lines), lines  # every line classified once
            assert want == {"blackhole": 1, "workload": 1, "remote": 2}, lines
            assert {k: v for k, v in by_kind.items() if v} == want, (n.name, by_kind, lines)

        # an agent's exposition passes promtool's lint
        code, body = monitoring.http_get(lb, f"http://{lb.nodes[0].ip}:{monitoring.METRICS_PORT}/metrics")
        assert code == 200 and "podroute_bgp_session_up{" in body
        lint = subprocess.run([monitoring.PROMTOOL, "check", "metrics"], input=body, capture_output=True,
                              text=True, timeout=30)
        assert lint.returncode == 0, lint.stdout + lint.stderr

        # the alert rules are loaded and evaluate without error on the live series
        names = {r["alert"] for g in yaml.safe_load(monitoring.RULES_FILE.read_text())["groups"] for r in g["rules"]}
        wait_for("the rules evaluated", lambda: all(  # Go's zero time until the first evaluation
            not r["lastEvaluation"].startswith("0001") for g in monitoring.api(lb, "/api/v1/rules")["groups"]
            for r in g["rules"]), 10)
        rules = [r for g in monitoring.api(lb, "/api/v1/rules")["groups"] for r in g["rules"]]
        assert {r["name"] for r in rules} == names
        assert all(r["health"] == "ok" for r in rules), rules
        assert session_down_alerts(lb) == {}

        # lab status shows the server and its targets
        st = podroute("lab", "status", "--name", name, "--state-dir", str(state), timeout=60)
        assert st.returncode == 0, st.stderr
        assert f"Prometheus {monitoring.url()} in namespace prl-{name}-mon (pid {mon_pid})" in st.stdout
        assert all(f"target {n.name}: up" in st.stdout for n in lb.nodes), st.stdout

        # kill one reflector: its sessions flip to 0 within a scrape interval (+ bound), the other's stay 1
        t_kill = time.time()
        control.stop_router(lb, "rr", signal.SIGKILL)
        down = {k: 0.0 for k in expected if k[1] == str(RR_IP)}
        up = {k: 1.0 for k in expected if k[1] == str(RR2_IP)}
        wait_for("rr's sessions to read 0", lambda: session_series(lb, f'{{peer="{RR_IP}"}}') == down, 15, 0.05)
        observed_s = time.time() - t_kill
        history = monitoring.query(lb, f'podroute_bgp_session_up{{peer="{RR_IP}"}}[30s]')
        flips = {}
        for s in history:
            first_zero = min(float(ts) for ts, v in s["values"] if v == "0")
            flips[s["metric"]["node"]] = first_zero - t_kill
        bound = monitoring.SCRAPE_INTERVAL_S + FLIP_BOUND_S
        assert sorted(flips) == [n.name for n in lb.nodes], flips
        assert 0 <= min(flips.values()) and max(flips.values()) <= bound, (flips, observed_s)
        assert session_series(lb, f'{{peer="{RR2_IP}"}}') == up
        assert {(r["metric"]["node"], r["value"][1]) for r in monitoring.query(
            lb, f'min_over_time(podroute_bgp_session_up{{peer="{RR2_IP}"}}[{int(observed_s) + 3}s])')} == {
            (n.name, "1") for n in lb.nodes}
        wait_for("PodrouteBGPSessionDown pending for rr's three sessions",
                 lambda: session_down_alerts(lb) == dict.fromkeys(down, "pending"), 10)

        # back: every session is 1 again and the alert is gone
        control.start_router(lb, "rr")
        wait_for("every session up again", lambda: session_series(lb) == dict.fromkeys(expected, 1.0), 60, 0.2)
        wait_for("the alert resolved", lambda: session_down_alerts(lb) == {}, 10)

        # kill a node's agent: its target is down at the next scrape, PodrouteAgentDown (job podroute)
        # goes pending for it alone; restarted, it is scraped again with all its sessions up
        n3 = lb.nodes[-1]
        t_kill = time.time()
        control.kill_agent(lb, n3.name, signal.SIGKILL)
        wait_for("n3's target down", lambda: [r["value"][1] for r in monitoring.query(
            lb, f'up{{node="{n3.name}"}}')] == ["0"], bound + 5, 0.05)
        assert time.time() - t_kill <= bound + 1  # one scrape, plus the polling's own latency
        wait_for("PodrouteAgentDown pending for n3", lambda: alerts(
            lb, "PodrouteAgentDown", "node") == {(n3.name,): "pending"}, 10)
        control.start_agent(lb, n3.name)
        wait_for("n3 scraped again with its sessions up", lambda: session_series(lb) == dict.fromkeys(
            expected, 1.0) and alerts(lb, "PodrouteAgentDown", "node") == {}, 60, 0.2)
        print(json.dumps({"flip_s": flips, "observed_s": observed_s}))
    assert not netns._alive(mon_pid)  # lab down stopped it and removed its config and TSDB
    assert not (state / name / "prometheus").exists()

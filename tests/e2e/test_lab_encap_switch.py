"""End to end on the host kernel: switching the pool's encapsulation at runtime.

``podroute lab reconfigure`` rewrites every node's pool modes and restarts the agents
one by one (podroute/lab/reconfigure.py). Each restarted agent keeps its previous
routes only until BGP has re-converged (End-of-RIB, RFC 4724 §4.2), then programs the
new mode's routes, and removes the device of a mode switched off (Calico's Felix
deletes ``vxlan.calico`` when VXLAN is disabled). vxlan -> none -> vxlan on one subnet.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def podroute(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "podroute.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


def ip(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, timeout=30)


def _all_routes(ns: str) -> list[str]:
    """Every route in the node's main table (any protocol), as ip prints them."""
    return [l.strip() for l in ip(ns, "route", "show").stdout.splitlines() if l.strip()]


def _ping_all(pods: list[dict]) -> list[tuple[str, str]]:
    failed = []
    for s in pods:
        for d in pods:
            if s is d:
                continue
            r = subprocess.run(["ip", "netns", "exec", s["ns"], "ping", "-c", "1", "-W", "2", "-q", d["ip"]],
                               capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                failed.append((s["name"], d["name"]))
    return failed


def test_lab_switch_vxlan_none_vxlan(tmp_path):
    name = "s" + secrets.token_hex(3)
    state = tmp_path / "lab"
    try:
        up = podroute("lab", "up", "--nodes", "3", "--encapsulation", "vxlan", "--pods", "1",
                      "--name", name, "--state-dir", str(state))
        assert up.returncode == 0, up.stdout + up.stderr
        rep = json.loads((state / name / "report.json").read_text())
        nodes, pods = rep["nodes"], rep["pods"]
        for n in nodes:
            assert any("dev vxlan.podroute proto 90 onlink" in r for r in _all_routes(n["ns"])), n
        old_pids = {n["name"]: n["pid"] for n in json.loads((state / name / "lab.json").read_text())["nodes"]}

        # vxlan -> none
        sw = podroute("lab", "reconfigure", "--name", name, "--state-dir", str(state), "--encapsulation", "none")
        print(sw.stdout, sw.stderr)
        assert sw.returncode == 0, sw.stdout + sw.stderr
        lab = json.loads((state / name / "lab.json").read_text())
        assert lab["encapsulation"] == "none"
        assert all(n["pid"] != old_pids[n["name"]] for n in lab["nodes"]), "agents were not restarted"
        for n in nodes:
            routes = _all_routes(n["ns"])
            assert not [r for r in routes if "vxlan" in r], (n["name"], routes)
            assert ip(n["ns"], "link", "show", "vxlan.podroute").returncode != 0, f"{n['name']} kept vxlan.podroute"
            for m in nodes:
                if m is not n:
                    assert f"{m['block']} via {m['ip']} dev eth0 proto 90" in routes, (n["name"], routes)
            log = (Path(n["dir"]) / "agent.log").read_text()
            # the restart went through the graceful-restart hold rather than losing the routes
            assert "keeping routes from the previous run" in log, n["name"]
            assert "removed unused VXLAN device" in log, n["name"]
        assert _ping_all(pods) == []

        # none -> vxlan
        sw = podroute("lab", "reconfigure", "--name", name, "--state-dir", str(state), "--encapsulation", "vxlan")
        print(sw.stdout, sw.stderr)
        assert sw.returncode == 0, sw.stdout + sw.stderr
        for n in nodes:
            routes = _all_routes(n["ns"])
            for m in nodes:
                if m is not n:
                    assert f"{m['block']} via {m['ip']} dev vxlan.podroute proto 90 onlink" in routes, (n["name"], routes)
            assert not [r for r in routes if " dev eth0 proto 90" in r], (n["name"], routes)
            assert "nolearning" in ip(n["ns"], "-d", "link", "show", "vxlan.podroute").stdout
        assert _ping_all(pods) == []
    finally:
        down = podroute("lab", "down", "--name", name, "--state-dir", str(state), timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not [ns for ns in os.listdir("/var/run/netns") if ns.startswith(f"prl-{name}-")]

"""End to end: `podroute lab up` with 3 nodes and a BIRD 2 route reflector, then `lab down`.

Runs the real CLI as a user would and asserts on the report it writes, then that
nothing (namespace or process) is left behind.
"""
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def podroute(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "podroute.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_lab_three_nodes_bird_rr(tmp_path):
    name = "e" + secrets.token_hex(3)
    state = tmp_path / "lab"
    up = podroute("lab", "up", "--nodes", "3", "--name", name, "--state-dir", str(state), "--keep")
    report_json = state / name / "report.json"
    pids, namespaces = [], []
    try:
        lab = json.loads((state / name / "lab.json").read_text())
        pids = [n["pid"] for n in lab["nodes"] if n["pid"]] + [r["pid"] for r in lab["routers"]]
        namespaces = lab["namespaces"]
        assert up.returncode == 0, f"lab up failed:\n{up.stdout}\n{up.stderr}"
        rep = json.loads(report_json.read_text())
        assert rep["passed"] is True
        # every node's session to the reflector is Established, on both sides
        assert rep["router_sessions"] == {"rr:n1": True, "rr:n2": True, "rr:n3": True}
        for node, peers in rep["sessions"].items():
            assert [p["state"] for p in peers] == ["established"], node
        # 6 pods, each with an address from its node's block
        assert len(rep["pods"]) == 6
        blocks = {n["name"]: n["block"] for n in rep["nodes"]}
        import ipaddress
        for p in rep["pods"]:
            assert ipaddress.IPv4Address(p["ip"]) in ipaddress.IPv4Network(blocks[p["node"]])
        cross = [m for m in rep["matrix"] if m["src"][:2] != m["dst"][:2]]
        assert len(cross) == 24 and all(m["ok"] for m in cross), [m for m in cross if not m["ok"]]
        assert "RESULT: PASS" in up.stdout
        assert "Ping matrix" in up.stdout
        # the status command works against a lab node as a user would run it
        st = podroute("status", "--socket", str(state / name / "n1" / "run" / "agent.sock"))
        assert st.returncode == 0, st.stderr
        assert "198.18.0.1" in st.stdout and "established" in st.stdout
    finally:
        down = podroute("lab", "down", "--name", name, "--state-dir", str(state))
    assert down.returncode == 0, down.stdout + down.stderr
    left = [ns for ns in os.listdir("/var/run/netns") if ns.startswith(f"prl-{name}-")] if os.path.isdir("/var/run/netns") else []
    assert left == []
    assert namespaces, "lab recorded no namespaces"
    assert [p for p in pids if p and _alive(p)] == []
    assert not (state / name).exists()

"""CNI 1.1 STATUS against a live agent: `podroute lab up` (2 nodes), then the installed
plugin's STATUS to a node's agent (0), a second attachment (net1) of a lab pod that leaves
its eth0 alone, and STATUS again after `lab down` (50, agent not reachable).

Issue 15 "STATUS ... tested against a live agent", issue 14 item 2 on a real node.
"""
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from cni.install import install_shim

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def podroute(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "podroute.cli", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout)


def shim(plugin: Path, env: dict, conf: dict, ns: str | None = None):
    argv = ["ip", "netns", "exec", ns, str(plugin)] if ns else [str(plugin)]
    p = subprocess.run(argv, env={"CNI_PATH": str(plugin.parent), "PATH": os.environ["PATH"],
                                  **env},
                       input=json.dumps(conf), capture_output=True, text=True, timeout=60)
    return p.returncode, (json.loads(p.stdout) if p.stdout.strip() else None)


def test_status_and_second_attachment_on_a_live_agent(tmp_path):
    name = "s" + secrets.token_hex(3)
    state = tmp_path / "lab"
    up = podroute("lab", "up", "--nodes", "2", "--name", name, "--state-dir", str(state), "--keep")
    root = state / name
    plugin = install_shim(tmp_path / "bin")  # outlives the lab's own copy
    conf = {"cniVersion": "1.1.0", "name": "podroute", "type": "podroute",
            "agentSocket": str(root / "n1" / "run" / "cni.sock")}
    try:
        assert up.returncode == 0, f"lab up failed:\n{up.stdout}\n{up.stderr}"
        lab = json.loads((root / "lab.json").read_text())
        assert shim(plugin, {"CNI_COMMAND": "STATUS"}, conf) == (0, None)
        rc, out = shim(plugin, {"CNI_COMMAND": "STATUS"}, {**conf, "cniVersion": "1.0.0"})
        assert rc == 1 and out["code"] == 1

        # Multus-style second interface for a lab pod of n1, as the runtime would send it
        pod = next(p for p in lab["pods"] if p["node"] == "n1")
        node_ns = next(n["ns"] for n in lab["nodes"] if n["name"] == "n1")
        att = {"CNI_CONTAINERID": pod["container_id"], "CNI_NETNS": f"/var/run/netns/{pod['ns']}",
               "CNI_IFNAME": "net1"}
        rc, result = shim(plugin, {"CNI_COMMAND": "ADD", **att}, conf, ns=node_ns)
        assert rc == 0, result
        rc, out = shim(plugin, {"CNI_COMMAND": "CHECK", **att}, {**conf, "prevResult": result},
                       ns=node_ns)
        assert (rc, out) == (0, None)
        links = subprocess.run(["ip", "-n", pod["ns"], "-j", "link", "show"], capture_output=True,
                               text=True, check=True)
        assert {"eth0", "net1"} <= {l["ifname"] for l in json.loads(links.stdout)}
        assert shim(plugin, {"CNI_COMMAND": "DEL", **att}, conf, ns=node_ns) == (0, None)
        links = subprocess.run(["ip", "-n", pod["ns"], "-j", "link", "show"], capture_output=True,
                               text=True, check=True)
        assert "eth0" in {l["ifname"] for l in json.loads(links.stdout)}
        other = next(p for p in lab["pods"] if p["node"] == "n2")
        ping = subprocess.run(["ip", "netns", "exec", pod["ns"], "ping", "-c", "1", "-W", "2",
                               other["ip"]], capture_output=True, text=True, timeout=20)
        assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        down = podroute("lab", "down", "--name", name, "--state-dir", str(state))
    assert down.returncode == 0, down.stdout + down.stderr
    rc, out = shim(plugin, {"CNI_COMMAND": "STATUS"}, conf)
    assert rc == 1 and out["code"] == 50 and "not reachable" in out["msg"]

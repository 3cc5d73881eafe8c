"""End to end on the host kernel: the lab with VXLAN across two underlay subnets.

Checks what RFC 7348 and Calico's VXLAN mode say the wire and the devices look like:
pods on nodes in different L3 subnets ping through ``vxlan.podroute`` (VNI 4096, UDP
destination port 4789, static FDB/neighbour entries so ``nolearning``); the underlay
capture shows UDP 4789 between the node IPs carrying the pod addresses; the pod MTU is
the underlay's 1500 minus the 50-byte VXLAN overhead (outer IPv4 20 + UDP 8 + VXLAN 8 +
inner Ethernet 14), so a 1422-byte DF ping (1422 + 8 + 20 = 1450) crosses.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def podroute(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "podroute.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


def nsrun(ns: str, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{ns}: {' '.join(argv)} failed ({p.returncode}): {p.stdout}{p.stderr}")
    return p


def capture(ns: str, ifname: str, bpf: list[str], count: int, action) -> str:
    """tcpdump -n -v ``count`` packets on ``ifname`` in ``ns`` while ``action()`` runs."""
    cap = subprocess.Popen(["ip", "netns", "exec", ns, "tcpdump", "-n", "-v", "-l", "-U", "-i", ifname,
                            "-c", str(count), *bpf], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        line = ""
        while time.monotonic() < deadline and "listening" not in line:
            line = cap.stderr.readline()
            if not line and cap.poll() is not None:
                break
        action()
        out, _ = cap.communicate(timeout=20)
        return out
    finally:
        if cap.poll() is None:
            cap.kill()  # our own child, by PID
            cap.wait(timeout=5)


def test_lab_vxlan_two_subnets(tmp_path):
    name = "x" + secrets.token_hex(3)
    state = tmp_path / "lab"
    try:
        up = podroute("lab", "up", "--nodes", "2", "--subnets", "2", "--encapsulation", "vxlan", "--pods", "1",
                      "--name", name, "--state-dir", str(state))
        assert up.returncode == 0, up.stdout + up.stderr
        rep = json.loads((state / name / "report.json").read_text())
        assert rep["passed"] is True and rep["encapsulation"] == "vxlan"
        n1, n2 = rep["nodes"]
        assert n1["subnet"] != n2["subnet"]
        p1 = next(p for p in rep["pods"] if p["node"] == "n1")
        p2 = next(p for p in rep["pods"] if p["node"] == "n2")
        assert all(m["ok"] for m in rep["matrix"]), rep["matrix"]
        assert f"{n2['block']} via {n2['ip']} dev vxlan.podroute onlink" in rep["fib_routes"]["n1"]
        assert f"{n1['block']} via {n1['ip']} dev vxlan.podroute onlink" in rep["fib_routes"]["n2"]

        for n in (n1, n2):
            dev = nsrun(n["ns"], "ip", "-d", "link", "show", "vxlan.podroute").stdout
            assert re.search(r"vxlan id 4096 .*dstport 4789 .*nolearning", dev), dev
            assert " mtu 1450 " in dev, dev
        for p in (p1, p2):
            eth0 = json.loads(nsrun(p["ns"], "ip", "-j", "link", "show", "eth0").stdout)[0]
            assert eth0["mtu"] == 1450, eth0

        out = capture(n2["ns"], "eth0", ["udp", "port", "4789"], 2,
                      lambda: nsrun(p1["ns"], "ping", "-c", "2", "-i", "0.3", "-W", "3", p2["ip"]))
        print(out)
        assert re.search(rf"{re.escape(n1['ip'])}\.\d+ > {re.escape(n2['ip'])}\.4789: VXLAN.*vni 4096", out), out
        assert f"{p1['ip']} > {p2['ip']}: ICMP echo request" in out, out
        assert re.search(rf"{re.escape(n2['ip'])}\.\d+ > {re.escape(n1['ip'])}\.4789: VXLAN", out), out
        assert f"{p2['ip']} > {p1['ip']}: ICMP echo reply" in out, out

        ok = nsrun(p1["ns"], "ping", "-M", "do", "-s", "1422", "-c", "1", "-W", "3", p2["ip"], check=False)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        big = nsrun(p1["ns"], "ping", "-M", "do", "-s", "1423", "-c", "1", "-W", "2", p2["ip"], check=False)
        assert big.returncode != 0 and "message too long" in (big.stdout + big.stderr).lower(), big.stdout + big.stderr
    finally:
        down = podroute("lab", "down", "--name", name, "--state-dir", str(state), timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not [ns for ns in os.listdir("/var/run/netns") if ns.startswith(f"prl-{name}-")]

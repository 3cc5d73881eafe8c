"""The real lab with IPIP, inside the qemu VM (host side: tests/vm/test_lab_ipip_vm.py).

Two labs run one after the other in a single VM boot, each through the real CLI
(``python -m podroute.cli lab up|down``) writing only under /tmp and /run:

1. ``v``: 2 nodes in 2 underlay subnets, ``--encapsulation ipip`` (Always). The
   underlay capture must show RFC 2003 IP-in-IP (outer IPv4 protocol 4) between the
   two node IPs with the pod addresses in the inner header; tunl0 has MTU 1480 on the
   1500-byte underlay (RFC 2003 adds one 20-byte IPv4 header); a DF ping of
   1452 + 8 (ICMP) + 20 (IP) = 1480 bytes crosses, 1453 does not.
2. ``c``: 3 nodes, n1 and n3 in subnet 0, n2 in subnet 1, ``--encap-mode
   CrossSubnet`` (Calico's ipipMode: CrossSubnet): n1 <-> n3 routed natively on eth0,
   everything to or from n2 ``dev tunl0 onlink``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
STATE = Path("/tmp/lab")
NETNS_DIR = Path("/var/run/netns")


def podroute(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    # Under TCG every step is ~10x slower than on the host: give the lab's waits room.
    env = {**os.environ, "PODROUTE_LAB_TIMEOUT_SCALE": "4"}
    return subprocess.run([sys.executable, "-m", "podroute.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout, env=env)


def sh(*argv: str, ns: str | None = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stdout}{p.stderr}")
    return p


def _lab_namespaces(name: str) -> list[str]:
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(f"prl-{name}-")) \
        if NETNS_DIR.is_dir() else []


@pytest.fixture(scope="module", autouse=True)
def warm_imports():
    """Under TCG every first import reads through 9p; warm the guest page cache once
    (ExaBGP and the agent's imports) so the lab's own start-up waits measure the lab."""
    t0 = time.monotonic()
    subprocess.run([str(REPO / ".venv/bin/exabgp"), "--version"], capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-c", "import pyroute2, yaml, podroute.agent, bgp.speaker, cni.plugin"],
                   cwd=REPO, capture_output=True, timeout=300)
    print(f"[inner] import warm-up {time.monotonic() - t0:.1f} s")


class LabRun:
    def __init__(self, name: str, args: list[str]) -> None:
        self.name, self.args = name, args
        self.report: dict = {}
        self.up: subprocess.CompletedProcess[str] | None = None

    def __enter__(self) -> "LabRun":
        t0 = time.monotonic()
        self.up = podroute("lab", "up", *self.args, "--name", self.name, "--state-dir", str(STATE))
        print(f"[inner] lab {self.name} up: exit {self.up.returncode} in {time.monotonic() - t0:.1f} s")
        rep = STATE / self.name / "report.json"
        if rep.exists():
            self.report = json.loads(rep.read_text())
        return self

    def __exit__(self, *exc) -> None:
        down = podroute("lab", "down", "--name", self.name, "--state-dir", str(STATE), timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr
        assert _lab_namespaces(self.name) == []

    def assert_passed(self) -> None:
        assert self.up is not None
        logs = ""
        for d in sorted((STATE / self.name).glob("n*/agent.log")):
            logs += f"--- {d}\n" + d.read_text(errors="replace")[-1500:]
        assert self.up.returncode == 0 and self.report.get("passed") is True, \
            f"lab up failed:\n{self.up.stdout}\n{self.up.stderr}\n{logs}"

    def node(self, name: str) -> dict:
        return next(n for n in self.report["nodes"] if n["name"] == name)

    def pod_on(self, node: str) -> dict:
        return next(p for p in self.report["pods"] if p["node"] == node)


def _capture(ns: str, ifname: str, bpf: list[str], count: int, action) -> str:
    """Run ``action()`` while tcpdump -n -v captures ``count`` packets; return its stdout."""
    cap = subprocess.Popen(["ip", "netns", "exec", ns, "tcpdump", "-n", "-v", "-l", "-U", "-i", ifname,
                            "-c", str(count), *bpf],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        line = ""
        while time.monotonic() < deadline and "listening" not in line:
            line = cap.stderr.readline()  # tcpdump says "listening on ..." once armed
            if not line and cap.poll() is not None:
                break
        action()
        out, err = cap.communicate(timeout=60)
        return out
    finally:
        if cap.poll() is None:
            cap.kill()  # our own child, by PID
            cap.wait(timeout=10)


def test_ipip_lab_end_to_end():
    with LabRun("v", ["--nodes", "2", "--subnets", "2", "--encapsulation", "ipip", "--pods", "1"]) as lab:
        lab.assert_passed()
        n1, n2 = lab.node("n1"), lab.node("n2")
        assert n1["subnet"] != n2["subnet"]
        p1, p2 = lab.pod_on("n1"), lab.pod_on("n2")

        # routes: IPIP both ways (Always)
        assert any(f"via {n2['ip']} dev tunl0 onlink" in r for r in lab.report["fib_routes"]["n1"]), lab.report
        assert any(f"via {n1['ip']} dev tunl0 onlink" in r for r in lab.report["fib_routes"]["n2"]), lab.report

        # tunl0: 1500 - 20 (RFC 2003 outer header)
        for n in (n1, n2):
            link = json.loads(sh("ip", "-j", "-d", "link", "show", "tunl0", ns=n["ns"]).stdout)[0]
            assert link["mtu"] == 1480 and link["linkinfo"]["info_kind"] == "ipip", link
            eth0 = json.loads(sh("ip", "-j", "link", "show", "eth0", ns=n["ns"]).stdout)[0]
            assert eth0["mtu"] == 1500
        pod_eth0 = json.loads(sh("ip", "-j", "link", "show", "eth0", ns=p1["ns"]).stdout)[0]
        assert pod_eth0["mtu"] == 1480, pod_eth0

        # the underlay: protocol 4 between the node IPs, pod addresses inside (seen on n2's uplink)
        out = _capture(n2["ns"], "eth0", ["ip", "proto", "4"], 2,
                       lambda: sh("ping", "-c", "2", "-i", "0.3", "-W", "3", p2["ip"], ns=p1["ns"]))
        print(out)
        outer = re.compile(rf"proto IPIP \(4\).*\n?\s*{re.escape(n1['ip'])} > {re.escape(n2['ip'])}: "
                           rf"IP \(.*proto ICMP \(1\).*\)\n?\s*{re.escape(p1['ip'])} > {re.escape(p2['ip'])}: ICMP echo request")
        assert outer.search(out), out
        assert f"{n2['ip']} > {n1['ip']}" in out and f"{p2['ip']} > {p1['ip']}: ICMP echo reply" in out, out

        # PMTU: 1452 + 8 + 20 = 1480 fits tunl0 (outer packet 1500 = underlay MTU) with DF
        ok = sh("ping", "-M", "do", "-s", "1452", "-c", "1", "-W", "5", p2["ip"], ns=p1["ns"], check=False)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        # 1453 does not fit: the pod's own eth0 (MTU 1480) refuses it locally with DF set,
        # so ping exits non-zero with "message too long" and no reply.
        big = sh("ping", "-M", "do", "-s", "1453", "-c", "1", "-W", "3", p2["ip"], ns=p1["ns"], check=False)
        assert big.returncode != 0, big.stdout
        assert "message too long" in (big.stdout + big.stderr).lower(), big.stdout + big.stderr
        assert " 0 received" in big.stdout or "100% packet loss" in big.stdout or big.returncode == 2


def test_ipip_crosssubnet_lab():
    with LabRun("c", ["--nodes", "3", "--subnets", "2", "--encapsulation", "ipip",
                      "--encap-mode", "CrossSubnet", "--pods", "1"]) as lab:
        lab.assert_passed()
        nodes = {n: lab.node(n) for n in ("n1", "n2", "n3")}
        assert nodes["n1"]["subnet"] == nodes["n3"]["subnet"] != nodes["n2"]["subnet"]
        fib = lab.report["fib_routes"]
        print(json.dumps(fib, indent=1))

        def route(on: str, to: str) -> str:
            block = nodes[to]["block"]
            found = [r for r in fib[on] if r.startswith(block + " ")]
            assert len(found) == 1, (on, to, fib[on])
            return found[0]

        for a, b in (("n1", "n3"), ("n3", "n1")):  # same subnet: native on the uplink
            r = route(a, b)
            assert f"via {nodes[b]['ip']} dev eth0" in r and "tunl0" not in r and "onlink" not in r, r
        for a, b in (("n1", "n2"), ("n3", "n2"), ("n2", "n1"), ("n2", "n3")):  # across: IPIP
            r = route(a, b)
            assert f"via {nodes[b]['ip']} dev tunl0 onlink" in r, r
        cross = [m for m in lab.report["matrix"] if m["src"][:2] != m["dst"][:2]]
        assert len(cross) == 6 and all(m["ok"] for m in cross), cross

"""Pod-to-pod TCP throughput across nodes, native routing vs VXLAN, on the host kernel.

Run by hand (not collected by pytest: the name does not start with ``test_``)::

    .venv/bin/python tests/e2e/iperf_encap.py [--seconds 5] [--modes none,vxlan]

For each mode: ``podroute lab up --nodes 2 --pods 1 --encapsulation <mode>`` (one
underlay subnet, so "none" is plain routing), an ``iperf3 -s -1`` server in n2's pod,
an ``iperf3 -c -t <seconds> -J`` client in n1's pod, then ``lab down`` (always, in a
finally). Prints one line per mode and a JSON summary; the unit is Mbit/s of TCP
payload received (iperf3 ``end.sum_received.bits_per_second`` / 1e6). Exit 1 if a
transfer moved 0 bytes. The VXLAN path (RFC 7348) pays 50 bytes of overhead per
packet (pod MTU 1450) plus the encapsulation work in the kernel.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def podroute(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "podroute.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


def measure(mode: str, seconds: int, state: Path) -> dict:
    name = f"ip{mode[:2]}{os.getpid() % 10000}"
    server = None
    try:
        up = podroute("lab", "up", "--nodes", "2", "--pods", "1", "--encapsulation", mode,
                      "--name", name, "--state-dir", str(state))
        if up.returncode != 0:
            raise RuntimeError(f"lab up ({mode}) failed:\n{up.stdout}\n{up.stderr}")
        rep = json.loads((state / name / "report.json").read_text())
        p1 = next(p for p in rep["pods"] if p["node"] == "n1")
        p2 = next(p for p in rep["pods"] if p["node"] == "n2")
        mtu = json.loads(subprocess.run(["ip", "-n", p1["ns"], "-j", "link", "show", "eth0"],
                                        capture_output=True, text=True).stdout)[0]["mtu"]
        server = subprocess.Popen(["ip", "netns", "exec", p2["ns"], "iperf3", "-s", "-1", "-B", p2["ip"]],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(0.5)
        cli = None
        for _ in range(10):  # the server may need a moment to listen
            cli = subprocess.run(["ip", "netns", "exec", p1["ns"], "iperf3", "-c", p2["ip"], "-t", str(seconds), "-J"],
                                 capture_output=True, text=True, timeout=seconds + 30)
            if cli.returncode == 0:
                break
            time.sleep(0.3)
        res = json.loads(cli.stdout)
        if "error" in res:
            raise RuntimeError(f"iperf3 ({mode}): {res['error']}")
        recv = res["end"]["sum_received"]
        return {"mode": mode, "pod_mtu": mtu, "seconds": round(recv["seconds"], 2), "bytes": recv["bytes"],
                "mbit_s": round(recv["bits_per_second"] / 1e6, 1),
                "retransmits": res["end"]["sum_sent"].get("retransmits")}
    finally:
        if server is not None and server.poll() is None:
            os.kill(server.pid, signal.SIGTERM)  # our own child, by PID
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(server.pid, signal.SIGKILL)
                server.wait(timeout=5)
        podroute("lab", "down", "--name", name, "--state-dir", str(state), timeout=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--modes", default="none,vxlan")
    a = ap.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="podroute-iperf-") as tmp:
        for mode in a.modes.split(","):
            r = measure(mode, a.seconds, Path(tmp))
            results.append(r)
            print(f"{mode:6s} pod MTU {r['pod_mtu']}: {r['mbit_s']:.1f} Mbit/s over {r['seconds']} s "
                  f"({r['bytes']} bytes, {r['retransmits']} retransmits)", flush=True)
    print(json.dumps(results))
    return 0 if all(r["bytes"] > 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The real entry point (``podroute node run``) in a throwaway netns, with ``metrics:`` on and a
real NOTIFY_SOCKET listener bound by the test: its /metrics passes ``promtool check metrics``
and its route gauges match ``ip route show proto 90``; /readyz and READY=1 wait for the one BGP
peer (which never answers) until gracefulRestartTime, then report it absent; the watchdog
pings arrive; SIGTERM sends STOPPING=1."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml
from nsutil import sh
from test_agent_repair import BLOCK, NODE_IP, PEER_IP, ROOT, Node, block_route, is_ours

pytestmark = pytest.mark.privileged
GR_S = 4   # gracefulRestartTime: the readiness bound for the absent peer
GET = ("import sys, urllib.request, urllib.error\n"
       "try:\n    r = urllib.request.urlopen(sys.argv[1], timeout=10); code, body = r.status, r.read()\n"
       "except urllib.error.HTTPError as e:\n    code, body = e.code, e.read()\n"
       "sys.stdout.write(str(code) + '\\n'); sys.stdout.flush(); sys.stdout.buffer.write(body)\n")


class MetricsNode(Node):
    def start_metrics(self, notify: str) -> None:
        cfg = {"nodeName": "metrics-1", "nodeIP": NODE_IP, "asn": 64512, "podCIDRs": [BLOCK],
               "ipPools": [{"cidr": "198.19.0.0/16", "blockSize": 26}], "mtu": 1400,
               "peers": [{"address": PEER_IP, "asn": 64512}],   # never answers
               "gracefulRestartTime": GR_S, "resyncInterval": 3600,
               "metrics": {"address": NODE_IP, "port": 9091},
               "paths": {"stateDir": str(self.tmp / "state"), "runDir": str(self.tmp / "run")}}
        self.conf.write_text(yaml.safe_dump(cfg))
        env = ["env", f"NOTIFY_SOCKET={notify}", "WATCHDOG_USEC=1000000"]
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *env, sys.executable, "-m", "podroute.cli",
                                      "node", "run", "--config", str(self.conf)],
                                     cwd=ROOT, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def get(self, path: str) -> tuple[int, bytes]:
        p = sh(sys.executable, "-c", GET, f"http://{NODE_IP}:9091{path}", ns=self.ns)
        code, _, body = p.stdout.partition("\n")
        return int(code), body.encode()


@pytest.fixture
def mnode(make_netns, tmp_path):
    ns = make_netns("metrics")
    sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p", ns=ns)
    sh("ip", "addr", "add", f"{NODE_IP}/24", "dev", "eth0", ns=ns)
    for dev in ("eth0p", "eth0"):
        sh("ip", "link", "set", dev, "up", ns=ns)
    n = MetricsNode(ns, tmp_path)
    yield n
    n.stop()


def test_live_agent_metrics_health_and_sd_notify(mnode, tmp_path):
    path = str(tmp_path / "notify.sock")
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    lst.bind(path)
    lst.settimeout(0.1)
    got: list[tuple[float, str]] = []
    stop = threading.Event()

    def recv() -> None:
        while not stop.is_set():
            try:
                got.append((time.monotonic(), lst.recv(4096).decode()))
            except socket.timeout:
                pass
    t = threading.Thread(target=recv, daemon=True)
    t.start()
    try:
        t_start = time.monotonic()
        mnode.start_metrics(path)
        mnode.wait("the block's blackhole", lambda: is_ours(block_route(mnode.ns)), 30)
        mnode.wait("the listener", lambda: "metrics listener up" in mnode.log.read_text(errors="replace"), 30)
        code, body = mnode.get("/readyz")
        rep = json.loads(body)
        assert code == 503 and not rep["checks"]["bgp"]["ok"] and PEER_IP in rep["checks"]["bgp"]["reason"]
        assert not any("READY=1" in d.split("\n") for _, d in got)    # not before readiness
        mnode.wait("READY=1", lambda: any("READY=1" in d.split("\n") for _, d in got), GR_S + 15)
        t_ready = next(ts for ts, d in got if "READY=1" in d.split("\n"))
        assert t_ready - t_start >= GR_S   # the peer bound, from the agent's start
        code, body = mnode.get("/readyz")
        rep = json.loads(body)
        assert code == 200 and f"absent after {GR_S} s (reported): {PEER_IP}" in rep["checks"]["bgp"]["reason"]
        assert "readiness no longer waits" in mnode.log.read_text(errors="replace")
        assert mnode.get("/livez")[0] == 200
        assert len([ts for ts, d in got if d == "WATCHDOG=1"]) >= 2

        code, body = mnode.get("/metrics")
        assert code == 200
        text = body.decode()
        ours = len(sh("ip", "-o", "route", "show", "table", "main", "proto", "90", ns=mnode.ns).stdout.splitlines())
        kinds = {line.split('"')[1]: float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith("podroute_fib_routes{")}
        assert kinds["blackhole"] == 1 and sum(kinds.values()) == ours
        assert f'podroute_bgp_session_up{{peer="{PEER_IP}"}} 0.0' in text
        assert "podroute_ready 1.0" in text
        if shutil.which("promtool") is None:
            pytest.skip("promtool (Debian package prometheus) is not installed")
        p = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30)
        assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), (p.stdout, p.stderr)
    finally:
        mnode.stop()
        deadline = time.monotonic() + 2
        while not any("STOPPING=1" in d.split("\n") for _, d in got) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        t.join(5)
        lst.close()
    assert any("STOPPING=1" in d.split("\n") for _, d in got)

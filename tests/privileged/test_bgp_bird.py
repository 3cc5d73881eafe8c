"""The Speaker against a real BIRD 2 peer across a veth between two throwaway netns.

The speaker runs in a child process (``nsenter --net=<ns> python -m bgp cfg.json``), which
is how the agent runs too (``ip netns exec <node> podroute node run``): ExaBGP is spawned
from inside the namespace. nsenter (no fork for a net namespace) keeps the PID we hold the
driver's own.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nsutil import netns_path, sh, veth_link
from waiting import wait

pytestmark = pytest.mark.privileged

REPO = Path(__file__).resolve().parents[2]
PY = str(REPO / ".venv" / "bin" / "python")
BIRD_IP, SPK_IP = "198.18.0.1", "198.18.0.2"
POOL_ROUTES = {"198.19.1.0/26", "198.19.2.0/26"}
OWN_BLOCK = "198.19.3.0/26"

BIRD_CONF = """
router id 198.18.0.1;
log "{log}" all;
protocol device {{}}
protocol static s1 {{
  ipv4;
  route 198.19.1.0/26 blackhole;
  route 198.19.2.0/26 blackhole;
  route 203.0.113.0/24 blackhole;
  route 0.0.0.0/0 blackhole;
}}
protocol bgp peer1 {{
  local 198.18.0.1 as 64512;
  neighbor 198.18.0.2 as 64512;
  hold time 9;
  connect retry time 1;
  error wait time 1, 2;
  graceful restart on;
  graceful restart time 3;
  ipv4 {{ import all; export all; next hop self; }};
}}
"""


class Bird:
    def __init__(self, ns: str, tmp: Path, conf: str | None = None) -> None:
        self.ns, self.tmp = ns, tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.conf = tmp / "bird.conf"
        self.sock = tmp / "bird.ctl"
        self.conf.write_text(conf if conf is not None else BIRD_CONF.format(log=tmp / "bird.log"))
        self.proc: subprocess.Popen | None = None

    def birdc(self, *args: str) -> str:
        return sh("birdc", "-s", str(self.sock), *args, check=False).stdout

    def wait_started(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "BIRD" in self.birdc("show", "status"):
                return
            time.sleep(0.05)
        raise AssertionError("BIRD did not start")

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={netns_path(self.ns)}", "bird", "-f", "-c", str(self.conf),
             "-s", str(self.sock), "-P", str(self.tmp / "bird.pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def show_route(self) -> str:
        return sh("birdc", "-s", str(self.sock), "show", "route", "protocol", "peer1",
                  check=False).stdout


class Driver:
    """The speaker subprocess; its stdout JSON lines land in a queue."""

    def __init__(self, ns: str, cfg: dict, tmp: Path, env: dict | None = None) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        path = tmp / "speaker.json"
        path.write_text(json.dumps(cfg))
        self.log_path = tmp / "speaker.log"
        self.err = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={netns_path(ns)}", PY, "-m", "bgp", str(path)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True,
            env={**os.environ, **(env or {})})
        self.history: list[tuple[float, dict]] = []   # (monotonic time, routes) per change
        self.lines: queue.Queue[dict] = queue.Queue()
        self.routes: dict = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def wait_for(self, pred, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if "routes" in msg:
                self.routes = msg["routes"]
                self.history.append((time.monotonic(), msg["routes"]))
            if pred(msg):
                return msg
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; "
                             f"last routes {self.routes}")

    def watch(self, bad, seconds: float, what: str) -> None:
        """Read the speaker's output for ``seconds`` s (a window that must stay quiet, e.g. a
        restart time); AssertionError naming ``what`` at the first message ``bad`` holds for."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = self.lines.get(timeout=left)
            except queue.Empty:
                return
            if "routes" in msg:
                self.routes = msg["routes"]
                self.history.append((time.monotonic(), msg["routes"]))
            if bad(msg):
                raise AssertionError(f"{what}: {msg}")

    def status(self, timeout: float = 5) -> dict:
        self.send("status")
        return self.wait_for(lambda m: "status" in m, timeout, "status")["status"]

    def poll_status(self, pred, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        st: dict = {}
        while time.monotonic() < deadline:
            st = self.status()
            if pred(st):
                return st
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; status {st}")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("stop")
                self.proc.wait(15)
            except (OSError, subprocess.TimeoutExpired):
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.err.close()


@pytest.fixture
def lab(make_netns, tmp_path):
    ns_b, ns_s = make_netns("bgpb"), make_netns("bgps")
    veth_link(ns_b, ns_s, BIRD_IP, SPK_IP)
    bird = Bird(ns_b, tmp_path)
    bird.start()
    cfg = {
        "router_id": SPK_IP, "local_as": 64512, "local_address": SPK_IP,
        "peers": [{"address": BIRD_IP, "asn": 64512, "hold_time": 9}],
        "announce": [OWN_BLOCK], "import_pools": ["198.19.0.0/16"], "own_blocks": [OWN_BLOCK],
        "node_ip": SPK_IP, "state_dir": str(tmp_path / "state"),
    }
    t0 = time.monotonic()
    driver = Driver(ns_s, cfg, tmp_path)
    yield bird, driver, t0
    driver.close()
    bird.kill()
    if os.environ.get("BGP_TEST_SHOW_LOGS"):
        sys.stderr.write((tmp_path / "speaker.log").read_text())


def _pool_routes_ok(msg: dict) -> bool:
    routes = msg.get("routes")
    return routes is not None and set(routes) == POOL_ROUTES and all(
        r["next_hops"] == [BIRD_IP] for r in routes.values())


def test_speaker_against_bird(lab):
    bird, driver, t0 = lab
    driver.wait_for(_pool_routes_ok, 30, "the two pool routes")
    t_routes = time.monotonic() - t0
    st = driver.poll_status(lambda s: s["peers"][0]["state"] == "established", 10, "established")
    peer = st["peers"][0]
    assert peer["prefixes_accepted"] == 2
    assert peer["prefixes_rejected"] == 2
    assert dict(peer["rejected_by_reason"]) == {"default": 1, "outside_pool": 1}
    assert st["exabgp_restarts"] == 0 and st["exabgp_pid"]
    assert driver.routes.keys() == POOL_ROUTES  # exactly, never the rejected two

    # BIRD learns our own block from us.
    wait(lambda: OWN_BLOCK in bird.show_route(), 15, "BIRD to learn our block")

    # BIRD dies (kill -9: its kernel closes the TCP session): BIRD advertised graceful
    # restart with time 3 s, so its routes stay as stale for 3 s, then are flushed.
    t_kill = time.monotonic()
    bird.kill()
    driver.wait_for(lambda m: m.get("routes") == {}, 20, "flush after BIRD died")
    kept = time.monotonic() - t_kill
    assert kept >= 2.5, f"routes left after {kept:.2f} s, before the 3 s restart time"
    bird.start()
    driver.wait_for(_pool_routes_ok, 30, "routes back after BIRD restart")

    # ExaBGP killed by PID: the speaker restarts it and the routes come back.
    pid = driver.status()["exabgp_pid"]
    os.kill(pid, signal.SIGKILL)
    driver.wait_for(lambda m: m.get("routes") == {}, 10, "flush after ExaBGP died")
    driver.wait_for(_pool_routes_ok, 40, "routes back after ExaBGP restart")
    st = driver.status()
    assert st["exabgp_restarts"] == 1
    assert st["exabgp_pid"] not in (None, pid)
    assert "-9" in (st["last_exit"] or "")
    wait(lambda: OWN_BLOCK in bird.show_route(), 15, "BIRD to learn our block")
    sys.stderr.write(f"routes delivered {t_routes:.2f} s after start\n")

    # A stop is graceful (RFC 4724 §4.2): nothing withdrawn, ExaBGP closes the session without
    # a NOTIFICATION, and BIRD keeps our block (stale) for our restart time.
    driver.send("stop")
    driver.wait_for(lambda m: m.get("stopped"), 20, "stopped")
    assert OWN_BLOCK in bird.show_route()
    proto = bird.birdc("show", "protocols", "all", "peer1")
    # A transport close ("Last error: Socket: ..."), not a NOTIFICATION ("Received: ..."),
    # and BIRD helping us through graceful restart.
    assert "Neighbor graceful restart active" in proto and "Socket:" in proto and "Received:" not in proto, proto


def test_drain_withdraws_and_bird_has_it_when_drain_returns(lab):
    """Speaker.drain against a real BIRD: our block is gone from BIRD when drain() returns,
    and BIRD's TCP acknowledged the withdrawal (the report names it as delivered)."""
    bird, driver, _ = lab
    driver.poll_status(lambda s: s["peers"][0]["state"] == "established", 30, "established")
    wait(lambda: OWN_BLOCK in bird.show_route(), 15, "BIRD to learn our block")
    driver.send("drain 0.2")
    rep = driver.wait_for(lambda m: "drained" in m, 20, "drained")["drained"]
    assert rep["complete"] and rep["withdrawn"] == [OWN_BLOCK] and rep["delivered"] == [BIRD_IP], rep
    assert OWN_BLOCK not in bird.show_route()
    driver.send("stop")
    driver.wait_for(lambda m: m.get("stopped"), 20, "stopped")
    assert OWN_BLOCK not in bird.show_route()


def test_bird_updates_arrive_undecoded(lab):
    """BIRD's announcements carry only NLRI and its withdrawal of everything (its static
    protocol disabled) only Withdrawn Routes, so ExaBGP (run under bgp/exabgp_launch.py)
    hands both on undecoded; every route goes, rejected ones included, on the same session,
    and comes back after."""
    bird, driver, _ = lab
    driver.wait_for(_pool_routes_ok, 30, "the two pool routes")
    st = driver.poll_status(lambda s: s["peers"][0]["prefixes_received"] == 4, 10, "4 received")
    since = st["peers"][0]["since"]
    assert st["peers"][0]["withdrawn_undecoded"] == 0
    assert st["peers"][0]["announced_undecoded"] == 4
    bird.birdc("disable", "s1")
    driver.wait_for(lambda m: m.get("routes") == {}, 10, "routes withdrawn")
    st = driver.poll_status(lambda s: s["peers"][0]["prefixes_received"] == 0, 10, "0 received")
    peer = st["peers"][0]
    assert peer["withdrawn_undecoded"] == 4        # 2 accepted + default + outside the pool
    assert peer["prefixes_rejected"] == 0 and peer["state"] == "established"
    bird.birdc("enable", "s1")
    driver.wait_for(_pool_routes_ok, 15, "routes back")
    st = driver.poll_status(lambda s: s["peers"][0]["prefixes_received"] == 4, 10, "4 again")
    assert st["peers"][0]["since"] == since and st["exabgp_restarts"] == 0
    assert st["peers"][0]["announced_undecoded"] == 8


def test_graceful_restart_of_bird(lab):
    """RFC 4724 §4.2 against a real BIRD: kill -9 and restart within its 3 s restart time:
    the routes never leave the Loc-RIB and the stale marks go at BIRD's End-of-RIB; then kill
    it for longer: the routes go once the 3 s have passed, not before."""
    bird, driver, _ = lab
    driver.wait_for(_pool_routes_ok, 30, "the two pool routes")
    st = driver.poll_status(lambda s: s["peers"][0]["eor_received"], 10, "End-of-RIB")
    assert st["peers"][0]["gr_restart_time"] == 3          # parsed from BIRD's OPEN

    n = len(driver.history)
    t_first_kill = time.monotonic()
    bird.kill()
    st = driver.poll_status(lambda s: s["peers"][0]["stale_routes"] == 2, 5, "stale routes")
    assert st["peers"][0]["state"] == "down"
    bird.start()
    st = driver.poll_status(lambda s: s["peers"][0]["state"] == "established"
                            and s["peers"][0]["eor_received"], 15, "BIRD back with EoR")
    assert st["peers"][0]["stale_routes"] == 0
    # Until 1 s past the 3 s restart timer the first kill started, no route may leave.
    driver.watch(lambda m: "routes" in m and set(m["routes"]) != POOL_ROUTES,
                 t_first_kill + 4 - time.monotonic(), "a route left across the restart")
    assert all(set(r) == POOL_ROUTES for _, r in driver.history[n:]), driver.history[n:]
    assert set(driver.routes) == POOL_ROUTES

    t_kill = time.monotonic()
    bird.kill()
    driver.wait_for(lambda m: m.get("routes") == {}, 15, "routes gone after the restart time")
    gone = time.monotonic() - t_kill
    assert 2.5 <= gone <= 8, gone
    st = driver.status()["peers"][0]
    assert st["stale_routes"] == 0 and st["prefixes_received"] == 0

"""A real agent in a throwaway netns repairs its routes: the netlink monitor restores a proto-90
route deleted or changed by hand at once, and with the monitor off the periodic resync
(``resyncInterval``) does. The same agent answers ``podroute status`` (``--json`` and text),
whose shape is checked here from a live snapshot.

Each test starts one agent (``podroute node run``, or the same Agent built with
``start_monitor=False``) on a node with one /26 block, whose blackhole route is ours."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nsutil import sh, stop_group

pytestmark = pytest.mark.privileged

ROOT = Path(__file__).resolve().parents[2]
BLOCK, NODE_IP, PEER_IP = "198.19.9.64/26", "198.18.0.11", "198.18.0.254"
# The same agent as ``podroute node run``, minus the netlink monitor.
NO_MONITOR = ("import asyncio, sys\n"
              "from podroute import logs\nfrom podroute.agent import Agent\n"
              "from podroute.config import load\n"
              "logs.setup('info', 'logfmt')\n"
              "sys.exit(asyncio.run(Agent(load(sys.argv[1]), start_monitor=False).run()))\n")


def block_route(ns: str) -> list[dict]:
    """Our proto-90 routes for the block (``ip -j route``)."""
    out = sh("ip", "-j", "-d", "route", "show", "proto", "90", "root", BLOCK, ns=ns).stdout
    return [r for r in json.loads(out or "[]") if r["dst"] == BLOCK]


def is_ours(routes: list[dict]) -> bool:
    return len(routes) == 1 and routes[0].get("type") == "blackhole"


class Node:
    def __init__(self, ns: str, tmp: Path) -> None:
        self.ns, self.tmp = ns, tmp
        self.log = tmp / "agent.log"
        self.conf = tmp / "node.yaml"
        self.proc: subprocess.Popen | None = None

    def start(self, *, resync: float, monitor: bool = True) -> None:
        cfg = {"nodeName": "repair-1", "nodeIP": NODE_IP, "asn": 64512, "podCIDRs": [BLOCK],
               "ipPools": [{"cidr": "198.19.0.0/16", "blockSize": 26}], "mtu": 1400,
               # Never answers: the peer row exists and stays not Established.
               "peers": [{"address": PEER_IP, "asn": 64512}],
               "serviceCIDRs": [{"cidr": "198.18.128.0/24", "communities": ["64512:100"]}],
               "resyncInterval": resync,
               "paths": {"stateDir": str(self.tmp / "state"), "runDir": str(self.tmp / "run")}}
        self.conf.write_text(yaml.safe_dump(cfg))
        argv = (["-m", "podroute.cli", "node", "run", "--config", str(self.conf)] if monitor
                else ["-c", NO_MONITOR, str(self.conf)])
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, *argv],
                                     cwd=ROOT, stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    def wait(self, what: str, cond, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            v = cond()
            if v:
                return v
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"agent exited ({self.proc.returncode}) before {what}:\n"
                            f"{self.log.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout} s waiting for {what}:\n"
                            f"{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)

    def status(self, *flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "podroute.cli", "status", "--config",
                               str(self.conf), *flags], cwd=ROOT, capture_output=True,
                              text=True, timeout=20)

    def status_json(self) -> dict:
        out = self.status("--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def stop(self) -> None:
        stop_group(self.proc, 20, 10)


@pytest.fixture
def node(make_netns, tmp_path):
    ns = make_netns("repair")
    sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p", ns=ns)
    sh("ip", "addr", "add", f"{NODE_IP}/24", "dev", "eth0", ns=ns)
    sh("ip", "link", "set", "eth0p", "up", ns=ns)
    sh("ip", "link", "set", "eth0", "up", ns=ns)
    n = Node(ns, tmp_path)
    yield n
    n.stop()


def test_monitor_restores_a_route_deleted_or_changed_by_hand(node):
    node.start(resync=3600)
    node.wait("the block's blackhole", lambda: is_ours(block_route(node.ns)), 30)
    node.wait("the status socket", lambda: (node.tmp / "run" / "agent.sock").exists(), 30)

    sh("ip", "route", "del", BLOCK, "proto", "90", ns=node.ns)
    node.wait("the deleted route back", lambda: is_ours(block_route(node.ns)), 10)

    # Changed, not deleted: same destination and protocol, another type.
    sh("ip", "route", "replace", "unreachable", BLOCK, "proto", "90", ns=node.ns)
    node.wait("the changed route repaired", lambda: is_ours(block_route(node.ns)), 10)

    fib = node.status_json()["fib"]
    assert fib["monitor_triggers"] >= 2 and fib["resyncs"] == 0, fib


def test_periodic_resync_restores_a_route_without_the_monitor(node):
    node.start(resync=1, monitor=False)
    node.wait("the block's blackhole", lambda: is_ours(block_route(node.ns)), 30)
    node.wait("the status socket", lambda: (node.tmp / "run" / "agent.sock").exists(), 30)
    sh("ip", "route", "del", BLOCK, "proto", "90", ns=node.ns)
    node.wait("the resync to restore the route", lambda: is_ours(block_route(node.ns)), 10)
    fib = node.status_json()["fib"]
    assert fib["resyncs"] >= 1 and fib["monitor_triggers"] == 0, fib


NUM = (int, float)
OPT_NUM = (int, float, type(None))
# The keys ``podroute status --json`` promises (statusd.query of Agent.status()) and their
# JSON types; more keys may come, none of these may go or change type.
SHAPE = {
    "node": {"name": str, "ip": str, "asn": int, "router_id": str, "pod_cidrs": [str]},
    "started": NUM,
    "bgp": {"peers": [{"address": str, "asn": int, "type": str, "state": str, "since": OPT_NUM,
                       "prefixes_received": int, "prefixes_accepted": int,
                       "prefixes_rejected": int, "info": str, "stale_routes": int,
                       "gr_restart_time": (int, type(None)), "rr_client": bool,
                       "reflected_routes": int, "eor_received": bool,
                       "withdrawn_undecoded": int, "announced_undecoded": int,
                       "passive": bool}],
            "rejections": dict,
            "exabgp": {"pid": int, "restarts": int, "last_exit": (str, type(None))},
            "announced": [str], "routes_total": int, "routes": list},
    "fib": {"protocol": int,
            "desired_by_owner": {"workloads": int, "blocks": int, "bgp": int, "total": int},
            "last_apply": {"added": int, "replaced": int, "deleted": int, "errors": list,
                           "duration_s": NUM, "at": NUM},
            "resyncs": int, "monitor_triggers": int, "graceful_restart_hold": bool},
    "encapsulation": {"pools": [{"cidr": str, "ipip": str, "vxlan": str}],
                      "underlay": {"interface": str, "subnets": [str], "mtu": int},
                      "pod_mtu": int, "tunnel_address": str, "tunl0": (dict, type(None)),
                      "vxlan": (dict, type(None))},
    "workloads": int, "tasks": [str], "task_failures": list,
}
# The coordinator's contract for the loop-lag key, checked when the agent reports it.
LOOP = {"lag_s": NUM, "worst_s": NUM, "worst_at": OPT_NUM, "threshold_s": NUM}


def check_shape(value, shape, path: str = "status") -> list[str]:
    """Mismatches of ``value`` against ``shape`` (dict: required keys; one-element list:
    every item; type or tuple of types: isinstance, bool never passing for int)."""
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__}, not an object"]
        return [e for k, sub in shape.items()
                for e in ([f"{path}.{k}: missing"] if k not in value
                          else check_shape(value[k], sub, f"{path}.{k}"))]
    if isinstance(shape, list):
        if not isinstance(value, list):
            return [f"{path}: {type(value).__name__}, not a list"]
        return [e for i, v in enumerate(value) for e in check_shape(v, shape[0], f"{path}[{i}]")]
    types = shape if isinstance(shape, tuple) else (shape,)
    if isinstance(value, bool) and bool not in types:
        return [f"{path}: bool {value!r}"]
    return [] if isinstance(value, types) else [f"{path}: {type(value).__name__} {value!r}"]


def test_status_json_and_text_from_a_live_agent(node):
    node.start(resync=3600)
    node.wait("the status socket", lambda: (node.tmp / "run" / "agent.sock").exists(), 30)
    node.wait("the block's blackhole", lambda: is_ours(block_route(node.ns)), 30)
    st = node.wait("the first FIB apply in the status",
                   lambda: (lambda s: s if s["fib"]["last_apply"] else None)(node.status_json()),
                   10)
    assert check_shape(st, SHAPE) == [], json.dumps(st, indent=1)
    if "loop" in st:
        assert check_shape(st["loop"], LOOP, "status.loop") == [], st["loop"]
    assert check_shape({"started": True}, {"started": NUM}) != []   # the checker can fail
    assert [p["address"] for p in st["bgp"]["peers"]] == [PEER_IP]
    assert st["bgp"]["peers"][0]["state"] != "established"
    assert set(st["bgp"]["announced"]) == {BLOCK, "198.18.128.0/24"}
    assert st["fib"]["desired_by_owner"] == {"workloads": 0, "blocks": 1, "bgp": 0, "total": 1}
    assert st["encapsulation"]["tunnel_address"] == "198.19.9.64"
    assert {"felix", "resync", "route-monitor", "bgp-speaker"} <= set(st["tasks"])

    # The text rendering (``podroute status``; ``lab status`` prints the same per node).
    text = node.status()
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith("podroute agent is running on repair-1 (198.18.0.11), AS 64512")
    assert any(PEER_IP in ln and "| iBGP" in ln and st["bgp"]["peers"][0]["state"] in ln
               for ln in lines), text.stdout
    assert any(ln.split("|")[1:3] == [" blocks    ", " 1     "] for ln in lines if "|" in ln), \
        text.stdout


def test_lab_status_prints_each_nodes_live_status(node, tmp_path):
    """``podroute lab status`` reads the lab's saved state and prints, per node, a header and
    that node's agent status as ``podroute status`` renders it, or "agent not answering"."""
    from podroute.lab.runner import Lab, Node as LabNode
    node.start(resync=3600)
    node.wait("the status socket", lambda: (node.tmp / "run" / "agent.sock").exists(), 30)
    root = tmp_path / "labs"
    lab = Lab("t", str(root / "t"), nodes=[
        LabNode("n1", node.ns, NODE_IP, BLOCK, str(node.tmp), pid=node.proc.pid),
        LabNode("n2", "prt-gone-000000", "198.18.0.12", "198.19.9.128/26",
                str(tmp_path / "n2"))])
    lab.path.mkdir(parents=True)
    lab.save()
    out = subprocess.run([sys.executable, "-m", "podroute.cli", "lab", "status", "--name", "t",
                          "--state-dir", str(root)], cwd=ROOT, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    blocks = out.stdout.split("=== ")[1:]
    assert len(blocks) == 2, out.stdout
    n1, n2 = (b.splitlines() for b in blocks)
    assert n1[0] == f"n1 ({node.ns}, {NODE_IP}, agent pid {node.proc.pid})"
    assert n1[1].startswith("podroute agent is running on repair-1 (198.18.0.11), AS 64512")
    assert any(PEER_IP in ln and "| iBGP" in ln for ln in n1), out.stdout
    assert n2[:2] == ["n2 (prt-gone-000000, 198.18.0.12, agent pid None)", "agent not answering"]

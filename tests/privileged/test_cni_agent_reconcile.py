"""A real agent (``podroute node run``) and the real shim, as issue 14 item 4 reproduced it:

* started over the state a kill -9 mid-ADD leaves, its CNI server comes up only after the
  restart reconciler has finished the half-wired pod, released the IP nobody owns and removed
  our veth with no record;
* SIGSTOPped for longer than the shim's timeout (the runtime gets code 11), it must not wire
  that ADD once it runs again."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
import yaml

from cni.ipam import IPAM
from nsutil import add_uplink, netns_path, sh

pytestmark = pytest.mark.privileged

ROOT = Path(__file__).resolve().parents[2]
BLOCK = IPv4Network("198.19.9.64/26")
TUNNEL = BLOCK.network_address  # the agent reserves its block's first address


def ipj(ns: str, *args: str):
    return json.loads(sh("ip", "-j", *args, ns=ns).stdout or "[]")


def wait_for(what: str, cond, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"agent exited with {proc.returncode} before {what}:\n"
                        f"{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)


def write_config(tmp_path: Path) -> tuple[Path, Path]:
    """node.yaml for a one-node agent with no peers -> (state dir, run dir)."""
    state, run = tmp_path / "state", tmp_path / "run"
    cfg = {"nodeName": "recon-1", "nodeIP": "198.18.0.11", "asn": 64512,
           "podCIDRs": [str(BLOCK)],
           "ipPools": [{"cidr": "198.19.0.0/16", "blockSize": 26, "ipipMode": "Never",
                        "vxlanMode": "Never"}],
           "mtu": 1400, "peers": [], "resyncInterval": 30,
           "paths": {"stateDir": str(state), "runDir": str(run)}}
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(cfg))
    # An agent with no peers does not create its BGP state dir itself (noticed, not ours).
    (state / "bgp").mkdir(parents=True)
    return state, run


def start_agent(ns: str, tmp_path: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "podroute.cli",
                             "node", "run", "--config", str(tmp_path / "node.yaml")],
                            cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def stop_agent(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGCONT)
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture
def node(make_netns):
    ns = make_netns("recn")
    add_uplink(ns, "198.18.0.11/24")
    return ns


def test_agent_start_reconciles_before_serving(node, make_netns, tmp_path):
    pod_a, ghost = make_netns("reca"), make_netns("recg")
    state, run = write_config(tmp_path)
    ipam = IPAM(state / "ipam", [BLOCK], reserved=[TUNNEL])

    def claim(cid: str, netns: str, host: str) -> IPv4Address:
        attrs = {"network": "podroute", "container_id": cid, "ifname": "eth0", "netns": netns,
                 "host_ifname": host, "mtu": 1400, "pod_namespace": None, "pod_name": None}
        return ipam.claim(f"podroute.{cid}.eth0", attrs)[0].ip

    ip_a = claim("cida", netns_path(pod_a), "prtagenta00001")  # killed right after the claim
    claim("cidc", "/var/run/netns/prt-recgone-000000", "prtagentc00001")  # its netns is gone
    sh("ip", "link", "add", "prtorphan00001", "type", "veth", "peer", "name", "eth0",
       "netns", ghost, ns=node)  # our veth, no record

    log = tmp_path / "agent.log"
    proc = start_agent(node, tmp_path, log)
    try:
        wait_for("the CNI socket", (run / "cni.sock").exists, 60, proc, log)
        links = {l["ifname"] for l in ipj(node, "link", "show")}
        assert "prtagenta00001" in links and "prtorphan00001" not in links
        assert [l["ifname"] for l in ipj(ghost, "link", "show")] == ["lo"]
        assert set(ipam.allocations()) == {"podroute.cida.eth0"}
        routes = {(r["dst"], r.get("dev")) for r in ipj(node, "route", "show", "proto", "90")}
        assert (str(ip_a), "prtagenta00001") in routes
        (eth0,) = [l for l in ipj(pod_a, "addr", "show") if l["ifname"] == "eth0"]
        assert [a["local"] for a in eth0["addr_info"] if a["family"] == "inet"] == [str(ip_a)]
        text = log.read_text(errors="replace")
        assert "finished" in text and "rolled back" in text and "no IPAM record" in text
    finally:
        stop_agent(proc)


def test_add_abandoned_while_the_agent_was_stopped_is_not_wired(node, make_netns, tmp_path):
    pod = make_netns("recs")
    state, run = write_config(tmp_path)
    log = tmp_path / "agent.log"
    proc = start_agent(node, tmp_path, log)
    try:
        wait_for("the CNI socket", (run / "cni.sock").exists, 60, proc, log)
        os.killpg(proc.pid, signal.SIGSTOP)
        conf = {"cniVersion": "1.0.0", "name": "podroute", "type": "podroute",
                "agentSocket": str(run / "cni.sock"), "agentTimeout": 1}
        shim = subprocess.run(
            ["/usr/bin/python3", "-I", "-S", str(ROOT / "cni" / "shim.py")],
            input=json.dumps(conf), capture_output=True, text=True, timeout=30,
            env={"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "stopped1", "CNI_NETNS": netns_path(pod),
                 "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"})
        assert shim.returncode == 1 and json.loads(shim.stdout)["code"] == 11  # the runtime's view
        os.killpg(proc.pid, signal.SIGCONT)
        wait_for("the agent to take up the abandoned ADD",
                 lambda: "stopped1" in log.read_text(errors="replace"), 30, proc, log)
        assert IPAM(state / "ipam", [BLOCK], reserved=[TUNNEL]).allocations() == {}
        assert not [l for l in ipj(node, "link", "show") if l["ifname"].startswith("prt")]
        assert [l["ifname"] for l in ipj(pod, "link", "show")] == ["lo"]
        assert ipj(node, "route", "show", "proto", "90", "scope", "link") == []
    finally:
        stop_agent(proc)


def run_shim(command: str, conf: dict, **env: str) -> tuple[int, dict | None]:
    p = subprocess.run(["/usr/bin/python3", "-I", "-S", str(ROOT / "cni" / "shim.py")],
                       input=json.dumps(conf), capture_output=True, text=True, timeout=60,
                       env={"CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin", **env})
    return p.returncode, (json.loads(p.stdout) if p.stdout.strip() else None)


def test_gc_against_a_live_agent(node, make_netns, tmp_path):
    """CNI 1.1 GC through the shim and a running agent: the attachment the runtime no longer
    lists loses its IP, host veth and route; the listed one keeps working."""
    pods = {cid: make_netns("gcp") for cid in ("keep1", "stale1")}
    state, run = write_config(tmp_path)
    log = tmp_path / "agent.log"
    proc = start_agent(node, tmp_path, log)
    try:
        wait_for("the CNI socket", (run / "cni.sock").exists, 60, proc, log)
        conf = {"cniVersion": "1.0.0", "name": "podroute", "type": "podroute",
                "agentSocket": str(run / "cni.sock")}
        results = {}
        for cid, pod in pods.items():
            rc, results[cid] = run_shim("ADD", conf, CNI_CONTAINERID=cid,
                                        CNI_NETNS=netns_path(pod), CNI_IFNAME="eth0")
            assert rc == 0, results[cid]
        gc_conf = {**conf, "cniVersion": "1.1.0",
                   "cni.dev/valid-attachments": [{"containerID": "keep1", "ifname": "eth0"}]}
        assert run_shim("GC", gc_conf) == (0, None)
        stale_veth = results["stale1"]["interfaces"][0]["name"]
        keep_veth = results["keep1"]["interfaces"][0]["name"]
        keep_ip = results["keep1"]["ips"][0]["address"].split("/")[0]
        wait_for("the stale veth pair to be deleted",
                 lambda: stale_veth not in {l["ifname"] for l in ipj(node, "link", "show")},
                 10, proc, log)
        assert [l["ifname"] for l in ipj(pods["stale1"], "link", "show")] == ["lo"]
        assert set(IPAM(state / "ipam", [BLOCK], reserved=[TUNNEL]).allocations()) == {
            "podroute.keep1.eth0"}
        routes = {(r["dst"], r["dev"]) for r in ipj(node, "route", "show", "proto", "90",
                                                    "scope", "link")}
        assert routes == {(keep_ip, keep_veth)}
        rc, out = run_shim("CHECK", {**conf, "prevResult": results["keep1"]},
                           CNI_CONTAINERID="keep1", CNI_NETNS=netns_path(pods["keep1"]),
                           CNI_IFNAME="eth0")
        assert (rc, out) == (0, None)
    finally:
        stop_agent(proc)

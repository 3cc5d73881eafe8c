"""ADD/CHECK/DEL through each rendered conflist, with the installed plugin, against a live agent.

Per config variant (tests/cniconf_variants.py: mtu auto and fixed, each encapsulation): a
throwaway node namespace whose underlay interface has MTU 1600 (so an ``auto`` pod MTU can
only come from the agent's own detection), a real ``podroute node run`` agent from the
variant's node.yaml, ``podroute cni install`` into the test's directory, and one pod attached
through the conflist the way libcni does (installed podroute plugin, then the reference
``portmap``). On a kernel without the ipip module the IPIP variants' agent keeps retrying
tunl0 (and says so in its log) while its CNI server works: the CNI path and the pod MTU it
computes are what is tested here; tunl0 itself is covered by tests/vm.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cniconf_variants import VARIANTS, expected_pod_mtu, node_yaml
from nsutil import netns_path, sh

from podroute import statusd
from podroute.cniconf import CONFLIST_NAME
from podroute.lab import libcni

pytestmark = pytest.mark.privileged
ROOT = Path(__file__).resolve().parents[2]
UNDERLAY_MTU = 1600
NODE_IP = "198.18.0.11"  # configs/node.yaml's nodeIP


def _wait(what: str, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _ipam_text(state_dir: Path) -> str:
    """Every IPAM block file of the agent, concatenated (allocations are keyed by handle,
    which names the container ID)."""
    return "".join(p.read_text() for p in sorted(state_dir.rglob("block-*.json")))


def _link(ns: str, name: str) -> dict | None:
    p = sh("ip", "-j", "link", "show", "dev", name, ns=ns, check=False)
    return json.loads(p.stdout)[0] if p.returncode == 0 else None


@pytest.mark.parametrize("mtu,encap", VARIANTS)
def test_add_check_del_through_rendered_conflist(tmp_path, make_netns, mtu, encap):
    node = make_netns("ccn")
    pod = make_netns("ccp")
    # the underlay: a veth pair kept inside the node namespace (no dummy driver here)
    sh("ip", "link", "add", "eth0", "mtu", str(UNDERLAY_MTU), "type", "veth", "peer", "name", "eth0p",
       "mtu", str(UNDERLAY_MTU), ns=node)
    sh("ip", "addr", "add", f"{NODE_IP}/24", "dev", "eth0", ns=node)
    for dev in ("eth0p", "eth0"):
        sh("ip", "link", "set", dev, "up", ns=node)
    sh("ip", "route", "add", "default", "via", "198.18.0.1", ns=node)  # proxy ARP needs a route elsewhere
    cfg = node_yaml(tmp_path, mtu, encap)
    inst = subprocess.run([sys.executable, "-m", "podroute.cli", "cni", "install", "--config", str(cfg),
                           "--bin-dir", str(tmp_path / "bin"), "--conf-dir", str(tmp_path / "net.d")],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert inst.returncode == 0, inst.stderr
    conflist = libcni.load_conflist(tmp_path / "net.d" / CONFLIST_NAME)
    log = open(tmp_path / "agent.log", "wb")
    agent = subprocess.Popen(["ip", "netns", "exec", node, sys.executable, "-m", "podroute.cli", "node", "run",
                              "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        sock = tmp_path / "run" / "agent.sock"
        _wait("the agent's sockets", lambda: agent.poll() is None and sock.exists()
              and (tmp_path / "run" / "cni.sock").exists() or agent.poll() is not None, 30)
        assert agent.poll() is None, (tmp_path / "agent.log").read_text()[-2000:]
        rt = libcni.Runtime([tmp_path / "bin", Path("/usr/lib/cni")], netns_of_host=node)
        att = libcni.Attachment("c0ffee" + encap.replace("-", "") + mtu, netns_path(pod), "eth0",
                                {"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web"})
        result = rt.add(conflist, att)
        ip = result["ips"][0]["address"].split("/")[0]
        host_if = result["interfaces"][0]["name"]
        eth0 = _link(pod, "eth0")
        assert eth0 and eth0["mtu"] == expected_pod_mtu(mtu, encap, UNDERLAY_MTU)
        assert ip in sh("ip", "route", "show", "proto", "90", ns=node).stdout
        assert sh("ping", "-c", "1", "-W", "2", NODE_IP, ns=pod, check=False).returncode == 0
        assert statusd.query(sock)["workloads"] == 1
        assert att.container_id in _ipam_text(tmp_path / "state")
        rt.check(conflist, att, result)
        rt.delete(conflist, att, result)
        rt.delete(conflist, att, result)  # DEL is idempotent (CNI spec 1.0.0, DEL)
        # nothing left: the IP is released, the host route gone, the veth pair reaped
        assert statusd.query(sock)["workloads"] == 0
        assert ip not in sh("ip", "route", "show", ns=node).stdout
        _wait(f"veth {host_if} to be reaped", lambda: _link(node, host_if) is None, 10)
        assert _link(pod, "eth0") is None
        assert att.container_id not in _ipam_text(tmp_path / "state")
    finally:
        agent.terminate()
        try:
            agent.wait(20)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait(5)
        log.close()

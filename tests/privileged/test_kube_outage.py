"""Must-show 5 on real agents and a real kube-apiserver (the set-up of
tests/privileged/test_kube_agents.py: etcd and the API server in a control netns, two nodes on
its bridge, the agents with the shipped role's credentials): a 60 s API-server outage under a
10 ms pod-to-pod ping."""
from __future__ import annotations

import re
import signal
import subprocess
import time
from ipaddress import IPv4Address

import pytest
from nsutil import sh
from test_kube_agents import NODES, BGPPeer, admin, cluster, converged, held_blocks, seed  # noqa: F401 (cluster)
from waiting import wait

from nlcore.netns import call_in_netns

pytestmark = pytest.mark.privileged
CONVERGE_S = 60

OUTAGE_S = 60


def test_a_60s_api_server_outage_under_a_10ms_pod_ping_loses_nothing(cluster, make_netns):
    """Must-show 5 on real agents: a pod on each node (wired through the installed CNI plugin,
    as a runtime does), a 10 ms ping from n1's pod to n2's; kube-apiserver stopped for 60 s.
    Not one echo is lost, both agents say the datastore is unavailable meanwhile (sessions and
    FIB kept), and both resume watching: a BGPPeer written after the outage reaches n2."""
    from podroute.lab import pods
    ctl, server, agents = cluster
    seed(ctl, server)
    for a in agents.values():
        a.start()
    ping = None
    try:
        held = wait(lambda: (h := held_blocks(ctl, server)) and set(h) == set(NODES) and h, CONVERGE_S,
                    "a block per node")
        wait(lambda: converged(agents, held), CONVERGE_S, "each FIB to route the other's block")
        ips = {}
        for name, a in agents.items():
            pods.install(a.d, a.conf)
            pod_ns = make_netns(f"kp{name}")
            result, _ = pods.add(a.d, a.ns, pods.attachment(pod_ns, f"{name}pod0".ljust(16, "0"), f"{name}p0"))
            ips[name] = (pod_ns, result["ips"][0]["address"].split("/")[0])
        wait(lambda: sh("ping", "-c", "1", "-W", "1", ips["n2"][1], ns=ips["n1"][0], check=False).returncode == 0,
             30, "n1's pod to reach n2's pod")
        ping = subprocess.Popen(["ip", "netns", "exec", ips["n1"][0], "ping", "-i", "0.01", "-q", ips["n2"][1]],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1)                                  # some echoes before the outage, for the record
        t0 = time.monotonic()
        server.stop_apiserver()
        for a in agents.values():
            wait(lambda: (a.status() or {}).get("datastore", {}).get("state") == "unavailable", 30,
                 f"{a.name} to notice the outage")
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t0)))   # the outage itself, not a wait on a condition
        for a in agents.values():
            st = a.status()
            assert [p["state"] for p in st["bgp"]["peers"]] == ["established"]
            assert f"{held[next(o for o in NODES if o != a.name)]} via" in a.routes()
        call_in_netns(ctl, server.start_apiserver, timeout=120, name="kube-ctl")
        outage_s = time.monotonic() - t0
        for a in agents.values():
            wait(lambda: (a.status() or {}).get("datastore", {}).get("state") == "connected", 60,
                 f"{a.name} to resume watching")
        probe = BGPPeer("probe", IPv4Address("198.18.0.99"), 64512, node="n2")   # never answers
        admin(ctl, server, lambda ds: ds.put_resource(probe))
        wait(lambda: "198.18.0.99" in agents["n2"].peers(), 30, "a peer written after the outage on n2")
        ping.send_signal(signal.SIGINT)
        out, _ = ping.communicate(timeout=10)
        ping = None
        sent, got = (int(x) for x in
                     re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
        print(f"\noutage {outage_s:.1f} s: {sent} echoes at 10 ms, {got} answered")
        assert sent > OUTAGE_S * 50 and got == sent, out
        assert all(a.proc.poll() is None for a in agents.values())
    except BaseException:
        for a in agents.values():
            print(f"--- {a.name} log ---\n{a.tail()}")
        raise
    finally:
        if ping is not None:
            ping.kill()
            ping.wait(5)
        if not server.running():
            call_in_netns(ctl, server.start_apiserver, timeout=120, name="kube-ctl")

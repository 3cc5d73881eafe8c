"""The speaker on a bridged fabric with several BIRD 2 peers, each in its own netns:
route reflection (RFC 4456), runtime peer changes (SIGUSR1 reload), MD5 / passive /
source address / hold time. Helpers (Bird, Driver) come from test_bgp_bird.py."""
from __future__ import annotations

import json
import re
import stat
import time
from pathlib import Path

import pytest

from nsutil import sh
from test_bgp_bird import Bird, Driver

pytestmark = pytest.mark.privileged

RR, A_IP, B_IP = "198.18.0.10", "198.18.0.11", "198.18.0.12"
CLUSTER = "198.18.0.100"
A_NET, B_NET, RR_NET = "198.19.11.0/26", "198.19.12.0/26", "198.19.10.0/26"


def bird_conf(rid: str, peers: list[tuple[str, str, str]], statics: list[str],
              extra: str = "") -> str:
    """BIRD config: static blackholes (protocol s1) and one iBGP protocol per (name, local,
    neighbor); ``extra`` lines go into every bgp protocol."""
    out = [f"router id {rid};", "protocol device {}", "protocol static s1 {", "  ipv4;"]
    out += [f"  route {p} blackhole;" for p in statics] + ["}"]
    for name, local, nb in peers:
        out += [f"protocol bgp {name} {{", f"  local {local} as 64512;",
                f"  neighbor {nb} as 64512;", "  hold time 9;", "  connect retry time 1;",
                "  error wait time 1, 2;", "  graceful restart on;",
                "  graceful restart time 3;", "  direct;", extra,
                "  ipv4 { import all; export all; next hop self; };", "}"]
    return "\n".join(out) + "\n"


@pytest.fixture
def fabric(make_netns):
    """``add(tag, *ips)`` → a netns whose eth0 (on a shared bridge) has ``ips`` (/24)."""
    br = make_netns("bgpbr")
    sh("ip", "link", "add", "br0", "type", "bridge", ns=br)
    sh("ip", "link", "set", "br0", "up", ns=br)
    count = [0]

    def add(tag: str, *ips: str) -> str:
        ns = make_netns(tag)
        count[0] += 1
        port = f"p{count[0]}"
        sh("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns, ns=br)
        sh("ip", "link", "set", port, "master", "br0", "up", ns=br)
        for ip in ips:
            sh("ip", "addr", "add", f"{ip}/24", "dev", "eth0", ns=ns)
        sh("ip", "link", "set", "eth0", "up", ns=ns)
        return ns

    return add


@pytest.fixture
def procs():
    started: list = []
    yield started
    for p in reversed(started):
        p.close() if isinstance(p, Driver) else p.kill()


def speaker_cfg(tmp: Path, ip: str, peers: list[dict], **kw) -> dict:
    cfg = {"router_id": ip, "local_as": 64512, "local_address": ip, "peers": peers,
           "announce": [], "import_pools": ["198.19.0.0/16"], "own_blocks": [],
           "node_ip": ip, "state_dir": str(tmp / "state"), "graceful_restart_time": 3}
    cfg.update(kw)
    return cfg


def peer_of(st: dict, ip: str) -> dict:
    return next(p for p in st["peers"] if p["address"] == ip)


def wait(pred, timeout: float, what: str, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def route_block(bird: Bird, prefix: str) -> str:
    return bird.birdc("show", "route", prefix, "all")


def wait_route(bird: Bird, prefix: str, needle: str, timeout: float, what: str) -> str:
    """``show route <prefix> all`` once it contains ``needle``."""
    return wait(lambda: (lambda r: r if needle in r else None)(route_block(bird, prefix)),
                timeout, what)


def test_podroute_route_reflector(fabric, procs, tmp_path):
    """A podroute speaker reflects between two BIRD clients: B learns A's block with next
    hop A, ORIGINATOR_ID A and CLUSTER_LIST [cluster]; a withdrawal and a client's
    NOTIFICATION-down are reflected as withdrawals."""
    ns_rr, ns_a, ns_b = fabric("rr", RR), fabric("rra", A_IP), fabric("rrb", B_IP)
    a = Bird(ns_a, tmp_path / "a", bird_conf(A_IP, [("up1", A_IP, RR)], [A_NET]))
    b = Bird(ns_b, tmp_path / "b", bird_conf(B_IP, [("up1", B_IP, RR)], [B_NET]))
    for bird in (a, b):
        bird.start()
        procs.append(bird)
    peers = [{"address": A_IP, "asn": 64512, "hold_time": 9, "rr_client": True},
             {"address": B_IP, "asn": 64512, "hold_time": 9, "rr_client": True}]
    d = Driver(ns_rr, speaker_cfg(tmp_path / "s", RR, peers, announce=[RR_NET],
                                  own_blocks=[RR_NET], route_reflector_cluster_id=CLUSTER),
               tmp_path / "s")
    procs.append(d)
    d.wait_for(lambda m: set(m.get("routes") or ()) == {A_NET, B_NET}, 30, "both client blocks")

    out = wait_route(b, A_NET, "BGP.cluster_list", 20, "B learns A's block")
    assert re.search(rf"via {re.escape(A_IP)} on eth0", out), out
    assert re.search(rf"BGP.originator_id:\s+{re.escape(A_IP)}", out), out
    assert re.search(rf"BGP.cluster_list:\s+{re.escape(CLUSTER)}\s*$", out, re.M), out
    assert re.search(rf"BGP.next_hop:\s+{re.escape(A_IP)}", out), out
    out = wait_route(a, B_NET, "BGP.cluster_list", 20, "A learns B's block")
    assert re.search(rf"BGP.originator_id:\s+{re.escape(B_IP)}", out), out
    own = wait_route(b, RR_NET, RR_NET, 20, "RR's own block")
    assert "BGP.originator_id" not in own and f"via {RR}" in own
    st = d.status()
    assert peer_of(st, B_IP)["reflected_routes"] == 1 and peer_of(st, A_IP)["reflected_routes"] == 1
    assert "BGP.cluster_list" not in route_block(a, A_NET)   # not reflected back to A

    # A withdraws its block: B loses it.
    a.birdc("disable", "s1")
    wait(lambda: A_NET not in route_block(b, A_NET), 15, "withdrawal reflected to B")
    a.birdc("enable", "s1")
    wait(lambda: "BGP.cluster_list" in route_block(b, A_NET), 15, "A's block back at B")
    # A's session ends with a NOTIFICATION (Cease): no graceful restart, B loses it at once.
    a.birdc("disable", "up1")
    wait(lambda: A_NET not in route_block(b, A_NET), 10, "client down reflected to B")
    assert peer_of(d.status(), B_IP)["reflected_routes"] == 0


def _bird_since(bird: Bird, proto: str) -> str:
    line = next((ln for ln in bird.birdc("show", "protocols", proto).splitlines()
                 if ln.startswith(proto)), "")
    return " ".join(line.split()[3:6])


def test_set_peers_reload_keeps_unchanged_sessions(fabric, procs, tmp_path):
    """set_peers() adds then removes neighbor B through an ExaBGP reload (SIGUSR1) while
    the session to A stays up: same uptime on both sides, same ExaBGP pid."""
    spk = "198.18.0.20"
    ns_s, ns_a, ns_b = fabric("sp", spk), fabric("spa", A_IP), fabric("spb", B_IP)
    a = Bird(ns_a, tmp_path / "a", bird_conf(A_IP, [("nb", A_IP, spk)], [A_NET]))
    b = Bird(ns_b, tmp_path / "b", bird_conf(B_IP, [("nb", B_IP, spk)], [B_NET]))
    for bird in (a, b):
        bird.start()
        procs.append(bird)
    pa = {"address": A_IP, "asn": 64512, "hold_time": 9}
    pb = {"address": B_IP, "asn": 64512, "hold_time": 9}
    own = "198.19.20.0/26"
    d = Driver(ns_s, speaker_cfg(tmp_path / "s", spk, [pa], announce=[own], own_blocks=[own]),
               tmp_path / "s")
    procs.append(d)
    d.wait_for(lambda m: set(m.get("routes") or ()) == {A_NET}, 30, "A's block")
    st0 = d.poll_status(lambda s: peer_of(s, A_IP)["state"] == "established", 10, "A up")
    wait(lambda: own in route_block(a, own), 15, "A learns our block")
    since_a, bird_since_a = peer_of(st0, A_IP)["since"], _bird_since(a, "nb")
    time.sleep(1.1)   # BIRD's since has 1 s resolution

    d.send("peers " + json.dumps([pa, pb]))
    d.wait_for(lambda m: set(m.get("routes") or ()) == {A_NET, B_NET}, 30, "B's block")
    wait(lambda: own in route_block(b, own), 15, "B learns our block (per-neighbor replay)")
    st1 = d.status()
    assert peer_of(st1, B_IP)["state"] == "established"
    assert peer_of(st1, A_IP)["since"] == since_a and _bird_since(a, "nb") == bird_since_a
    assert st1["exabgp_pid"] == st0["exabgp_pid"] and st1["exabgp_restarts"] == 0

    d.send("peers " + json.dumps([pa]))
    d.wait_for(lambda m: set(m.get("routes") or ()) == {A_NET}, 15, "B's routes flushed")
    wait(lambda: "Established" not in b.birdc("show", "protocols", "nb"), 15, "B's session down")
    st2 = d.status()
    assert [p["address"] for p in st2["peers"]] == [A_IP]
    assert peer_of(st2, A_IP)["since"] == since_a and _bird_since(a, "nb") == bird_since_a
    assert st2["exabgp_pid"] == st0["exabgp_pid"]
    assert own in route_block(a, own)


PASSWORD = "Right-Pa55w0rd"
WRONG = "Wr0ng-Pa55w0rd"


def test_md5_passive_source_address_hold_time(fabric, procs, tmp_path):
    """TCP MD5 (RFC 2385): a wrong password never reaches Established, the right one does;
    neither appears in logs, status or ExaBGP's output; the config file is 0600. Then the
    session as passive (BIRD dials us), from a secondary source address, hold time 6."""
    spk, spk2 = "198.18.0.30", "198.18.0.31"
    ns_s, ns_a = fabric("md", spk, spk2), fabric("mda", A_IP)
    conf = bird_conf(A_IP, [("nb", A_IP, spk), ("nb2", A_IP, spk2)], [A_NET],
                     extra=f'  password "{PASSWORD}";')
    a = Bird(ns_a, tmp_path / "a", conf)
    a.start()
    procs.append(a)
    peer = {"address": A_IP, "asn": 64512, "hold_time": 9, "password": WRONG}
    d = Driver(ns_s, speaker_cfg(tmp_path / "s", spk, [peer]), tmp_path / "s",
               env={"BGP_LOG_LEVEL": "DEBUG"})
    procs.append(d)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 8:
        assert peer_of(d.status(), A_IP)["state"] != "established"
        time.sleep(0.5)
    assert "Established" not in a.birdc("show", "protocols", "nb")

    d.send("peers " + json.dumps([{**peer, "password": PASSWORD, "hold_time": 6}]))
    d.poll_status(lambda s: peer_of(s, A_IP)["state"] == "established", 20, "right password")
    if set(d.routes) != {A_NET}:   # status polling above may have consumed the update
        d.wait_for(lambda m: set(m.get("routes") or ()) == {A_NET}, 15, "A's block")
    info = a.birdc("show", "protocols", "all", "nb")
    assert re.search(r"Hold timer:\s+[\d.]+/6\b", info), info
    assert re.search(r"Keepalive timer:\s+[\d.]+/2\b", info), info

    # Passive: only BIRD dials, so on our side the session's local port is 179.
    d.send("peers " + json.dumps([{**peer, "password": PASSWORD, "passive": True}]))
    time.sleep(1)
    d.poll_status(lambda s: peer_of(s, A_IP)["state"] == "established", 30, "passive up")
    ss = sh("ss", "-tnH", "state", "established", ns=ns_s).stdout
    assert re.search(rf"{re.escape(spk)}:179\s+{re.escape(A_IP)}:\d+", ss), ss

    # Source address: BIRD's protocol n2 only accepts 198.18.0.31.
    d.send("peers " + json.dumps([{**peer, "password": PASSWORD, "local_address": spk2}]))
    wait(lambda: "Established" in a.birdc("show", "protocols", "nb2"), 30, "session from .31")
    ss = sh("ss", "-tnH", "state", "established", ns=ns_s).stdout
    assert re.search(rf"{re.escape(spk2)}:\d+\s+{re.escape(A_IP)}:179", ss), ss

    st = d.status()
    text = json.dumps(st)
    d.close()
    logs = d.log_path.read_text()
    conf_file = tmp_path / "s" / "state" / "exabgp.conf"
    assert PASSWORD in conf_file.read_text()          # the check below is meaningful
    assert stat.S_IMODE(conf_file.stat().st_mode) == 0o600
    assert "exabgp:" in logs and "md5-password" in logs  # ExaBGP output and config logged
    for secret in (PASSWORD, WRONG):
        assert secret not in logs and secret not in text

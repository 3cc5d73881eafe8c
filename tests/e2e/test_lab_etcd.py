"""End to end on a real etcd (issue 17, items 1 and 3-6): ``podroute lab up --datastore etcd``
with real agents, real BIRD for the reflector topology, Debian's etcd in a lab namespace.

- item 1: a 5-node reflector lab passes; every node claimed its own block; etcdctl shows
  nodes, pools and blocks (own lab).
- items 3-6 share one 3-node mesh lab (``mesh`` fixture), in file order: growth past one /26
  block, bad data written with etcdctl, a node leaving by lease expiry, a 60 s etcd outage
  under a 10 ms ping with a node added meanwhile.

Every wait is bounded (tests/waiting.py); the one sleep is the outage's length itself.
"""
from __future__ import annotations

import base64
import ipaddress
import json
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from podroute.datastore.model import PREFIXES, BGPConfiguration, IPAMBlock, IPPool, Node, block_key
from podroute.lab import agents, etcd, pods, probes
from podroute.lab.model import POOL, Lab
from labutil import lab as lab_up, podroute
from waiting import wait

pytestmark = pytest.mark.e2e

OUTAGE_S = 60.0
LEAVE_TTL_S = 2          # the leaving node's leaseTTL
GRACE_S = 2              # every node's ipam.releaseGracePeriod in the mesh lab
GROWTH_PODS = 100


def kv(lab: Lab) -> dict[str, str]:
    """Every key under /podroute/ and its value, read with etcdctl inside the lab's etcd namespace."""
    out = json.loads(etcd.etcdctl(lab, "get", "--prefix", etcd.PREFIX, "-w", "json").stdout)
    return {base64.b64decode(k["key"]).decode(): base64.b64decode(k.get("value", "")).decode()
            for k in out.get("kvs", [])}


def collection(keys: dict[str, str], kind: type) -> dict[str, str]:
    """The keys of one resource kind (its collection, podroute.datastore.model.PREFIXES)."""
    return {k: v for k, v in keys.items() if k.startswith(etcd.PREFIX + PREFIXES[kind])}


def block_etcd_key(cidr: str) -> str:
    return etcd.PREFIX + block_key(ipaddress.IPv4Network(cidr))


def status(node) -> dict[str, Any]:
    st = agents.status(node)
    assert st is not None, f"{node.name}'s agent does not answer"
    return st


def sessions(lab: Lab) -> dict[tuple[str, str], tuple[str, float]]:
    """``{(node, peer address): (state, since)}`` over every node."""
    return {(n.name, p["address"]): (p["state"], p["since"]) for n in lab.nodes for p in status(n)["bgp"]["peers"]}


def routers_up(lab: Lab) -> dict[str, bool]:
    from podroute.lab import routers
    return routers.sessions(lab)


def fibs(lab: Lab) -> dict[str, set[str]]:
    return {n.name: set(probes.fib_routes(n.ns)) for n in lab.nodes}


# --- item 1 --------------------------------------------------------------------------------

def test_five_node_reflector_lab_on_etcd(tmp_path: Path) -> None:
    with lab_up(tmp_path, "--nodes", "5", "--pods", "1", "--datastore", "etcd") as (name, state, rep):
        lab = Lab.load(state / name)
        assert lab is not None and rep["passed"] is True and rep["datastore"] == "etcd"
        blocks = [n["block"] for n in rep["nodes"]]
        assert len(set(blocks)) == 5 and all(
            ipaddress.IPv4Network(b).subnet_of(POOL) and ipaddress.IPv4Network(b).prefixlen == 26 for b in blocks)
        for n in lab.nodes:  # claimed by the node itself: its config names no block
            doc = yaml.safe_load((Path(n.dir) / "node.yaml").read_text())
            assert "podCIDRs" not in doc and doc["datastore"]["type"] == "etcd"
            assert probes.own_blocks(n.ns) == [n.block]
        assert rep["router_sessions"] == {f"rr:n{i}": True for i in range(1, 6)}
        assert all(p["state"] == "established" for peers in rep["sessions"].values() for p in peers)
        assert all(m["ok"] for m in rep["matrix"])
        keys = kv(lab)
        nodes = collection(keys, Node)
        assert sorted(k.rsplit("/", 1)[1] for k in nodes) == [f"{name}-n{i}" for i in range(1, 6)]
        assert len(collection(keys, IPPool)) == 1
        stored_blocks = collection(keys, IPAMBlock)
        assert sorted(stored_blocks) == sorted(block_etcd_key(b) for b in blocks)
        for n in lab.nodes:  # each stored block names the node that holds it
            assert lab.node_name(n) in stored_blocks[block_etcd_key(n.block)]
        st = podroute("lab", "status", "--name", name, "--state-dir", str(state))
        assert st.returncode == 0 and "datastore: etcd at http://198.18.0.3:2379" in st.stdout, st.stdout
        etcd_pid = lab.etcd["pid"]
        assert etcd_pid and Path(f"/proc/{etcd_pid}").exists()
        # a node joins at run time: BIRD takes the new neighbour, the node claims a sixth block
        add = podroute("lab", "node", "add", "--lab", name, "--state-dir", str(state), timeout=180)
        assert add.returncode == 0, add.stdout + add.stderr
        lab = Lab.load(state / name)
        n6 = lab.nodes[-1]
        assert n6.name == "n6" and n6.block and n6.block not in blocks
        assert "reached all 5 other FIBs" in add.stdout and "reach a pod on each of the 5" in add.stdout, add.stdout
        wait(lambda: routers_up(lab) == {f"rr:n{i}": True for i in range(1, 7)}, 15, "BIRD's session to n6")
        # ... and leaves: drained, its registration deleted, BIRD's neighbour gone, its routes withdrawn
        rm = podroute("lab", "node", "remove", "n6", "--lab", name, "--state-dir", str(state), timeout=120)
        assert rm.returncode == 0, rm.stdout + rm.stderr
        lab = Lab.load(state / name)
        assert etcd.PREFIX + PREFIXES[Node] + f"{name}-n6" not in kv(lab)
        wait(lambda: set(routers_up(lab)) == {f"rr:n{i}" for i in range(1, 6)}, 10, "BIRD to drop its n6 protocol")
        for n in lab.nodes:
            wait(lambda n=n: not probes.fib_has(n.ns, n6.block), 10, f"{n.name} to drop n6's block")
        assert not Path(f"/var/run/netns/{n6.ns}").exists()
    assert not etcd.running(lab), "lab down left etcd running"


# --- items 3-6: one mesh lab ---------------------------------------------------------------

@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    name = "e" + secrets.token_hex(3)
    state = tmp_path_factory.mktemp("etcdlab")
    up = podroute("lab", "up", "--name", name, "--state-dir", str(state), "--keep", "--nodes", "3", "--pods", "1",
                  "--datastore", "etcd", "--topology", "mesh", "--release-grace", str(GRACE_S))
    try:
        assert up.returncode == 0, f"lab up failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
        lab = Lab.load(state / name)
        assert lab is not None
        yield lab
    finally:
        down = podroute("lab", "down", "--name", name, "--state-dir", str(state))
        assert down.returncode == 0, down.stdout + down.stderr


def reload(lab: Lab) -> Lab:
    fresh = Lab.load(lab.path)
    assert fresh is not None
    return fresh


def test_growth_claims_a_second_block(mesh: Lab) -> None:
    lab = reload(mesh)
    n1, n2 = lab.nodes[0], lab.nodes[1]
    first = n1.block
    have = sum(1 for p in lab.pods if p.node == n1.name)
    for j in range(have + 1, GROWTH_PODS + 1):
        pods.wire(lab, n1, j, retry_s=10)   # code 11 while n1 claims its second block: retried, as kubelet does
    mine = [p for p in lab.pods if p.node == n1.name]
    assert len(mine) == GROWTH_PODS
    blocks = probes.own_blocks(n1.ns)
    assert len(blocks) == 2 and first in blocks, blocks
    second = next(b for b in blocks if b != first)
    nets = [ipaddress.IPv4Network(b) for b in blocks]
    assert all(any(ipaddress.IPv4Address(p.ip) in net for net in nets) for p in mine)
    in_second = [p for p in mine if ipaddress.IPv4Address(p.ip) in ipaddress.IPv4Network(second)]
    in_first = [p for p in mine if ipaddress.IPv4Address(p.ip) in ipaddress.IPv4Network(first)]
    assert in_second and in_first
    # stored as n1's in etcd, announced, and in every other node's FIB via n1
    value = kv(lab)[block_etcd_key(second)]
    assert lab.node_name(n1) in value
    for other in lab.nodes[1:]:
        wait(lambda o=other: probes.fib_has(o.ns, second), 15,
                   f"{second} in {other.name}'s FIB")
        assert f"via {n1.ip}" in " ".join(r for r in probes.fib_routes(other.ns) if r.startswith(second))
    print(f"growth: {len(mine)} pods on {n1.name}: {len(in_first)} in {first}, {len(in_second)} in {second}")
    src = next(p for p in lab.pods if p.node == n2.name)
    for dst in (in_first[0], in_second[-1]):
        assert probes.ping(src, dst), f"{src.name} cannot reach {dst.name} ({dst.ip})"


def _replace(obj: Any, old: str, new: str) -> Any:
    if isinstance(obj, dict):
        return {k: _replace(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_replace(v, old, new) for v in obj]
    return new if obj == old else obj


def test_bad_data_is_rejected_and_the_last_good_state_stays(mesh: Lab) -> None:
    lab = reload(mesh)
    keys = kv(lab)
    before_fib, before_sessions = fibs(lab), sessions(lab)
    assert all(state == "established" for state, _ in before_sessions.values())
    cfg_key = next(iter(collection(keys, BGPConfiguration)))
    pool_key, pool_value = next(iter(collection(keys, IPPool).items()))
    n3_block = lab.nodes[2].block
    outside, overlap = "10.99.0.0/26", "198.19.0.0/17"
    outside_key, overlap_key = block_etcd_key(outside), etcd.PREFIX + PREFIXES[IPPool] + "overlap"
    bad = {
        cfg_key: "{not json",                                                          # a malformed value
        outside_key: json.dumps(_replace(json.loads(keys[block_etcd_key(n3_block)]),   # a block outside every
                                         n3_block, outside)),                          # pool, affine to n3
        overlap_key: json.dumps(_replace(_replace(json.loads(pool_value), str(POOL), overlap),  # a pool over
                                         pool_key.rsplit("/", 1)[1], "overlap")),             # the lab's
    }
    assert outside in bad[outside_key], "the block value names no CIDR"
    assert overlap in bad[overlap_key], "the pool value names no CIDR"
    logs = {n.name: (Path(n.dir) / "agent.log").stat().st_size for n in lab.nodes}
    try:
        for k, v in bad.items():
            etcd.etcdctl(lab, "put", k, v)
        for n in lab.nodes:
            def logged(n=n) -> list[str]:
                with open(Path(n.dir) / "agent.log", errors="replace") as f:
                    f.seek(logs[n.name])
                    text = f.read()
                return [k for k in bad if not any(k[len(etcd.PREFIX):] in line and "level=error" in line
                                                  for line in text.splitlines())]
            wait(lambda n=n: not logged(n), 15,
                       f"{n.name} to log an error naming each bad key (missing: {logged(n)})")
        with open(Path(lab.nodes[0].dir) / "agent.log", errors="replace") as f:
            f.seek(logs[lab.nodes[0].name])
            print("bad data:", *[line for line in f.read().splitlines() if "level=error" in line][:3], sep="\n  ")
        time.sleep(0.5)  # not a synchronisation: a window in which a wrongly accepted value would act
        assert fibs(lab) == before_fib
        assert sessions(lab) == before_sessions
        assert not any(probes.fib_has(n.ns, outside) for n in lab.nodes)
    finally:
        etcd.etcdctl(lab, "put", cfg_key, keys[cfg_key])
        for k in bad:
            if k != cfg_key:
                etcd.etcdctl(lab, "del", k)
    assert sessions(lab) == before_sessions


def test_leave_by_lease_expiry(mesh: Lab) -> None:
    lab = reload(mesh)
    add = podroute("lab", "node", "add", "--lab", lab.name, "--state-dir", str(lab.path.parent), "--name", "gone",
                   "--lease-ttl", str(LEAVE_TTL_S), timeout=180)
    assert add.returncode == 0, add.stdout + add.stderr
    assert "reached all 3 other FIBs" in add.stdout, add.stdout
    lab = reload(lab)
    gone = next(n for n in lab.nodes if n.name == "gone")
    others = [n for n in lab.nodes if n is not gone]
    block = gone.block
    node_key = etcd.PREFIX + PREFIXES[Node] + lab.node_name(gone)
    gone_block_key = block_etcd_key(block)
    keys = kv(lab)
    assert node_key in keys and gone_block_key in keys
    for n in others:
        assert any(p["address"] == gone.ip and p["state"] == "established" for p in status(n)["bgp"]["peers"])
        assert probes.fib_has(n.ns, block)
    t0 = time.monotonic()
    rm = podroute("lab", "node", "remove", "gone", "--expire", "--lab", lab.name, "--state-dir", str(lab.path.parent))
    assert rm.returncode == 0, rm.stdout + rm.stderr
    for n in others:  # every survivor drops its session and its route to the departed node
        wait(lambda n=n: not any(p["address"] == gone.ip for p in status(n)["bgp"]["peers"]),
                   LEAVE_TTL_S + 15, f"{n.name} to drop its session to {gone.ip}")
        wait(lambda n=n: not probes.fib_has(n.ns, block), 10,
                   f"{n.name} to remove its route to {block}")
    t_dropped = time.monotonic() - t0
    wait(lambda: node_key not in kv(lab), 5, "the registration to lapse")
    wait(lambda: gone_block_key not in kv(lab), GRACE_S + 20, f"{block} to return to the pool")
    t_released = time.monotonic() - t0
    print(f"leave: sessions and routes gone {t_dropped:.1f} s, block released {t_released:.1f} s after SIGKILL")
    assert t_released >= LEAVE_TTL_S  # released by lease expiry + grace, not earlier


def test_etcd_outage_keeps_traffic_and_sessions_and_a_late_node_joins(mesh: Lab) -> None:
    lab = reload(mesh)
    src = next(p for p in lab.pods if p.node == lab.nodes[0].name)
    dst = next(p for p in lab.pods if p.node == lab.nodes[1].name)
    before = sessions(lab)
    assert all(state == "established" for state, _ in before.values())
    ping = subprocess.Popen(["ip", "netns", "exec", src.ns, "ping", "-i", "0.01", "-q", "-W", "1", str(dst.ip)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    late = None
    try:
        time.sleep(0.5)  # ping's first replies, so that loss at the start is not hidden
        etcd.stop(lab)
        t_stop = time.monotonic()
        add = podroute("lab", "node", "add", "--lab", lab.name, "--state-dir", str(lab.path.parent),
                       "--name", "late", "--no-wait", timeout=120)
        assert add.returncode == 0, add.stdout + add.stderr
        wait(lambda: not (status(lab.nodes[0]).get("datastore") or {}).get("available", True), 30,
                   "n1's status to say the datastore is unavailable")
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t_stop)))  # the outage itself
        lab = reload(lab)
        etcd.start(lab)
        t_back = time.monotonic()
        late = next(n for n in lab.nodes if n.name == "late")
        wait(lambda: agents.established(late) and bool(probes.own_blocks(late.ns)), 60,
                   "the node added during the outage to register, claim a block and peer")
        probes.wait_claimed(late)
        for n in lab.nodes:
            if n is not late:
                wait(lambda n=n: probes.fib_has(n.ns, late.block), 30,
                           f"{late.block} in {n.name}'s FIB")
        print(f"outage: etcd down {t_back - t_stop:.1f} s; {late.name} (added meanwhile) had its block "
              f"{late.block} in every FIB {time.monotonic() - t_back:.1f} s after etcd was back")
        wait(lambda: all((status(n).get("datastore") or {}).get("available") for n in lab.nodes
                               if n is not late), 60, "every agent to see etcd again")
    finally:
        ping.send_signal(signal.SIGINT)
        out, _ = ping.communicate(timeout=10)
    stats = next(line for line in out.splitlines() if "packets transmitted" in line)
    sent, received = int(stats.split()[0]), int(stats.split()[3])
    print(f"outage: ping {src.ip} -> {dst.ip} every 10 ms: {stats}")
    assert sent > OUTAGE_S * 50 and received == sent, f"ping {src.ip} -> {dst.ip} across the outage: {stats}"
    after = sessions(lab)
    for key, (state, since) in before.items():  # no session went down and came back
        assert after[key] == (state, since), f"session {key} flapped: {before[key]} -> {after[key]}"

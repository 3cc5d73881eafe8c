import asyncio
from ipaddress import IPv4Address, IPv4Network

import pytest

from bgp.policy import REASONS, ImportPolicy
from podroute import statusd

SNAP = {
    "node": {"name": "n1", "ip": "198.18.0.11", "asn": 64512, "router_id": "198.18.0.11"},
    "started": 1000.0,
    "bgp": {"peers": [{"address": "198.18.0.1", "asn": 64512, "type": "iBGP", "state": "established",
                       "since": 1030.0, "prefixes_received": 4, "prefixes_accepted": 2, "prefixes_rejected": 2,
                       "info": ""}],
            "rejections": {"outside_pool": 1, "default": 1},
            "exabgp": {"pid": 42, "restarts": 1, "last_exit": "exit code 1"},
            "routes": [{"prefix": "198.19.2.0/26", "next_hops": ["198.18.0.12"], "peers": ["198.18.0.1"]}]},
    "fib": {"protocol": 90, "desired_by_owner": {"bgp": 2, "blocks": 1, "workloads": 2, "total": 5},
            "last_apply": {"added": 5, "replaced": 0, "deleted": 0, "errors": [], "duration_s": 0.002, "at": 1040.0},
            "resyncs": 3, "monitor_triggers": 1},
    "workloads": 2,
    "task_failures": [],
}


def test_render_shows_peer_table_and_routes():
    text = statusd.render(SNAP, now=1060.0)
    assert "running on n1 (198.18.0.11), AS 64512" in text
    row = next(line for line in text.splitlines() if "198.18.0.1 " in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:8] == ["198.18.0.1", "64512", "iBGP", "established", "30s", "4", "2", "2"]
    assert "ExaBGP: pid 42, restarts 1, last exit: exit code 1" in text
    assert "Rejected routes by reason: default=1, outside_pool=1" in text
    assert "198.19.2.0/26" in text and "198.18.0.12" in text
    assert "monitor triggers 1" in text


def test_snapshot_uses_reason_names_the_speaker_emits():
    """The rejection reasons in SNAP are the ones bgp/policy.py returns for a default route
    and a route outside the pools (what the speaker counts and the agent sums), so the
    rendering is tested on names an agent can show."""
    policy = ImportPolicy((IPv4Network("198.19.0.0/16"),), (), IPv4Address("198.18.0.11"))
    hop = IPv4Address("198.18.0.1")
    emitted = {policy.check(IPv4Network("0.0.0.0/0"), hop),
               policy.check(IPv4Network("203.0.113.0/24"), hop)}
    assert set(SNAP["bgp"]["rejections"]) == emitted and emitted <= set(REASONS)


async def test_serve_and_query_roundtrip(tmp_path):
    sock = tmp_path / "agent.sock"
    server = asyncio.create_task(statusd.serve(sock, lambda: SNAP))
    for _ in range(100):
        if sock.exists():
            break
        await asyncio.sleep(0.01)
    assert oct(sock.stat().st_mode & 0o777) == "0o600"
    got = await asyncio.to_thread(statusd.query, sock)
    assert got["bgp"]["peers"][0]["address"] == "198.18.0.1"
    server.cancel()


def test_query_unreachable_names_socket(tmp_path):
    with pytest.raises(statusd.AgentUnreachable, match=str(tmp_path / "nope.sock")):
        statusd.query(tmp_path / "nope.sock")

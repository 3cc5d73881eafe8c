"""bgp.api: parsing recorded ExaBGP 5.0.15 JSON lines, command text, ack matching."""
from __future__ import annotations

import asyncio
from ipaddress import IPv4Address as A, IPv4Network as N
from pathlib import Path

import pytest

from bgp import api
from bgp.errors import BGPError, CommandRejected, ExaBGPExited

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "exabgp"
BIRD = A("198.18.0.1")


def events(name: str) -> list:
    return [api.parse_line(line) for line in (FIX / name).read_text().splitlines()]


def test_session_up_sequence():
    evs = events("session_up.jsonl")
    assert [type(e).__name__ for e in evs] == [
        "StateEvent", "OpenEvent", "StateEvent", "UpdateEvent", "EorEvent"]
    assert evs[0] == api.StateEvent(BIRD, "connected", None)
    assert evs[1].asn == 64512 and evs[1].hold_time == 9 and evs[1].router_id == BIRD
    assert "graceful restart" in evs[1].capabilities
    assert evs[2].state == "up"
    upd = evs[3]
    assert upd.peer == BIRD and upd.withdrawn == []
    assert {str(p) for p, _, _ in upd.announced} == {
        "0.0.0.0/0", "198.19.1.0/26", "198.19.2.0/26", "203.0.113.0/24"}
    for _, nh, attrs in upd.announced:
        assert nh == BIRD and attrs.next_hop == BIRD
        assert attrs.local_pref == 100 and attrs.origin == 0 and attrs.as_path == ()
    assert evs[4] == api.EorEvent(BIRD, "ipv4", "unicast")


def test_announce_then_withdraw():
    ann, wd = events("announce_withdraw.jsonl")
    assert [(p, nh) for p, nh, _ in ann.announced] == [(N("198.19.4.0/26"), BIRD)]
    assert wd.announced == [] and wd.withdrawn == [N("198.19.4.0/26")]


def test_peer_down_notification_and_reason():
    notif, down, connected, down2 = events("peer_down.jsonl")
    assert notif == api.NotificationEvent(BIRD, 6, 2, "")
    assert down == api.StateEvent(BIRD, "down", "notification received (6,2)")
    assert connected.state == "connected"
    assert down2.reason == "closing connection"


def test_exabgp_shutdown_line():
    down, shut = events("exabgp_shutdown.jsonl")
    assert down.state == "down" and "shutting down" in down.reason
    assert shut.shutdown and shut.peer is None


def test_acks_and_noise():
    assert api.parse_line("done\n") == "done"
    assert api.parse_line(b"error") == "error"
    assert api.parse_line("") is None
    assert api.parse_line('{"exabgp": "5.0.0", "type": "keepalive", "neighbor": {}}') is None
    with pytest.raises(BGPError):
        api.parse_line("{not json")


def test_reflected_route_attributes_and_as_path():
    line = ('{"exabgp": "5.0.0", "type": "update", "neighbor": {"address": {"local": '
            '"198.18.0.2", "peer": "198.18.0.9"}, "message": {"update": {"attribute": '
            '{"origin": "incomplete", "as-path": {"0": {"element": "as-sequence", "value": '
            '[65001, 65002]}}, "med": 5, "local-preference": 200, "originator-id": '
            '"198.18.0.7", "cluster-list": ["198.18.0.9"], "community": [[65000, 1]]}, '
            '"announce": {"ipv4 unicast": {"198.18.0.7": [{"nlri": "198.19.9.0/26"}], '
            '"198.18.0.8": [{"nlri": "198.19.9.0/26"}]}}}}}}')
    ev = api.parse_line(line)
    assert len(ev.announced) == 1  # duplicate prefix under two next hops (FACTS pitfall 5)
    prefix, nh, attrs = ev.announced[0]
    assert attrs.as_path == (65001, 65002) and attrs.origin == 2 and attrs.med == 5
    assert attrs.local_pref == 200 and attrs.originator_id == A("198.18.0.7")
    assert attrs.cluster_list == (A("198.18.0.9"),) and attrs.communities == ("65000:1",)


def test_command_text():
    p = N("198.19.3.0/26")
    assert api.cmd_announce(p, neighbor=BIRD) == \
        "neighbor 198.18.0.1 announce route 198.19.3.0/26 next-hop self"
    assert api.cmd_announce(p, next_hop=A("198.18.0.2")) == \
        "announce route 198.19.3.0/26 next-hop 198.18.0.2"
    assert api.cmd_withdraw(p) == "withdraw route 198.19.3.0/26"
    assert api.cmd_eor(BIRD) == "neighbor 198.18.0.1 announce eor ipv4 unicast"
    assert api.cmd_eor() == "announce eor ipv4 unicast"
    lines = api.cmds_bulk_announce([N(f"198.19.{i}.0/24") for i in range(5)], chunk=2)
    assert lines == ["announce attributes next-hop self nlri 198.19.0.0/24 198.19.1.0/24",
                     "announce attributes next-hop self nlri 198.19.2.0/24 198.19.3.0/24",
                     "announce attributes next-hop self nlri 198.19.4.0/24"]
    assert api.cmds_bulk_withdraw([p]) == ["withdraw attributes nlri 198.19.3.0/26"]


class FakeWriter:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.on_write = None
        self.closed = False

    def write(self, data: bytes) -> None:
        line = data.decode().rstrip("\n")
        self.lines.append(line)
        if self.on_write:
            self.on_write(line)

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def make_session(replies: dict[str, list[str]], timeout: float = 2.0):
    """A session whose fake ExaBGP answers each command with the lines in ``replies``."""
    reader = asyncio.StreamReader()
    writer = FakeWriter()
    got: list = []
    writer.on_write = lambda line: [reader.feed_data((r + "\n").encode())
                                    for r in replies.get(line, ["done"])]
    s = api.ApiSession(reader, writer, got.append, ack_timeout=timeout)
    return s, reader, writer, got


async def test_ack_matching_with_interleaved_events():
    up = (FIX / "session_up.jsonl").read_text().splitlines()
    s, reader, writer, got = make_session({
        "announce route 198.19.3.0/26 next-hop self": [up[2], up[3], "done"],
        "bogus": [up[4], "error"],
    })
    task = asyncio.create_task(s.read_loop())
    await s.command("announce route 198.19.3.0/26 next-hop self")
    with pytest.raises(CommandRejected) as exc:
        await s.command("bogus")
    assert exc.value.command == "bogus" and "bogus" in str(exc.value)
    await s.command("announce eor ipv4 unicast")
    assert [type(e).__name__ for e in got] == ["StateEvent", "UpdateEvent", "EorEvent"]
    assert writer.lines == ["announce route 198.19.3.0/26 next-hop self", "bogus",
                            "announce eor ipv4 unicast"]
    reader.feed_eof()
    await asyncio.wait_for(task, 1)
    with pytest.raises(ExaBGPExited):
        await s.command("withdraw route 198.19.3.0/26")


async def test_recorded_ack_transcript():
    """Replays tests/fixtures/exabgp/command_acks.txt (serial commands, real acks)."""
    rows = (FIX / "command_acks.txt").read_text().splitlines()
    replies = {rows[i][5:]: [rows[i + 1]] for i in range(0, len(rows), 2)}
    s, reader, writer, _ = make_session(replies)
    task = asyncio.create_task(s.read_loop())
    results = {}
    for cmd in replies:
        try:
            await s.command(cmd)
            results[cmd] = "done"
        except CommandRejected:
            results[cmd] = "error"
    assert results == {c: r[0] for c, r in replies.items()}
    assert results["neighbor 198.18.0.9 announce route 198.19.8.0/26 next-hop self"] == "error"
    reader.feed_eof()
    await task


async def test_pending_command_fails_when_session_closes():
    s, reader, writer, _ = make_session({"announce eor ipv4 unicast": []})
    task = asyncio.create_task(s.read_loop())
    cmd = asyncio.create_task(s.command("announce eor ipv4 unicast"))
    await asyncio.sleep(0.01)
    reader.feed_eof()
    with pytest.raises(ExaBGPExited):
        await asyncio.wait_for(cmd, 1)
    await task


async def test_ack_timeout():
    s, reader, writer, _ = make_session({"x": []}, timeout=0.05)
    task = asyncio.create_task(s.read_loop())
    with pytest.raises(BGPError, match="no ack"):
        await s.command("x")
    reader.feed_eof()
    await task

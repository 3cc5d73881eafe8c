"""`podroute node drain`: the drain request on the agent's socket, its argument checks, the
CLI's exit codes, and Agent.drain's order (withdraw via the speaker, then stop)."""
from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager

import pytest

from bgp.drain import DrainReport
from podroute import statusd
from podroute.cli import main

REPORT = {"complete": True, "withdrawn": ["198.19.2.0/26"], "acked": True, "delivered": ["198.18.0.1"],
          "undelivered": [], "down": [], "settle_s": 0.5, "took_s": 0.6}


@asynccontextmanager
async def served(sock, drain):
    server = asyncio.create_task(statusd.serve(sock, lambda: {"status": 1}, drain=drain))
    for _ in range(200):
        if sock.exists():
            break
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)


async def test_drain_request_reaches_the_agent_with_its_times(tmp_path):
    calls = []

    async def drain(**kw):
        calls.append(kw)
        return REPORT
    sock = tmp_path / "agent.sock"
    async with served(sock, drain):
        got = await asyncio.to_thread(statusd.request_drain, sock, 0.5, 3.0)
        assert got == REPORT and calls == [{"settle_s": 0.5, "timeout_s": 3.0}]
        # The status request still answers on the same socket.
        assert (await asyncio.to_thread(statusd.query, sock)) == {"status": 1}


@pytest.mark.parametrize("req,field", [({"settle_s": -1}, "settle_s"), ({"settle_s": "2"}, "settle_s"),
                                       ({"timeout_s": 0}, "timeout_s"), ({"timeout_s": 301}, "timeout_s"),
                                       ({"settle_s": True}, "settle_s")])
async def test_bad_drain_times_are_refused_and_nothing_drains(tmp_path, req, field):
    calls = []

    async def drain(**kw):
        calls.append(kw)
        return REPORT
    sock = tmp_path / "agent.sock"
    async with served(sock, drain):
        got = await asyncio.to_thread(statusd.request, sock, {"cmd": "drain", **req})
    assert field in got["error"] and calls == []


async def test_drain_without_a_handler_is_an_unknown_request(tmp_path):
    sock = tmp_path / "agent.sock"
    server = asyncio.create_task(statusd.serve(sock, lambda: {}))
    for _ in range(200):
        if sock.exists():
            break
        await asyncio.sleep(0.01)
    got = await asyncio.to_thread(statusd.request, sock, {"cmd": "drain"})
    server.cancel()
    await asyncio.gather(server, return_exceptions=True)
    assert "unknown request" in got["error"]


@pytest.mark.parametrize("reply,code", [(REPORT, 0), ({**REPORT, "complete": False, "undelivered": ["198.18.0.1"]}, 1),
                                        ({"error": "the agent is already stopping or draining"}, 1)])
async def test_cli_exit_code_follows_the_report(tmp_path, capsys, reply, code):
    async def drain(**kw):
        return reply
    sock = tmp_path / "agent.sock"
    async with served(sock, drain):
        rc = await asyncio.to_thread(main, ["node", "drain", "--socket", str(sock), "--settle", "0.5"])
    out = capsys.readouterr()
    assert rc == code, out
    if "error" in reply:
        assert reply["error"] in out.err
    elif reply["undelivered"]:
        assert "NOT confirmed by 198.18.0.1" in out.out
    else:
        assert "withdrew 1 prefix(es)" in out.out and "delivered to 198.18.0.1" in out.out


def test_cli_rejects_bad_times_before_asking(tmp_path, capsys):
    assert main(["node", "drain", "--socket", str(tmp_path / "none.sock"), "--settle", "-1"]) == 2
    assert "settle_s" in capsys.readouterr().err


def test_cli_unreachable_agent(tmp_path, capsys):
    assert main(["node", "drain", "--socket", str(tmp_path / "none.sock")]) == 1
    assert "not running" in capsys.readouterr().err


class FakeSpeaker:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    async def drain(self, settle_s: float, timeout: float) -> DrainReport:
        self.calls.append(("drain", settle_s, timeout))
        return DrainReport(withdrawn=(), acked=True, delivered=(), undelivered=(), down=(),
                           settle_s=settle_s, took_s=0.0)


async def test_agent_drain_withdraws_then_stops_once(caplog):
    from podroute.agent import Agent
    agent = Agent.__new__(Agent)   # only the drain/stop state; the rest needs a kernel
    agent._stop, agent._stop_reason, agent._draining = asyncio.Event(), "signal", False
    agent.speaker = FakeSpeaker()
    with caplog.at_level(logging.INFO):
        got = await agent.drain(settle_s=1.5, timeout_s=4.0)
    assert agent.speaker.calls == [("drain", 1.5, 4.0)]
    assert got["complete"] is True and json.dumps(got)
    assert agent._stop.is_set() and agent._stop_reason == "drained"
    again = await agent.drain(settle_s=1.5, timeout_s=4.0)
    assert "already" in again["error"] and len(agent.speaker.calls) == 1

"""An ADD whose caller went away is rolled back (issue 14 item 4): CNIServer + CNIPlugin on
FakeWiring, with the wiring held mid-ADD until the client has closed its socket."""
from __future__ import annotations

import asyncio
import json
import socket
import tempfile
import threading
from pathlib import Path

import pytest

import cni.server
from cni.fake_wiring import FakeWiring
from cni.ipam import IPAM
from cni.model import CNIRequest
from cnifakes import Sink, plugin_env
from cni.server import CNIServer

NS = "/var/run/netns/pod1"
CONF = {"cniVersion": "1.0.0", "name": "podnet", "type": "podroute"}


class HeldWiring(FakeWiring):
    """configure_pod_side waits (bounded) until the test releases it: the ADD is mid-way."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def configure_pod_side(self, netns, pod_ifname, ip, mtu):
        self.entered.set()
        assert self.release.wait(10), "test never released the wiring"
        return super().configure_pod_side(netns, pod_ifname, ip, mtu)


@pytest.fixture
def env(tmp_path):
    return plugin_env(tmp_path, HeldWiring(), NS)


def add_req(cid: str = "c0ffee") -> CNIRequest:
    return CNIRequest("ADD", cid, NS, "eth0", {}, "/opt/cni/bin", dict(CONF))


async def wait_until(cond, what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def run_server(handler, d: str):
    path = Path(d) / "cni.sock"
    server = CNIServer(path, handler)
    task = asyncio.create_task(server.run())
    await asyncio.wait_for(server.ready.wait(), 5)
    return server, task, path


async def stop(task) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def nothing_left(wiring: FakeWiring, ipam: IPAM, sink: Sink) -> None:
    assert ipam.allocations() == {}
    assert wiring.routes == set()
    assert not any(not link.retired for link in wiring.host_links.values()), wiring.host_links
    assert sink.workloads == {}


async def test_add_whose_client_closed_before_the_reply_is_rolled_back(env):
    plugin, wiring, ipam, sink = env
    with tempfile.TemporaryDirectory(prefix="cniab-", dir="/tmp") as d:
        server, task, path = await run_server(plugin, d)
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(json.dumps(add_req().to_wire()).encode() + b"\n")
        await writer.drain()
        await asyncio.to_thread(wiring.entered.wait, 5)
        assert len(ipam.allocations()) == 1  # the ADD is mid-way: IP claimed, veth made
        writer.close()  # the shim timed out (code 11 to the runtime) and went away
        await writer.wait_closed()
        wiring.release.set()
        await wait_until(lambda: ipam.allocations() == {} and wiring.host_links == {},
                         "the abandoned ADD's rollback")
        assert server.abandoned == 1
        nothing_left(wiring, ipam, sink)
        assert wiring.pod_links == {}
        await stop(task)


async def test_add_whose_reply_write_fails_is_rolled_back(env, monkeypatch):
    """The close races with the hang-up check (it lands between the check and the write):
    the failed write alone must trigger the rollback."""
    plugin, wiring, ipam, sink = env
    monkeypatch.setattr(cni.server, "_peer_gone", lambda writer: False)
    with tempfile.TemporaryDirectory(prefix="cniab-", dir="/tmp") as d:
        server, task, path = await run_server(plugin, d)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(path))
        s.sendall(json.dumps(add_req().to_wire()).encode() + b"\n")
        await asyncio.to_thread(wiring.entered.wait, 5)
        s.close()
        wiring.release.set()
        await wait_until(lambda: ipam.allocations() == {} and wiring.host_links == {},
                         "the abandoned ADD's rollback")
        assert server.abandoned == 1
        nothing_left(wiring, ipam, sink)
        await stop(task)


async def test_half_closed_client_still_gets_its_answer_and_keeps_the_pod(env):
    plugin, wiring, ipam, sink = env
    wiring.release.set()
    with tempfile.TemporaryDirectory(prefix="cniab-", dir="/tmp") as d:
        server, task, path = await run_server(plugin, d)
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(json.dumps(add_req().to_wire()).encode() + b"\n")
        writer.write_eof()  # shutdown(SHUT_WR): done sending, still reading
        resp = json.loads(await asyncio.wait_for(reader.readline(), 10))
        writer.close()
        assert resp["ok"] is True
        assert server.abandoned == 0
        ip = ipam.get("podnet.c0ffee.eth0").ip
        assert resp["result"]["ips"][0]["address"] == f"{ip}/32"
        assert len(wiring.routes) == 1 and sink.workloads == {ip: next(iter(wiring.host_links))}
        await stop(task)


async def test_abandon_keeps_an_attachment_a_later_add_answered_for(env):
    plugin, wiring, ipam, sink = env
    wiring.release.set()
    first = await plugin.handle(add_req())
    second = await plugin.handle(add_req())  # the runtime's retry, answered
    await plugin.abandon(add_req(), first)
    assert ipam.get("podnet.c0ffee.eth0") is not None and len(wiring.routes) == 1
    await plugin.abandon(add_req(), second)
    assert ipam.allocations() == {} and wiring.routes == set() and sink.workloads == {}


async def test_add_queued_while_its_caller_gave_up_is_not_done_at_all(env):
    """The agent was stopped: the shim connected (kernel backlog), sent its ADD, timed out and
    closed, all before the server accepted. Nothing may be wired or allocated."""
    plugin, wiring, ipam, sink = env
    wiring.release.set()
    with tempfile.TemporaryDirectory(prefix="cniab-", dir="/tmp") as d:
        server, task, path = await run_server(plugin, d)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(path))  # no await in between: the server has not accepted yet
        s.sendall(json.dumps(add_req().to_wire()).encode() + b"\n")
        s.close()
        await wait_until(lambda: server.abandoned == 1, "the skipped ADD")
        assert wiring.calls == [] and ipam.allocations() == {} and sink.workloads == {}
        await stop(task)

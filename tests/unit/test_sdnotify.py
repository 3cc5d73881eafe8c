"""sd_notify against a real listener on NOTIFY_SOCKET (an AF_UNIX datagram socket the test
binds), with the Agent on fakes: READY=1 comes only once the agent is ready in the /readyz
sense, and the WATCHDOG=1 pings stop while the event loop is blocked on purpose and resume
after."""
from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid

from test_podroute_agent import make, short_dir  # noqa: F401 - short_dir is a fixture
from waiting import wait_until

from podroute.sdnotify import Notifier, notify_address, watchdog_interval

WATCHDOG_USEC = 200_000  # pings every 0.1 s


class Listener:
    """Receives datagrams on ``address`` on a thread, each with its time.monotonic()."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.got: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            self.got.append((time.monotonic(), data.decode()))

    def times(self, msg: str) -> list[float]:
        return [t for t, d in list(self.got) if msg in d.split("\n")]

    def close(self) -> None:
        self._stop.set()
        self._t.join(5)
        self.sock.close()


async def test_ready_only_after_readiness_and_watchdog_stops_while_the_loop_is_blocked(short_dir, monkeypatch):
    path = str(short_dir / "notify.sock")
    lst = Listener(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    agent, _dp, _w = make(short_dir)
    run = asyncio.create_task(agent.run(signals=False))
    try:
        # Not ready: the FIB is programmed, but the one peer has not reached Established.
        await wait_until(lambda: agent.felix.synced_at is not None and len(lst.times("WATCHDOG=1")) >= 5)
        await asyncio.sleep(1.5)  # over one readiness period: READY=1 would have come by now
        assert not agent.health.readiness().ok and lst.times("READY=1") == []
        status = [d for _, d in lst.got if d.startswith("STATUS=") or "\nSTATUS=" in d]
        assert status and "not ready: bgp: waiting for Established" in status[-1]

        t_ready = time.monotonic()
        agent.speaker.converged = True   # the peer reaches Established: ready from here on
        await wait_until(lambda: lst.times("READY=1"), timeout=5)
        ready = lst.times("READY=1")
        assert len(ready) == 1 and ready[0] >= t_ready
        msg = next(d for _, d in lst.got if "READY=1" in d.split("\n"))
        assert "STATUS=ready;" in msg   # with the summary line in the same datagram

        # The loop blocks for 1 s: no WATCHDOG=1 in that time, then the pings resume.
        await asyncio.sleep(0.35)
        t0 = time.monotonic()
        time.sleep(1.0)  # noqa: ASYNC251 - blocking the event loop is the point
        t1 = time.monotonic()
        await wait_until(lambda: [t for t in lst.times("WATCHDOG=1") if t > t1 + 0.25], timeout=5)
        pings = lst.times("WATCHDOG=1")
        assert [t for t in pings if t0 + 0.05 < t < t1] == []          # silent while blocked
        assert [t for t in pings if t0 - 0.3 < t < t0]                  # pinging before
        after = [t for t in pings if t >= t1]
        assert len(after) >= 2 and after[1] - after[0] < 0.5           # and at its pace after
    finally:
        agent._stop.set()
        assert await asyncio.wait_for(run, 20) == 0
        lst.close()
    assert any("STOPPING=1" in d.split("\n") for _, d in lst.got)


async def test_no_socket_no_watchdog_task_and_nothing_sent(short_dir, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    agent, _dp, _w = make(short_dir)
    run = asyncio.create_task(agent.run(signals=False))
    try:
        await wait_until(lambda: "readiness" in agent.guard.running())
        assert "sd-watchdog" not in agent.guard.running() and not agent.notifier.enabled
        assert agent.notifier.send("READY=1") is False
    finally:
        agent._stop.set()
        assert await asyncio.wait_for(run, 20) == 0


def test_abstract_namespace_socket():
    name = f"podroute-test-{uuid.uuid4().hex}"
    lst = Listener("\0" + name)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000"})
        assert n.address == "\0" + name and n.watchdog_s == 0.5
        assert n.send("READY=1", "STATUS=x")
        deadline = time.monotonic() + 5
        while not lst.got and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lst.got[0][1] == "READY=1\nSTATUS=x"
        n.close()
    finally:
        lst.close()


def test_environment_parsing():
    assert notify_address({}) is None
    assert notify_address({"NOTIFY_SOCKET": "vsock:2:123"}) is None
    assert notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, pid=7) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, pid=7) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, pid=7) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "x"}) is None
    # a socket but no watchdog, or a watchdog but no socket
    n = Notifier({"NOTIFY_SOCKET": "/nonexistent/sock"})
    assert n.watchdog_s is None
    assert n.send("READY=1") is False and n.sent_errors == 1  # ENOENT: counted, logged, no raise
    n.close()
    assert Notifier({"WATCHDOG_USEC": "1000000"}).watchdog_s is None

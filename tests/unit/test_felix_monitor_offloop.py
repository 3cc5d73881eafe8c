"""RouteMonitor start-up (socket in a netns, link dump) waits on the kernel off the event loop."""
import asyncio
import errno
import threading
import time

import pytest

from felix import monitor as M
from felix.errors import DataplaneError


async def test_monitor_start_up_does_not_block_the_loop(monkeypatch):
    release = threading.Event()
    entered = threading.Event()

    def slow_open(netns, groups=0):
        # As open_route_socket/the link dump wait for the RTNL lock during veth churn.
        entered.set()
        release.wait(5)  # bounded: the unfixed code blocks the loop here, then fails the test
        raise DataplaneError(errno.EPERM, "injected: no socket")

    monkeypatch.setattr(M, "open_route_socket", slow_open)
    mon = M.RouteMonitor(lambda: None)
    t0 = time.monotonic()
    task = asyncio.create_task(mon.run())
    while not entered.is_set() and time.monotonic() - t0 < 5:
        await asyncio.sleep(0.005)
    turned_while_blocked = 0
    for _ in range(3):
        await asyncio.sleep(0.005)
        turned_while_blocked += not task.done()  # the opener is still held: the loop turns anyway
    blocked_loop_for = time.monotonic() - t0
    release.set()
    with pytest.raises(DataplaneError, match="injected"):
        await task
    assert turned_while_blocked == 3 and blocked_loop_for < 4.5


async def test_cancelled_start_up_closes_the_socket_it_opened(monkeypatch):
    release = threading.Event()
    opened = []

    class Sock:
        closed = False

        def close(self):
            self.closed = True

    def slow_open(netns, groups=0):
        release.wait(5)
        opened.append(Sock())
        return opened[-1]

    monkeypatch.setattr(M, "open_route_socket", slow_open)
    monkeypatch.setattr(M.RouteMonitor, "_load_links", lambda self, sock: False)
    task = asyncio.create_task(M.RouteMonitor(lambda: None).run())
    await asyncio.sleep(0.01)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 5
    while not (opened and opened[0].closed) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    assert opened and opened[0].closed

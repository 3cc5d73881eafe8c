"""systemd's readiness and watchdog protocol (sd_notify(3)) for ``Type=notify`` with ``WatchdogSec=``.

The protocol is one datagram per message on the AF_UNIX SOCK_DGRAM socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace: a leading NUL byte),
the message being newline-separated ``KEY=VALUE`` assignments. It is implemented here in the
dozen lines it needs rather than with a library: ``sdnotify`` (PyPI, pure Python) does the
same send over a blocking socket, swallows every error without a trace and leaves
``$WATCHDOG_USEC``/``$WATCHDOG_PID`` to the caller; ``systemd-python`` binds libsystemd (a C
build against libsystemd-dev) for one ``sendto``. The protocol is a documented, stable
interface (sd_notify(3), "Notes"). The socket here is non-blocking: a full receive queue drops
a message rather than stall the event loop, and a failed send is counted and logged once.

What the agent sends (:class:`Notifier`):

- ``READY=1`` once, when :meth:`podroute.health.Health.readiness` is first ok (the ``/readyz``
  sense), with ``STATUS=`` a one-line summary; ``STATUS=`` again whenever the summary changes
  (readiness is evaluated every :data:`READY_PERIOD_S`);
- ``WATCHDOG=1`` every half of ``$WATCHDOG_USEC`` (sd_watchdog_enabled(3): honoured only when
  ``$WATCHDOG_PID`` is unset or ours) from a task on the event loop itself, so a stalled loop
  stops the pings and systemd restarts the agent (``WatchdogSec=`` in configs/podroute.service);
- ``STOPPING=1`` when the agent begins to stop.

Without ``$NOTIFY_SOCKET`` (not under systemd, or ``Type=exec``) nothing is sent; the
readiness task still runs (it logs the ready/not-ready transitions and reports absent peers).
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Callable, Mapping

from podroute.health import READY_PERIOD_S, Report

log = logging.getLogger("podroute.sdnotify")


def notify_address(env: Mapping[str, str]) -> str | None:
    """The socket address from ``$NOTIFY_SOCKET`` (``@`` -> abstract: leading NUL), or None."""
    path = env.get("NOTIFY_SOCKET")
    if not path or not (path.startswith("/") or path.startswith("@")):
        return None  # unset, or a vsock address (not for a host service)
    return "\0" + path[1:] if path.startswith("@") else path


def watchdog_interval(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``, or None when the
    watchdog is off or meant for another process (``$WATCHDOG_PID``)."""
    want = env.get("WATCHDOG_PID")
    if want and want.strip() != str(pid if pid is not None else os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


class Notifier:
    """Sends to the socket in ``env`` (default ``os.environ``); every send is a no-op without
    one. Not thread-safe: used from the event loop."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = notify_address(env)
        self.watchdog_s = watchdog_interval(env) if self.address is not None else None
        self.ready_sent = False
        self.last_status: str | None = None
        self.sent_errors = 0
        self._sock: socket.socket | None = None
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *assignments: str) -> bool:
        """One datagram with ``assignments`` ("KEY=VALUE"); False if not sent (no socket, or
        the send failed: counted in ``sent_errors``, logged once)."""
        if self._sock is None:
            return False
        try:
            self._sock.sendto("\n".join(assignments).encode(), self.address)
            return True
        except OSError as e:  # EAGAIN (queue full), ECONNREFUSED (systemd gone): nothing to wait for
            self.sent_errors += 1
            if self.sent_errors == 1:
                log.warning("could not notify systemd", extra={"kv": {"error": str(e)}})
            return False

    async def watchdog(self) -> None:
        """Ping every ``watchdog_s`` until cancelled (returns at once with no watchdog): the
        pings come from this loop, so they stop when it stalls."""
        if self.watchdog_s is None or not self.enabled:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_s)

    async def readiness(self, evaluate: Callable[[], Report], summary: Callable[[Report], str]) -> None:
        """Evaluate readiness every READY_PERIOD_S until cancelled: READY=1 once, STATUS= on
        every change of ``summary(report)``; the transitions are logged."""
        ok: bool | None = None
        while True:
            rep = evaluate()
            if rep.ok != ok:
                # not ready at start is expected (info); losing readiness is not (warning)
                (log.warning if ok and not rep.ok else log.info)(
                    "agent " + ("ready" if rep.ok else "not ready"), extra={"kv": {"checks": rep.summary()}})
                ok = rep.ok
            line = summary(rep)
            msgs = []
            if line != self.last_status:
                msgs.append(f"STATUS={line}")
                self.last_status = line
            if rep.ok and not self.ready_sent:
                msgs.insert(0, "READY=1")
                self.ready_sent = True
            if msgs:
                self.send(*msgs)
            await asyncio.sleep(READY_PERIOD_S)

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

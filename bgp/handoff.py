"""Speaker side of the relay hand-off: ExaBGP's helper pipes, received over a unix socket.

The helper ExaBGP runs (bgp/relay.py) connects to :class:`PipeServer`'s socket and sends
``relay.HELLO`` with its stdin and stdout attached (SCM_RIGHTS, unix(7)). From then on the
speaker reads ExaBGP's events straight from the helper's stdin pipe and writes commands to
its stdout pipe: no copy through a second process. The connection carries nothing more; it
stays open for the session and closing it ends the helper (``cat`` sees EOF), so ExaBGP
respawns it for the next session.

The events pipe is enlarged to :data:`EVENT_PIPE_BYTES` (``F_SETPIPE_SZ``, fcntl(2)):
ExaBGP writes events to it with blocking writes from its reactor, so a full pipe stalls
every session until the speaker reads.
"""
from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
from pathlib import Path
from typing import Awaitable, Callable

from .relay import HELLO

log = logging.getLogger("bgp.handoff")

F_SETPIPE_SZ = 1031          # <linux/fcntl.h>: F_LINUX_SPECIFIC_BASE + 7
EVENT_PIPE_BYTES = 1 << 20   # the default /proc/sys/fs/pipe-max-size
HELLO_TIMEOUT = 10.0         # s for a connected helper to send its pipes

# on_session(reader, writer, close): ``close()`` releases the pipes and the connection.
OnSession = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Callable[[], None]],
                     Awaitable[None]]


class HandoffError(Exception):
    """A connection did not hand over exactly two pipes with the expected hello."""


class PipeServer:
    """Listens on ``path`` (mode 0600); runs ``on_session`` for each helper that hands over
    its pipes. ``start()`` raises OSError if the socket cannot be served."""

    def __init__(self, path: Path, on_session: OnSession, *, limit: int = 4 * 1024 * 1024) -> None:
        self.path = path
        self._on_session = on_session
        self._limit = limit
        self._sock: socket.socket | None = None
        self._accept: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind(str(self.path))
            os.chmod(self.path, 0o600)
            s.listen(8)
            s.setblocking(False)
        except OSError:
            s.close()
            raise
        self._sock = s
        self._accept = asyncio.create_task(self._accept_loop(), name="bgp-handoff-accept")

    def close(self) -> None:
        """Stop accepting and cancel running sessions (their ``close()`` runs)."""
        if self._accept is not None:
            self._accept.cancel()
        for t in list(self._tasks):
            t.cancel()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def wait_closed(self) -> None:
        pending = [t for t in (self._accept, *self._tasks) if t is not None]
        await asyncio.gather(*pending, return_exceptions=True)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        while True:
            conn, _ = await loop.sock_accept(self._sock)
            t = asyncio.create_task(self._serve(conn), name="bgp-handoff-session")
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            reader, writer, close = await open_pipes(conn, limit=self._limit)
        except (HandoffError, OSError, asyncio.TimeoutError) as exc:
            log.error("ExaBGP helper hand-off failed: %s", exc)
            conn.close()
            return
        try:
            await self._on_session(reader, writer, close)
        finally:
            close()


async def open_pipes(conn: socket.socket, *, limit: int,
                     timeout: float = HELLO_TIMEOUT
                     ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Callable[[], None]]:
    """Receive the helper's (stdin, stdout) from ``conn`` and wrap them as a stream pair.

    Returns (reader of ExaBGP's events, writer of commands, close). Raises HandoffError on a
    wrong hello or fd count (received fds are closed), asyncio.TimeoutError after ``timeout``
    s without a hello, OSError from the socket.
    """
    loop = asyncio.get_running_loop()
    conn.setblocking(False)
    ready = loop.create_future()
    loop.add_reader(conn.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        await asyncio.wait_for(ready, timeout)
    finally:
        loop.remove_reader(conn.fileno())
    msg, fds, _flags, _addr = socket.recv_fds(conn, len(HELLO), 2)
    if msg != HELLO or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        raise HandoffError(f"expected {HELLO!r} with 2 fds, got {msg!r} with {len(fds)}")
    rfd, wfd = fds
    try:
        fcntl.fcntl(rfd, F_SETPIPE_SZ, EVENT_PIPE_BYTES)
    except OSError as exc:  # over pipe-max-size for an unprivileged user: keep the default
        log.debug("F_SETPIPE_SZ on the event pipe: %s", exc)
    files: list = []
    try:
        files.append(os.fdopen(rfd, "rb", buffering=0))
        files.append(os.fdopen(wfd, "wb", buffering=0))
    except OSError:
        for fd in fds[len(files):]:
            os.close(fd)
        for f in files:
            f.close()
        raise
    reader = asyncio.StreamReader(limit=limit)
    rtransport = None
    try:
        rtransport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), files[0])
        wtransport, wproto = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin,
                                                           files[1])
    except BaseException:
        if rtransport is not None:
            rtransport.close()
        for f in files:
            f.close()
        raise
    writer = asyncio.StreamWriter(wtransport, wproto, reader, loop)

    def close() -> None:
        for t in (wtransport, rtransport):
            if not t.is_closing():
                t.close()
        conn.close()
    return reader, writer, close

"""Drift detection: a NETLINK_ROUTE multicast listener (RTMGRP_IPV4_ROUTE | RTMGRP_LINK).

Calls ``on_change()`` when something may have moved the kernel away from desired state:
 - RTM_NEWROUTE / RTM_DELROUTE of our protocol in our table that is not an echo of our own
   writes. Echoes are recognised first by the originator: the kernel stamps a notification with
   the netlink port id of the socket whose request caused it (``nlmsg_pid``), so a message from
   one of ``own_portids()`` is dropped in the kernel by a socket filter (classic BPF,
   ``felix.nlsocket.echo_filter``) before it is queued, so a 100k-route burst neither wakes us
   100k times nor overruns the receive buffer (which would force a full resync); the few that
   were queued before the filter caught up are skipped undecoded. Other messages are judged by the
   optional ``expected(route, deleted)`` callback (e.g. ``RouteTable.is_expected``); without it
   every such event counts;
 - any RTM_NEWLINK / RTM_DELLINK (the kernel flushes IPv4 routes of a downed/deleted device
   without sending RTM_DELROUTE, and a (re)created veth makes ENODEV routes installable);
 - a receive-buffer overrun (ENOBUFS: events were lost).
Debouncing is the caller's job; on_change is called at most once per batch of readable messages.
The socket comes from ``felix.nlsocket.open_route_socket`` (inside ``netns`` when given).
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from typing import Callable, Collection

from . import codec
from .nlsocket import attach_echo_filter, open_route_socket
from .routes import MAIN_TABLE, PODROUTE_PROTO, Route

log = logging.getLogger("felix.monitor")
_NLMSG_PID = struct.Struct("=I")  # nlmsghdr.nlmsg_pid, at offset 12


def _close_opened(fut: asyncio.Future) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result()[0].close()


class RouteMonitor:
    """See module doc. ``run()`` is a coroutine that returns only when cancelled (or on a socket
    error, raised as felix.errors.DataplaneError). ``ready`` is set once subscribed; ``changes``
    counts on_change calls, ``datagrams`` the notifications read, ``echoes_skipped`` the echoes
    that got past the kernel filter."""

    def __init__(self, on_change: Callable[[], None], *, protocol: int = PODROUTE_PROTO, table: int = MAIN_TABLE,
                 netns: str | None = None, expected: Callable[[Route, bool], bool] | None = None,
                 own_portids: Callable[[], Collection[int]] | None = None,
                 log: logging.Logger = log) -> None:
        self._on_change = on_change
        self.protocol = protocol
        self.table = table
        self.netns = netns
        self._expected = expected
        self._own_portids = own_portids
        self._filtered: tuple[int, ...] = ()
        self.echoes_skipped = 0
        self.datagrams = 0
        self._log = log
        self._names: dict[int, str] = {}
        self.ready = asyncio.Event()
        self.changes = 0
        self._buf = bytearray(1 << 20)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # Opening the socket (a setns thread for a netns) and the link dump wait on the kernel
        # (the RTNL lock, behind any veth churn): off the event loop.
        opening = loop.run_in_executor(None, self._subscribe)
        try:
            sock, missed = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_opened)  # the thread finishes; its socket must not leak
            raise
        sock.setblocking(False)
        failed: asyncio.Future = loop.create_future()
        loop.add_reader(sock.fileno(), self._readable, sock, failed)
        self.ready.set()
        if missed:
            self.changes += 1
            self._on_change()
        try:
            await failed
        finally:
            loop.remove_reader(sock.fileno())
            sock.close()
            self.ready.clear()

    def _subscribe(self) -> tuple[socket.socket, bool]:
        """Open the subscribed socket, attach the echo filter and load the link map (blocking;
        run in a worker thread). Returns (socket, whether a change may have been missed).
        Raises DataplaneError."""
        sock = open_route_socket(self.netns, groups=codec.RTMGRP_IPV4_ROUTE | codec.RTMGRP_LINK)
        self._filtered = ()
        self._refilter(sock)
        try:
            return sock, self._load_links(sock)
        except (OSError, codec.CodecError) as e:
            sock.close()
            from .errors import DataplaneError
            raise DataplaneError(getattr(e, "errno", None) or errno.EIO, f"netlink monitor link dump: {e}") from e

    def _load_links(self, sock: socket.socket) -> bool:
        """Fill the ifindex -> name map with an RTM_GETLINK dump on the subscribed socket (so route
        notifications decode to the same names RouteTable holds). Returns True if a relevant
        notification arrived meanwhile (it is not replayed; the caller reports a change)."""
        sock.settimeout(5.0)
        seq = 1
        sock.send(codec.encode_link_dump_request(seq=seq))
        missed = False
        for _ in range(100_000):
            try:
                n = sock.recv_into(self._buf)
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                missed = True
                continue
            view = memoryview(self._buf)[:n]
            done = False
            for mtype, _f, mseq, off, length in codec.iter_messages(view):
                if mseq == seq and mtype in (codec.NLMSG_DONE, codec.NLMSG_ERROR):
                    done = True
                elif mseq != seq and mtype in (codec.RTM_NEWROUTE, codec.RTM_DELROUTE, codec.RTM_DELLINK):
                    missed = True
            self._names.update(codec.decode_links(view))
            if done:
                return missed
        return True

    def _readable(self, sock: socket.socket, failed: asyncio.Future) -> None:
        changed = False
        self._refilter(sock)
        for _ in range(1000):  # bounded: yield to the loop after 1000 datagrams
            try:
                n = sock.recv_into(self._buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self._log.warning("netlink monitor overrun; events lost, requesting resync")
                    changed = True
                    continue
                if not failed.done():
                    from .errors import DataplaneError
                    failed.set_exception(DataplaneError(e.errno or errno.EIO, f"netlink monitor: {e}"))
                return
            self.datagrams += 1
            try:
                changed |= self._process(memoryview(self._buf)[:n])
            except codec.CodecError as e:
                self._log.warning("undecodable netlink notification (%s); requesting resync", e)
                changed = True
        if changed:
            self.changes += 1
            try:
                self._on_change()
            except Exception:  # noqa: BLE001 - a callback bug must not kill the monitor
                self._log.exception("on_change callback failed")

    def _refilter(self, sock: socket.socket) -> None:
        """(Re)attach the echo filter when the writers' port ids changed (a reopened socket)."""
        if self._own_portids is None:
            return
        own = tuple(sorted(self._own_portids()))
        if own == self._filtered:
            return
        try:
            attach_echo_filter(sock, own)
            self._filtered = own
        except (OSError, ValueError) as e:
            self._log.warning("cannot attach the netlink echo filter (%s); skipping echoes in Python", e)
            self._filtered = own

    def _process(self, view) -> bool:
        changed = False
        # Read per batch: the dataplane may have reopened its socket (a new port id) meanwhile.
        own = self._own_portids() if self._own_portids is not None else ()
        unpack_pid = _NLMSG_PID.unpack_from
        for mtype, _flags, _seq, off, length in codec.iter_messages(view):
            if mtype in (codec.RTM_NEWLINK, codec.RTM_DELLINK):
                if mtype == codec.RTM_NEWLINK:
                    self._names.update(codec.decode_links(view[off:off + length]))
                changed = True
            elif mtype in (codec.RTM_NEWROUTE, codec.RTM_DELROUTE) and length >= 28:
                base = off + 16
                if view[base] != socket.AF_INET or view[base + 5] != self.protocol:
                    continue
                if own and unpack_pid(view, off + 12)[0] in own:
                    self.echoes_skipped += 1
                    continue
                if codec.route_table_of(view, off, length) != self.table:
                    continue
                if self._expected is None:
                    changed = True
                    continue
                route, _t, _p = codec.decode_route(view, off, length, self._names.get)
                if not self._expected(route, mtype == codec.RTM_DELROUTE):
                    self._log.debug("drift: %s %s", "deleted" if mtype == codec.RTM_DELROUTE else "changed", route)
                    changed = True
        return changed

"""Agent-side CNI server: one JSON request line per unix-socket connection.

Wire format: see :mod:`cni.shim` (request) and :mod:`cni.model`. The socket is created
with mode 0600 (only root may wire pods); a stale socket file from a previous agent is
removed at start. A handler exception never kills the server: a :class:`CNIError`
becomes ``{"ok": false, "code", "msg", "details"}``, anything else is logged and
answered with code 999.

An ADD whose caller has gone away is not done, or is rolled back. The connection is
checked for the peer having closed it (POLLHUP on the unix socket: EOF in both directions;
a half-close, ``shutdown(SHUT_WR)`` after the request, still gets its answer) before the
handler starts (a request queued while the agent was stopped: the ADD is skipped), and
again once the handler has returned; then the answer's write is checked. A caller found
gone after the ADD ran gets its result handed to :meth:`CNIHandler.abandon`, which undoes
the attachment as a DEL would unless a later ADD has answered for it meanwhile. The runtime
saw an error for that ADD (the shim's timeout or dropped connection, code 11), so nobody
would ever DEL it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import stat
from pathlib import Path
from typing import Protocol

from .errors import DECODING_FAILURE, INTERNAL, CNIError
from .model import CNIRequest, CNIResult
from .shim import MAX_REQUEST  # the wire contract's owner; the shim never sends more

log = logging.getLogger(__name__)

READ_TIMEOUT = 10.0  # seconds to receive the request line


class CNIHandler(Protocol):
    async def handle(self, req: CNIRequest) -> CNIResult:
        """Return the CNI result (None for DEL/CHECK) or raise CNIError."""
        ...

    async def abandon(self, req: CNIRequest, result: CNIResult) -> None:
        """The caller of the ADD ``req``, answered with ``result``, is gone: roll it back.
        Never raises."""
        ...


class CNIServer:
    """Serves ``handler`` on ``socket_path`` until cancelled (``run()``).

    ``ready`` is set once the socket accepts connections.
    """

    def __init__(self, socket_path: Path, handler: CNIHandler) -> None:
        self.socket_path = Path(socket_path)
        self.handler = handler
        self.ready = asyncio.Event()
        self.served = 0
        self.abandoned = 0  # ADDs skipped or rolled back because their caller had gone

    def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.socket_path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise RuntimeError(f"{self.socket_path} exists and is not a socket")
        os.unlink(self.socket_path)

    async def run(self) -> None:
        """Listen until cancelled; removes the socket file on exit. Raises OSError if the
        socket cannot be bound."""
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale()
        old = os.umask(0o177)  # no window in which the socket is group/world accessible
        try:
            server = await asyncio.start_unix_server(self._serve, path=str(self.socket_path),
                                                     limit=MAX_REQUEST)
        finally:
            os.umask(old)
        os.chmod(self.socket_path, 0o600)
        log.info("CNI server listening on %s", self.socket_path)
        try:
            async with server:
                self.ready.set()
                await server.serve_forever()
        finally:
            self.ready.clear()
            try:
                os.unlink(self.socket_path)
            except FileNotFoundError:
                pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            req, resp = await self._answer(reader, writer)
            if resp is None:
                return  # an ADD whose caller had already gone: not done at all
            if req is not None and req.command == "ADD" and resp.get("ok"):
                if _peer_gone(writer):
                    await self._abandon(req, resp, "closed the connection while ADD ran")
                    return
                try:
                    await self._write(writer, resp)
                except (ConnectionError, OSError) as e:
                    await self._abandon(req, resp, f"did not take the answer ({e!r})")
                return
            await self._write(writer, resp)
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            log.warning("CNI client went away: %s", e)
        except Exception:
            log.exception("CNI server: failed to answer")
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except Exception:
                pass

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, resp: dict) -> None:
        writer.write(json.dumps(resp, separators=(",", ":")).encode() + b"\n")
        await writer.drain()
        if writer.transport.is_closing():
            # Not closed by us yet: the send failed and the transport closed itself, which
            # drain() does not report when the whole answer fitted in one send attempt.
            raise ConnectionResetError("the connection closed while the answer was written")

    async def _abandon(self, req: CNIRequest, resp: dict, why: str) -> None:
        self.abandoned += 1
        log.warning("CNI ADD %s/%s: caller %s; rolling the ADD back", req.container_id[:12],
                    req.ifname, why)
        try:
            await self.handler.abandon(req, resp["result"])
        except Exception:
            log.exception("CNI ADD %s/%s: rollback of the abandoned ADD failed",
                          req.container_id[:12], req.ifname)

    async def _answer(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> tuple[CNIRequest | None, dict | None]:
        """-> (the request, or None if none could be decoded; the wire answer, or None for an
        ADD not started because its caller had already gone)."""
        try:
            async with asyncio.timeout(READ_TIMEOUT):  # no extra task per request (wait_for's)
                line = await reader.readline()
        except asyncio.TimeoutError:
            return None, CNIError(DECODING_FAILURE, "no request received").to_wire()
        except (asyncio.LimitOverrunError, ValueError):
            return None, CNIError(DECODING_FAILURE,
                                  f"request larger than {MAX_REQUEST} bytes").to_wire()
        try:
            req = CNIRequest.from_wire(json.loads(line))
        except CNIError as e:
            return None, e.to_wire()
        except (ValueError, RecursionError) as e:  # RecursionError: nesting deeper than the stack
            return None, CNIError(DECODING_FAILURE, "request is not valid JSON", str(e)).to_wire()
        self.served += 1
        if req.command == "ADD" and _peer_gone(writer):
            # Queued while the agent was stopped or busy, and the shim gave up meanwhile.
            self.abandoned += 1
            log.warning("CNI ADD %s/%s: caller gone before the ADD started; not done",
                        req.container_id[:12], req.ifname)
            return req, None
        try:
            result = await self.handler.handle(req)
        except CNIError as e:
            log.warning("CNI %s %s/%s: code %d: %s", req.command, req.container_id[:12],
                        req.ifname, e.code, e.msg)
            return req, e.to_wire()
        except Exception as e:
            log.exception("CNI %s %s: handler crashed", req.command, req.container_id[:12])
            return req, CNIError(INTERNAL, f"podroute agent failed to handle {req.command}: {e!r}",
                                 type(e).__name__).to_wire()
        return req, {"ok": True, "result": result}


def _peer_gone(writer: asyncio.StreamWriter) -> bool:
    """True if the peer has closed its end completely (POLLHUP on a unix stream socket: both
    directions shut down), as opposed to a half-close after sending its request."""
    sock = writer.get_extra_info("socket")
    if sock is None or sock.fileno() < 0:
        return True
    p = select.poll()
    p.register(sock.fileno(), select.POLLIN)
    return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in p.poll(0))

"""Agent-side CNI server: one JSON request line per unix-socket connection.

Wire format: see :mod:`cni.shim` (request) and :mod:`cni.model`. The socket is created
with mode 0600 (only root may wire pods); a stale socket file from a previous agent is
removed at start. A handler exception never kills the server: a :class:`CNIError`
becomes ``{"ok": false, "code", "msg", "details"}``, anything else is logged and
answered with code 999.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
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


class CNIServer:
    """Serves ``handler`` on ``socket_path`` until cancelled (``run()``).

    ``ready`` is set once the socket accepts connections.
    """

    def __init__(self, socket_path: Path, handler: CNIHandler) -> None:
        self.socket_path = Path(socket_path)
        self.handler = handler
        self.ready = asyncio.Event()
        self.served = 0

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
            resp = await self._answer(reader)
            writer.write(json.dumps(resp, separators=(",", ":")).encode() + b"\n")
            await writer.drain()
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

    async def _answer(self, reader: asyncio.StreamReader) -> dict:
        try:
            async with asyncio.timeout(READ_TIMEOUT):  # no extra task per request (wait_for's)
                line = await reader.readline()
        except asyncio.TimeoutError:
            return CNIError(DECODING_FAILURE, "no request received").to_wire()
        except (asyncio.LimitOverrunError, ValueError):
            return CNIError(DECODING_FAILURE, f"request larger than {MAX_REQUEST} bytes").to_wire()
        try:
            req = CNIRequest.from_wire(json.loads(line))
        except CNIError as e:
            return e.to_wire()
        except (ValueError, RecursionError) as e:  # RecursionError: nesting deeper than the stack
            return CNIError(DECODING_FAILURE, "request is not valid JSON", str(e)).to_wire()
        self.served += 1
        try:
            result = await self.handler.handle(req)
        except CNIError as e:
            log.warning("CNI %s %s/%s: code %d: %s", req.command, req.container_id[:12],
                        req.ifname, e.code, e.msg)
            return e.to_wire()
        except Exception as e:
            log.exception("CNI %s %s: handler crashed", req.command, req.container_id[:12])
            return CNIError(INTERNAL, f"podroute agent failed to handle {req.command}: {e!r}",
                            type(e).__name__).to_wire()
        return {"ok": True, "result": result}

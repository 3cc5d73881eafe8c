"""The metrics and health listener: ``/metrics``, ``/livez`` and ``/readyz`` on one HTTP port
(config ``metrics: {address, port}``; Felix serves its metrics on 9091).

It runs on threads of its own (``http.server.ThreadingHTTPServer``, a thread per request),
never on the event loop, so that ``/livez`` answers truthfully while the loop is blocked and a
slow scrape never delays a BGP update or a CNI request:

- ``/metrics``: the registry in the Prometheus text format (``prometheus_client.exposition``);
- ``/livez``: :meth:`podroute.health.Health.liveness` (the loop-lag ticker's due time);
- ``/readyz``: :meth:`podroute.health.Health.served` (the loop's latest readiness, refused
  when it is stale).

Both health endpoints answer JSON ``{"ok": bool, "checks": {name: {"ok", "reason"}}}`` with
HTTP 200 when ok and 503 when not; anything else is 404. Requests are not logged (a scrape
every 15 s per Prometheus would drown the agent's log); failures to serve are.
"""
from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from podroute.health import Report

log = logging.getLogger("podroute.metrics")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 16


def make_handler(registry: CollectorRegistry, live: Callable[[], Report],
                 ready: Callable[[], Report]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "podroute"
        sys_version = ""

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            try:
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                elif path in ("/livez", "/readyz"):
                    rep = (live if path == "/livez" else ready)()
                    body = json.dumps(rep.as_dict(), separators=(",", ":")).encode() + b"\n"
                    self._send(200 if rep.ok else 503, "application/json", body)
                else:
                    self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics, /livez or /readyz\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the scraper went away
            except Exception:  # noqa: BLE001 - one bad scrape must not kill the listener
                log.exception("metrics listener: could not answer", extra={"kv": {"path": path}})
                try:
                    self._send(500, "text/plain; charset=utf-8", b"internal error; see the agent's log\n")
                except OSError:
                    pass

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
            pass

    return Handler


class Listener:
    """``start()`` binds (OSError if it cannot) and serves on a daemon thread; ``stop()`` ends
    it without waiting on the loop. ``port`` is the bound port (useful with port 0)."""

    def __init__(self, address: str, port: int, registry: CollectorRegistry,
                 live: Callable[[], Report], ready: Callable[[], Report]) -> None:
        self._args = (address, port)
        self._handler = make_handler(registry, live, ready)
        self._server: _Server | None = None
        self.port: int | None = None

    def start(self) -> None:
        self._server = _Server(self._args, self._handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                         name="metrics-listener", daemon=True).start()
        log.info("metrics listener up", extra={"kv": {"address": self._args[0], "port": self.port,
                                                      "paths": "/metrics /livez /readyz"}})

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return

        def close() -> None:  # shutdown() waits for serve_forever's next poll
            server.shutdown()
            server.server_close()
        threading.Thread(target=close, name="metrics-listener-stop", daemon=True).start()

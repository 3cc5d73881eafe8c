"""The agent's status/control socket and its clients (``podroute status``, ``podroute node drain``).

Wire format: the client connects to ``<runDir>/agent.sock``, writes one JSON line and reads
one JSON line back:

- ``{"cmd": "status"}``: the agent's status snapshot (:meth:`podroute.agent.Agent.status`);
- ``{"cmd": "drain", "settle_s": S, "timeout_s": T}``: withdraw every route the node
  announces, wait for the peers (bounded by T, then S seconds), reply with the drain report
  (:class:`bgp.drain.DrainReport` as a dict), then the agent exits 0. S in 0..300 (default
  2), T in 1..300 (default 10); anything else gets ``{"error": ...}`` and nothing happens.

The socket is mode 0600: status names peers and routes, drain takes the node out, and only
root may ask.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

MAX_REQUEST = 64 * 1024
DRAIN_SETTLE_S = 2.0
DRAIN_TIMEOUT_S = 10.0
_DRAIN_LIMITS = {"settle_s": (0.0, 300.0, DRAIN_SETTLE_S), "timeout_s": (1.0, 300.0, DRAIN_TIMEOUT_S)}


def drain_args(req: dict[str, Any]) -> dict[str, float] | str:
    """The drain request's ``settle_s`` / ``timeout_s`` (defaults filled), or an error text
    naming the bad field."""
    out: dict[str, float] = {}
    for key, (lo, hi, default) in _DRAIN_LIMITS.items():
        v = req.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            return f"drain: {key} must be a number of seconds in {lo:g}..{hi:g}, got {v!r}"
        out[key] = float(v)
    return out


async def serve(path: Path, snapshot: Callable[[], dict[str, Any]],
                drain: Callable[..., Awaitable[dict[str, Any]]] | None = None) -> None:
    """Serve requests on ``path`` until cancelled. Replaces a stale socket file.
    ``drain(settle_s=, timeout_s=)`` answers a drain request (none: drain is refused)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.unlink()
    except FileNotFoundError:
        pass

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5)
            try:
                req = json.loads(line[:MAX_REQUEST] or b"{}")
                cmd = req.get("cmd") if isinstance(req, dict) else None
            except ValueError:
                cmd = None
            if cmd == "status":
                reply = snapshot()
            elif cmd == "drain" and drain is not None:
                args = drain_args(req)
                reply = {"error": args} if isinstance(args, str) else await drain(**args)
            else:
                reply = {"error": f"unknown request {line[:80]!r}; expected {{\"cmd\": \"status\"}}"
                                  + (" or {\"cmd\": \"drain\"}" if drain is not None else "")}
            writer.write(json.dumps(reply, default=str).encode() + b"\n")
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(handle, path=str(path))
    finally:
        os.umask(old)
    async with server:
        await server.serve_forever()


class AgentUnreachable(Exception):
    pass


def query(path: Path, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the agent at ``path`` for its status. Raises AgentUnreachable with the reason."""
    return request(path, {"cmd": "status"}, timeout)


def request_drain(path: Path, settle_s: float = DRAIN_SETTLE_S, timeout_s: float = DRAIN_TIMEOUT_S) -> dict[str, Any]:
    """Ask the agent at ``path`` to drain and exit; returns its reply (the drain report, or
    ``{"error": ...}``). Waits up to ``timeout_s + settle_s`` plus 10 s for the reply.
    Raises AgentUnreachable with the reason."""
    return request(path, {"cmd": "drain", "settle_s": settle_s, "timeout_s": timeout_s},
                   timeout_s + settle_s + 10)


def request(path: Path, req: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one request line to the agent at ``path`` and return its one-line JSON reply.
    Raises AgentUnreachable with the reason."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(json.dumps(req).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except (FileNotFoundError, ConnectionRefusedError) as e:
        raise AgentUnreachable(f"podroute agent is not running (no listener on {path}: {e.strerror})") from None
    except OSError as e:
        raise AgentUnreachable(f"podroute agent at {path} did not answer: {e}") from None
    try:
        return json.loads(buf)
    except ValueError:
        raise AgentUnreachable(f"podroute agent at {path} sent a malformed reply") from None


def _since(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    d = int(now - ts)
    if d < 120:
        return f"{d}s"
    if d < 7200:
        return f"{d // 60}m{d % 60:02d}s"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([sep, fmt(headers), sep, *(fmt(r) for r in rows), sep])


def _loop_line(loop: dict[str, Any], now: float) -> str:
    """The agent's event-loop lag (``Agent.status()["loop"]``), worst of the last minute first."""
    worst, threshold = loop.get("worst_s") or 0.0, loop.get("threshold_s") or 0.0
    at = loop.get("worst_at")
    when = f" ({_since(at, now)} ago)" if at and worst > 0 else ""
    flag = "  OVER THRESHOLD" if threshold and worst > threshold else ""
    return (f"Event loop: worst lag {1000 * worst:.1f} ms in the last minute{when}, now {1000 * (loop.get('lag_s') or 0.0):.1f} ms, "
            f"threshold {1000 * threshold:.0f} ms{flag}")


def _health_lines(health: dict[str, Any] | None) -> list[str]:
    """The ``/readyz`` and ``/livez`` checks (``Agent.status()["health"]``), one line each."""
    if not health:
        return []
    ready, live = health.get("ready") or {}, health.get("live") or {}
    out = [f"Health: {'ready' if ready.get('ok') else 'NOT READY'}, {'live' if live.get('ok') else 'NOT LIVE'}"]
    for name, c in {**(ready.get("checks") or {}), **(live.get("checks") or {})}.items():
        out.append(f"  {name}: {'ok' if c.get('ok') else 'FAILING'}: {c.get('reason', '')}")
    return out


def render(st: dict[str, Any], now: float | None = None) -> str:
    """Render a status snapshot like ``calicoctl node status``: header, peers table, routes."""
    now = now or time.time()
    node = st.get("node", {})
    bgp = st.get("bgp", {})
    lines = [f"podroute agent is running on {node.get('name')} ({node.get('ip')}), AS {node.get('asn')}, "
             f"router ID {node.get('router_id')}, up {_since(st.get('started'), now)}"]
    ex = bgp.get("exabgp", {})
    ex_line = f"ExaBGP: pid {ex.get('pid') or '-'}, restarts {ex.get('restarts', 0)}"
    if ex.get("last_exit"):
        ex_line += f", last exit: {ex['last_exit']}"
    lines += [ex_line, "", "IPv4 BGP status"]
    rows = []
    for p in bgp.get("peers", []):
        info = p.get("info") or ""
        if p.get("stale_routes"):
            info = f"{p['stale_routes']} stale (graceful restart {p.get('gr_restart_time')}s)" + (f"; {info}" if info else "")
        kind = p.get("type", "-") + (" rr-client" if p.get("rr_client") else "")
        rows.append([str(p["address"]), str(p["asn"]), kind, p["state"], _since(p.get("since"), now),
                     str(p.get("prefixes_received", 0)), str(p.get("prefixes_accepted", 0)),
                     str(p.get("prefixes_rejected", 0)), info])
    lines.append(_table(["PEER ADDRESS", "ASN", "TYPE", "STATE", "SINCE", "RECEIVED", "ACCEPTED", "REJECTED", "INFO"], rows)
                 if rows else "No BGP peers configured.")
    rejections = bgp.get("rejections", {})
    if rejections:
        lines.append("Rejected routes by reason: " + ", ".join(f"{k}={v}" for k, v in sorted(rejections.items())))
    fib = st.get("fib", {})
    lines += ["", "Routes (FIB, protocol %s)" % fib.get("protocol", "?")]
    owners = fib.get("desired_by_owner", {})
    kinds = [[k, str(v)] for k, v in sorted(owners.items()) if k != "total"] + [["total", str(owners.get("total", 0))]]
    lines.append(_table(["KIND", "COUNT"], kinds))
    last = fib.get("last_apply") or {}
    if last:
        lines.append(f"Last apply: +{last.get('added', 0)} ~{last.get('replaced', 0)} -{last.get('deleted', 0)}, "
                     f"{len(last.get('errors', []))} error(s), {1000 * last.get('duration_s', 0):.1f} ms, "
                     f"{_since(last.get('at'), now)} ago; resyncs {fib.get('resyncs', 0)}, monitor triggers {fib.get('monitor_triggers', 0)}")
        for err in last.get("errors", [])[:5]:
            lines.append(f"  error: {err}")
    busy = (fib.get("worker") or {}).get("busy_s")
    if busy is not None and busy >= 1.0:  # felix's thread held by the kernel (RTNL) or a large table
        lines.append(f"Felix: current apply running for {busy:.1f} s")
    if fib.get("failing_routes"):
        lines.append(f"Failing routes: {fib['failing_routes']} (retried with backoff)")
    learned = bgp.get("routes", [])
    if learned:
        lines += ["", "Learned routes (Loc-RIB best paths)"]
        lines.append(_table(["PREFIX", "NEXT HOP(S)", "FROM"],
                            [[r["prefix"], ", ".join(r["next_hops"]), ", ".join(r["peers"])] for r in learned[:50]]))
        total = bgp.get("routes_total", len(learned))
        if total > min(50, len(learned)):
            lines.append(f"... {total} learned routes in all")
    lines += ["", f"Workloads: {st.get('workloads', 0)}"]
    ds = st.get("datastore")
    if ds:
        state = "connected" if ds.get("available") else f"UNAVAILABLE since {_since(ds.get('since'), now)} ago " \
                                                          f"(retrying; last state kept): {ds.get('last_error')}"
        lines.append(f"Datastore: {ds.get('datastore')}, {ds.get('nodes')} node(s), revision {ds.get('revision')}, "
                     f"{state}")
        blocks = ds.get("blocks") or []
        if blocks:
            lines.append("IPAM blocks: " + ", ".join(
                f"{b['cidr']} ({'-' if b.get('used') is None else b['used']}/{b['size']} used"
                + (", tunnel" if b.get("tunnel") else "") + ")" for b in blocks))
        if ds.get("claim_error"):
            lines.append(f"Block claims failing: {ds['claim_error']}")
    loop = st.get("loop")
    if loop:
        lines.append(_loop_line(loop, now))
    lines += _health_lines(st.get("health"))
    failures = st.get("task_failures", [])
    for f in failures:
        lines.append(f"TASK FAILED: {f['name']}: {f['error']}")
    return "\n".join(lines)

"""Throwaway namespaces and processes for the benchmarks, always cleaned up.

Every namespace is named ``prb-<8 hex>`` and recorded in a process-wide registry; every
process the bench starts is recorded by PID. ``cleanup()`` (called from ``finally`` blocks,
from ``atexit`` and on SIGTERM/SIGINT) kills the recorded PIDs (SIGTERM, then SIGKILL) and
whatever still runs inside a recorded namespace (by PID, from ``ip netns pids``), then
deletes the namespaces. Nothing here touches the root namespace's links, routes or addresses:
veths are created with both ends directly inside bench namespaces.
"""
from __future__ import annotations

import atexit
import secrets
import signal
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

from podroute.lab import netns as netns_util

NETNS_DIR = Path("/var/run/netns")
PREFIX = "prb-"

_namespaces: list[str] = []
_pids: list[int] = []


class BenchError(RuntimeError):
    """A benchmark step failed; the message names the step."""


def sh(argv: Sequence[str], *, ns: str | None = None, check: bool = True, timeout: float = 60,
       input: str | bytes | None = None, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    text = not isinstance(input, bytes)
    try:
        p = subprocess.run(cmd, capture_output=True, text=text, timeout=timeout, input=input, env=env)
    except subprocess.TimeoutExpired:
        raise BenchError(f"timed out after {timeout}s: {' '.join(cmd)}") from None
    if check and p.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed ({p.returncode}): {(p.stderr or p.stdout)!s:.500}")
    return p


def ip(*args: str, ns: str | None = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return sh(["ip", *(["-n", ns] if ns else []), *args], check=check, timeout=timeout)


def new_ns(tag: str = "") -> str:
    """Create ``prb-<hex>`` (lo up) and register it for cleanup. ``tag`` is informational only
    (namespace names stay short: ``prb-`` + 8 hex)."""
    name = PREFIX + secrets.token_hex(4)
    _namespaces.append(name)
    ip("netns", "add", name)
    ip("link", "set", "lo", "up", ns=name)
    return name


def veth(ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
    sh(["ip", "link", "add", name_a, "netns", ns_a, "type", "veth", "peer", "name", name_b, "netns", ns_b])
    ip("link", "set", name_a, "up", ns=ns_a)
    ip("link", "set", name_b, "up", ns=ns_b)


def sysctl(ns: str, key: str, value: str) -> None:
    sh(["sysctl", "-q", "-w", f"{key}={value}"], ns=ns)


def track(pid: int) -> int:
    _pids.append(pid)
    return pid


def popen(argv: Sequence[str], *, ns: str | None = None, log: Path | None = None,
          env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start ``argv`` (inside ``ns``) in its own session, recorded for cleanup."""
    cmd = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, env=env)
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    track(p.pid)
    return p


def _alive(pid: int) -> bool:
    return netns_util._alive(pid)


def kill(pids: Sequence[int], grace: float = 5.0) -> None:
    """SIGTERM each PID, wait up to ``grace`` s, SIGKILL the rest. Missing PIDs are fine."""
    netns_util.kill_pids(pids, grace)


def pids_in(ns: str) -> list[int]:
    p = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(x) for x in p.stdout.split()]


def delete_ns(ns: str) -> None:
    """Kill (by PID) what still runs in ``ns``, delete it, forget it. Missing is fine."""
    if (NETNS_DIR / ns).exists():
        kill(pids_in(ns), grace=2.0)
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
    if ns in _namespaces:
        _namespaces.remove(ns)


def stop(p: subprocess.Popen | int, grace: float = 5.0) -> None:
    pid = p if isinstance(p, int) else p.pid
    kill([pid], grace)
    if pid in _pids:
        _pids.remove(pid)


def cleanup() -> None:
    """Kill every recorded process, delete every recorded namespace. Idempotent."""
    pids = list(_pids)
    _pids.clear()
    kill(pids, grace=5.0)
    for ns in reversed(list(_namespaces)):
        delete_ns(ns)


def leftovers() -> list[str]:
    return sorted(n for n in _namespaces if (NETNS_DIR / n).exists())


def _on_signal(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt(f"signal {signum}")


def install_handlers() -> None:
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, _on_signal)


def netns_path(ns: str) -> str:
    return str(NETNS_DIR / ns)

"""Thin wrappers over iproute2 for the lab: namespaces, veths, commands inside a namespace.

The lab is not a hot path, so it drives ``ip`` like an operator would; every call
targets a named lab namespace and never the root namespace's links, routes or
addresses (veths are created with both ends directly inside lab namespaces).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

NETNS_DIR = Path("/var/run/netns")


class LabError(Exception):
    """A lab step failed; the message names the step and the command's stderr."""


def run(argv: Sequence[str], *, ns: str | None = None, check: bool = True, timeout: float = 30,
        env: Mapping[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, input=input)
    except subprocess.TimeoutExpired:
        raise LabError(f"timed out after {timeout}s: {' '.join(cmd)}") from None
    if check and p.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
    return p


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    base = ["ip", "-n", ns] if ns else ["ip"]
    return run([*base, *args], check=check)


def ip_json(*args: str, ns: str) -> Any:
    out = ip("-j", *args, ns=ns).stdout
    return json.loads(out) if out.strip() else []


def exists(ns: str) -> bool:
    return (NETNS_DIR / ns).exists()


def add(ns: str) -> None:
    ip("netns", "add", ns)
    ip("link", "set", "lo", "up", ns=ns)


def veth(ns_a: str, name_a: str, ns_b: str, name_b: str, mtu: int = 1500) -> None:
    """Create a veth pair with each end directly inside its namespace, both up."""
    run(["ip", "link", "add", name_a, "netns", ns_a, "mtu", str(mtu), "type", "veth",
         "peer", "name", name_b, "netns", ns_b, "mtu", str(mtu)])
    ip("link", "set", name_a, "up", ns=ns_a)
    ip("link", "set", name_b, "up", ns=ns_b)


def sysctl(ns: str, key: str, value: str) -> None:
    run(["sysctl", "-q", "-w", f"{key}={value}"], ns=ns)


def pids(ns: str) -> list[int]:
    p = run(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in p.stdout.split()]


def kill_pid(pid: int, grace: float = 10.0) -> None:
    """SIGTERM ``pid``, wait up to ``grace`` seconds, then SIGKILL. Missing is fine."""
    kill_pids([pid], grace)


def _alive(pid: int) -> bool:
    """Running (not a zombie: an orphan's zombie waits for PID 1 to reap it, and is dead)."""
    _reap(pid)
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def kill_pids(pids: Sequence[int], grace: float = 10.0) -> None:
    """SIGTERM all of ``pids`` at once, wait up to ``grace`` seconds for all, SIGKILL the rest."""
    live = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            live.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        live = [p for p in live if _alive(p)]
        if live:
            time.sleep(0.05)
    for pid in live:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        _reap(pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def delete(ns: str) -> None:
    """Kill (by PID) whatever still runs inside ``ns``, then delete it. Missing is fine."""
    if not exists(ns):
        return
    kill_pids(pids(ns), grace=2.0)
    ip("netns", "delete", ns, check=False)


def list_prefixed(prefix: str) -> list[str]:
    if not NETNS_DIR.exists():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def children() -> dict[int, list[int]]:
    """``{ppid: [pid, ...]}`` for every process, read from /proc/<pid>/stat (a process that
    exits during the walk is skipped)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def process_tree(pid: int, kids: Mapping[int, list[int]] | None = None) -> list[int]:
    """``pid`` and all its descendants, parents first (``kids``: a :func:`children` table
    already read, for several walks over one snapshot)."""
    kids = children() if kids is None else kids
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out

"""Helpers for lab-based end-to-end tests: bring a lab up, always take it down."""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parents[2]


def podroute(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "podroute.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


@contextmanager
def lab(tmp_path: Path, *args: str) -> Iterator[tuple[str, Path, dict[str, Any]]]:
    """``lab up <args>`` with a unique name; yields (name, state_root, report). Always ``lab down``."""
    name = "e" + secrets.token_hex(3)
    state = tmp_path / "lab"
    up = podroute("lab", "up", "--name", name, "--state-dir", str(state), "--keep", *args)
    try:
        assert up.returncode == 0, f"lab up {' '.join(args)} failed:\n{up.stdout[-4000:]}\n{up.stderr[-4000:]}"
        report = json.loads((state / name / "report.json").read_text())
        yield name, state, report
    finally:
        down = podroute("lab", "down", "--name", name, "--state-dir", str(state))
        assert down.returncode == 0, down.stdout + down.stderr


def status(state: Path, name: str, node: str) -> dict[str, Any]:
    from podroute import statusd
    return statusd.query(state / name / node / "run" / "agent.sock")


def peers_established(state: Path, name: str, node: str) -> bool:
    """All of the node's sessions Established; False (not an error) while its agent starts."""
    from podroute import statusd
    try:
        peers = status(state, name, node)["bgp"]["peers"]
    except statusd.AgentUnreachable:
        return False
    return bool(peers) and all(p["state"] == "established" for p in peers)


def fib(ns: str) -> dict[str, str]:
    """``{dst: route line}`` of our (proto 90) non-workload routes in ``ns``."""
    out = subprocess.run(["ip", "-n", ns, "route", "show", "proto", "90"], capture_output=True, text=True).stdout
    return {line.split()[0] if not line.startswith("blackhole") else line.split()[1]: line
            for line in out.splitlines() if "scope link" not in line}


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.1) -> float:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - t0

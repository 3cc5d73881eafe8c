"""Throwaway network namespaces for privileged tests.

Every namespace made here is named ``prt-<tag>-<random>`` so that a leak is
recognisable, and is deleted (with every process still inside it killed by PID)
when the test ends. Nothing here touches the root namespace's links, addresses
or routes.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

NETNS_DIR = Path("/var/run/netns")


def sh(*argv: str, ns: str | None = None, check: bool = True, timeout: float = 30,
       input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (in namespace ``ns`` if given) and return the completed process.

    Raises subprocess.CalledProcessError with stderr in the message when ``check``.
    """
    cmd: Sequence[str] = (["ip", "netns", "exec", ns, *argv] if ns else list(argv))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout, proc.stderr)
    return proc


def stop_group(proc: subprocess.Popen | None, term_s: float = 20.0, kill_s: float = 10.0) -> None:
    """SIGTERM the process group of ``proc`` (one we started with ``start_new_session``), SIGKILL
    it after ``term_s`` s, and reap ``proc``. Nothing for None or an exited process."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(term_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(kill_s)


def pids_in(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def delete_netns(ns: str) -> None:
    """Kill what still runs inside ``ns`` (by PID) and delete it. Missing is fine."""
    for pid in pids_in(ns):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


@contextmanager
def netns(tag: str) -> Iterator[str]:
    """Create ``prt-<tag>-<6 hex>``, bring its lo up, yield its name, delete it after."""
    name = f"prt-{tag}-{secrets.token_hex(3)}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "link", "set", "lo", "up", ns=name)
        yield name
    finally:
        delete_netns(name)


def netns_path(name: str) -> str:
    return str(NETNS_DIR / name)


def add_uplink(ns: str, address: str = "198.18.0.1/24", gateway: str = "198.18.0.254") -> None:
    """Give ``ns`` what a node's host namespace has for pod wiring: an up interface ``dummy0``
    holding ``address`` and a default route via ``gateway`` on it (proxy ARP answers for
    169.254.1.1 only when the host routes it out of another interface). The kernel here has no
    dummy driver, so a veth pair kept inside ``ns`` stands in."""
    sh("ip", "link", "add", "dummy0", "type", "veth", "peer", "name", "dummy0p", ns=ns)
    sh("ip", "addr", "add", address, "dev", "dummy0", ns=ns)
    sh("ip", "link", "set", "dummy0p", "up", ns=ns)
    sh("ip", "link", "set", "dummy0", "up", ns=ns)
    sh("ip", "route", "add", "default", "via", gateway, "dev", "dummy0", ns=ns)


def veth_link(ns_a: str, ns_b: str, addr_a: str, addr_b: str, names: tuple[str, str] = ("vb", "vs"),
              plen: int = 24) -> None:
    """A veth pair between ``ns_a`` and ``ns_b`` (ends ``names``), each end up with its
    address (``addr_a``/``addr_b``, ``/plen``): the wire two test speakers peer over."""
    a, b = names
    sh("ip", "link", "add", a, "type", "veth", "peer", "name", b, "netns", ns_b, ns=ns_a)
    sh("ip", "addr", "add", f"{addr_a}/{plen}", "dev", a, ns=ns_a)
    sh("ip", "link", "set", a, "up", ns=ns_a)
    sh("ip", "addr", "add", f"{addr_b}/{plen}", "dev", b, ns=ns_b)
    sh("ip", "link", "set", b, "up", ns=ns_b)

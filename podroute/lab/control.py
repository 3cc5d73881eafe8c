"""Operations on a running lab, for failure tests and operators: kill, stop (as systemd
does) or restart a node's agent, stop or start an external router, change the cluster file.

Every process is ended by PID (the recorded one, or the PIDs inside the lab namespace).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from podroute.lab import netns, runner
from podroute.lab.netns import LabError


def load(name: str, state_root: Path) -> runner.Lab:
    lab = runner.Lab.load(state_root / name)
    if lab is None:
        raise LabError(f"no lab '{name}' under {state_root}")
    return lab


def node(lab: runner.Lab, name: str) -> runner.Node:
    for n in lab.nodes:
        if n.name == name:
            return n
    raise LabError(f"lab '{lab.name}' has no node {name}")


def kill_agent(lab: runner.Lab, name: str, sig: int = signal.SIGKILL) -> list[int]:
    """Send ``sig`` to the node's agent and everything else running in its namespace (its
    ExaBGP and relay), as a crash of the whole service would. Returns the PIDs signalled."""
    n = node(lab, name)
    pids = sorted(set(netns.pids(n.ns)) | ({n.pid} if n.pid else set()))
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while any(netns._alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    return pids


def stop_agent(lab: runner.Lab, name: str, sig: int = signal.SIGTERM, timeout: float = 30.0) -> float:
    """Stop the node's agent as systemd does with ``KillMode=mixed``: ``sig`` to the agent
    alone, up to ``timeout`` s (``TimeoutStopSec``) for it to exit, then SIGKILL to whatever
    is left in its namespace. Returns the seconds the agent took to exit. Raises LabError if
    it had not exited by ``timeout`` (it is SIGKILLed then, as systemd would)."""
    n = node(lab, name)
    if not n.pid or not netns._alive(n.pid):
        raise LabError(f"agent of {name} is not running")
    t0 = time.monotonic()
    os.kill(n.pid, sig)
    while netns._alive(n.pid) and time.monotonic() - t0 < timeout:
        time.sleep(0.01)
    took = time.monotonic() - t0
    overdue = netns._alive(n.pid)
    kill_agent(lab, name, signal.SIGKILL)
    if overdue:
        raise LabError(f"agent of {name} did not exit within {timeout:.0f}s of signal {sig}")
    return took


def restart_agent(lab: runner.Lab, name: str, sig: int = signal.SIGTERM,
                  config: dict[str, Any] | None = None) -> int:
    """``systemctl restart`` for a lab node: :func:`stop_agent` (or, for SIGKILL, a crash of
    the whole service, :func:`kill_agent`), then :func:`start_agent` with ``config``.
    Returns the new agent's PID."""
    if sig == signal.SIGKILL:
        kill_agent(lab, name, sig)
    else:
        stop_agent(lab, name, sig)
    return start_agent(lab, name, config)


def start_agent(lab: runner.Lab, name: str, config: dict[str, Any] | None = None) -> int:
    """Start the node's agent on the lab's node config, with the top-level keys of
    ``config`` (node.yaml spelling, e.g. ``serviceCIDRs``) put over it for this start.
    Returns the agent's PID."""
    n = node(lab, name)
    if not config:
        runner._start_agent(lab, n)
    else:
        path = runner._node_config(lab, n)
        doc = yaml.safe_load(path.read_text())
        doc.update(config)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        # runner._start_agent would write the lab's config again: the same start, on ours.
        log = open(Path(n.dir) / "agent.log", "ab")
        proc = subprocess.Popen(["ip", "netns", "exec", n.ns, sys.executable, "-m", "podroute.cli", "node", "run",
                                 "--config", str(path)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        n.pid = proc.pid
        lab.save()
    assert n.pid is not None
    return n.pid


def router(lab: runner.Lab, name: str) -> dict[str, Any]:
    for r in lab.routers:
        if r["name"] == name:
            return r
    raise LabError(f"lab '{lab.name}' has no router {name}")


def stop_router(lab: runner.Lab, name: str, sig: int = signal.SIGKILL) -> None:
    """Stop an external router by PID (SIGKILL: no NOTIFICATION, as a crash or power loss)."""
    r = router(lab, name)
    if sig == signal.SIGKILL:
        try:
            os.kill(r["pid"], sig)
        except ProcessLookupError:
            pass
        netns.kill_pids([r["pid"]], grace=5)
    else:
        netns.kill_pids([r["pid"]], grace=10)
    for stale in ("bird.ctl", "bgpd.vty"):
        try:
            (Path(r["dir"]) / stale).unlink()
        except FileNotFoundError:
            pass


def start_router(lab: runner.Lab, name: str) -> int:
    """Start a stopped router again with its existing config."""
    r = router(lab, name)
    rdir = Path(r["dir"])
    if r["impl"] == "bird":
        argv = ["bird", "-f", "-c", str(rdir / "bird.conf"), "-s", r["ctl"], "-P", str(rdir / "bird.pid")]
    else:
        from podroute.lab import frr
        argv = frr.command(rdir / "bgpd.conf", rdir, rdir / "bgpd.pid")
    proc = subprocess.Popen(["ip", "netns", "exec", r["ns"], *argv], stdout=open(rdir / "router.out", "ab"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    r["pid"] = proc.pid
    lab.save()
    return proc.pid


def set_cluster_members(lab: runner.Lab, names: list[str]) -> None:
    """Rewrite the cluster file (mesh / podroute-rr labs) to list only ``names``."""
    runner._write_cluster(lab, [node(lab, n) for n in names])

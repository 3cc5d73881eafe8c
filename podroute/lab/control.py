"""Operations on a running lab, for failure tests and operators: kill, stop (as systemd
does) or restart a node's agent, stop or start an external router, change the cluster file.

Every process is ended by PID (the recorded one, or the PIDs inside the lab namespace).
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import yaml

from podroute.lab import agents, netns, routers
from podroute.lab.model import Lab, Node
from podroute.lab.netns import LabError


def load(name: str, state_root: Path) -> Lab:
    lab = Lab.load(state_root / name)
    if lab is None:
        raise LabError(f"no lab '{name}' under {state_root}")
    return lab


def node(lab: Lab, name: str) -> Node:
    for n in lab.nodes:
        if n.name == name:
            return n
    raise LabError(f"lab '{lab.name}' has no node {name}")


def kill_agent(lab: Lab, name: str, sig: int = signal.SIGKILL) -> list[int]:
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


def stop_agent(lab: Lab, name: str, sig: int = signal.SIGTERM, timeout: float = 30.0) -> float:
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


def restart_agent(lab: Lab, name: str, sig: int = signal.SIGTERM,
                  config: dict[str, Any] | None = None) -> int:
    """``systemctl restart`` for a lab node: :func:`stop_agent` (or, for SIGKILL, a crash of
    the whole service, :func:`kill_agent`), then :func:`start_agent` with ``config``.
    Returns the new agent's PID."""
    if sig == signal.SIGKILL:
        kill_agent(lab, name, sig)
    else:
        stop_agent(lab, name, sig)
    return start_agent(lab, name, config)


def start_agent(lab: Lab, name: str, config: dict[str, Any] | None = None) -> int:
    """Start the node's agent on the lab's node config, with the top-level keys of
    ``config`` (node.yaml spelling, e.g. ``serviceCIDRs``) put over it for this start.
    Returns the agent's PID."""
    n = node(lab, name)
    if not config:
        agents.start(lab, n)
    else:
        # Over the lab's own node.yaml, without agents.start: it would write the lab's again.
        doc = agents.node_config_doc(lab, n)
        doc.update(config)
        path = Path(n.dir) / "node.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        agents.spawn(lab, n, path)
    assert n.pid is not None
    return n.pid


def router(lab: Lab, name: str) -> dict[str, Any]:
    for r in lab.routers:
        if r["name"] == name:
            return r
    raise LabError(f"lab '{lab.name}' has no router {name}")


def stop_router(lab: Lab, name: str, sig: int = signal.SIGKILL) -> None:
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


def start_router(lab: Lab, name: str) -> int:
    """Start a stopped router again with its existing config."""
    r = router(lab, name)
    proc = routers.spawn(r["ns"], r["impl"], Path(r["dir"]), mode="ab")
    r["pid"] = proc.pid
    lab.save()
    return proc.pid


def set_cluster_members(lab: Lab, names: list[str]) -> None:
    """Rewrite the cluster file (mesh / podroute-rr labs) to list only ``names``."""
    agents.write_cluster(lab, [node(lab, n) for n in names])

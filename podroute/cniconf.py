"""The CNI network configuration list podroute installs in /etc/cni/net.d.

CNI spec 1.0.0, section "Configuration format": a conflist with ``cniVersion``,
``name`` and ``plugins``; the runtime executes each plugin named by ``type`` from
CNI_PATH. podroute's plugin is followed by the reference ``portmap`` plugin for
hostPort support, as in Calico's default conflist.

``cniVersion`` stays 1.0.0: podman 4.3's libcni knows no later version.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cni.atomicfile import atomic_write

from podroute.config import NodeConfig

CONFLIST_NAME = "10-podroute.conflist"


def conflist(cfg: NodeConfig) -> dict[str, Any]:
    """The conflist for ``cfg`` as a JSON-ready dict.

    The podroute entry carries ``agentSocket`` (the agent's CNI socket) and, only when the
    node config fixes it, ``mtu`` (an int, bytes). With ``mtu: auto`` the key is left out:
    the agent computes the pod MTU from the underlay and the pools' encapsulation, and the
    plugin takes that value for a network config without ``mtu`` (a ``null`` there is an
    invalid config, CNI error 7).
    """
    podroute: dict[str, Any] = {"type": "podroute", "agentSocket": str(cfg.paths.cni_socket)}
    if cfg.mtu is not None:
        podroute["mtu"] = cfg.mtu
    return {
        "cniVersion": "1.0.0",
        "name": "podroute",
        "plugins": [
            podroute,
            {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}},
        ],
    }


def write_conflist(conf_dir: Path, cfg: NodeConfig) -> Path:
    """Atomically write ``<conf_dir>/10-podroute.conflist``; returns its path."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    dest = conf_dir / CONFLIST_NAME
    atomic_write(dest, (json.dumps(conflist(cfg), indent=2) + "\n").encode(), 0o644)
    return dest

"""Each lab node's CNI set-up, and its pods wired as a container runtime wires them.

A lab node gets what a real node gets from the systemd unit's ``ExecStartPre``:
``podroute cni install --config <node.yaml> --bin-dir <node>/cni/bin --conf-dir
<node>/cni/net.d`` (the installed plugin, ``#!/usr/bin/python3 -IS``, and
``10-podroute.conflist`` with ``portmap`` chained), written inside the lab's state dir,
never to /opt or /etc. Pods are then attached through that conflist with libcni's
semantics (:mod:`podroute.lab.libcni`): CNI_PATH is the node's bin dir, then
containernetworking-plugins' /usr/lib/cni (``portmap``); each plugin runs in the node's
network namespace; the ADD result is cached per attachment, as libcni caches it under
/var/lib/cni/results, for CHECK and DEL.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cni.errors import TRY_AGAIN_LATER
from podroute.cniconf import CONFLIST_NAME
from podroute.lab import libcni, netns
from podroute.lab.model import Lab, Node, Pod
from podroute.lab.netns import LabError

RETRY_INTERVAL_S = 0.1
REFERENCE_PLUGINS = Path("/usr/lib/cni")  # containernetworking-plugins (Debian), for portmap
IFNAME = "eth0"


def bin_dir(node_dir: Path) -> Path:
    return Path(node_dir) / "cni" / "bin"


def conf_dir(node_dir: Path) -> Path:
    return Path(node_dir) / "cni" / "net.d"


def install(node_dir: Path, config: Path) -> None:
    """Run ``podroute cni install`` for the node in ``node_dir`` with its ``config``.
    Raises LabError with the command's output when it fails."""
    argv = [sys.executable, "-m", "podroute.cli", "cni", "install", "--config", str(config),
            "--bin-dir", str(bin_dir(node_dir)), "--conf-dir", str(conf_dir(node_dir))]
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise LabError(f"podroute cni install for {node_dir} timed out") from None
    if p.returncode != 0:
        raise LabError(f"podroute cni install for {node_dir} failed ({p.returncode}): "
                       f"{(p.stderr or p.stdout).strip()[-1000:]}")


def runtime(node_dir: Path, node_ns: str) -> libcni.Runtime:
    """The runtime of the node: its installed plugins first, then the reference plugins."""
    return libcni.Runtime([bin_dir(node_dir), REFERENCE_PLUGINS], netns_of_host=node_ns)


def conflist(node_dir: Path) -> dict[str, Any]:
    """The conflist ``podroute cni install`` wrote for the node. Raises LabError if absent."""
    try:
        return libcni.load_conflist(conf_dir(node_dir) / CONFLIST_NAME)
    except ValueError as e:
        raise LabError(str(e)) from None


def _cache_path(node_dir: Path, network: str, att: libcni.Attachment) -> Path:
    return Path(node_dir) / "cni" / "results" / f"{network}-{att.container_id}-{att.ifname}.json"


def attachment(pod_ns: str, container_id: str, pod_name: str) -> libcni.Attachment:
    return libcni.Attachment(container_id, str(netns.NETNS_DIR / pod_ns), IFNAME,
                             {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "lab", "K8S_POD_NAME": pod_name,
                              "K8S_POD_INFRA_CONTAINER_ID": container_id})


class AddFailed(LabError):
    """A CNI ADD failed; ``code`` is the plugin's CNI error code (None when it gave none)."""

    def __init__(self, msg: str, code: int | None) -> None:
        super().__init__(msg)
        self.code = code


def add(node_dir: Path, node_ns: str, att: libcni.Attachment) -> tuple[dict[str, Any], float]:
    """CNI ADD of ``att`` through the node's conflist. Returns (result, wall ms). On failure
    runs DEL through the conflist as a runtime does, then raises AddFailed with the error."""
    conf = conflist(node_dir)
    rt = runtime(node_dir, node_ns)
    t0 = time.perf_counter()
    try:
        result = rt.add(conf, att)
    except libcni.PluginFailed as e:
        try:
            rt.delete(conf, att, None)
        except libcni.PluginFailed as e2:
            raise LabError(f"{e}; and the DEL after it: {e2}") from None
        raise AddFailed(str(e), e.code) from None
    ms = (time.perf_counter() - t0) * 1000
    cache = _cache_path(node_dir, conf["name"], att)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result))
    return result, ms


def check(node_dir: Path, node_ns: str, att: libcni.Attachment) -> None:
    """CNI CHECK of ``att`` with its cached result. Raises LabError naming what is wrong."""
    conf = conflist(node_dir)
    try:
        cached = json.loads(_cache_path(node_dir, conf["name"], att).read_text())
        runtime(node_dir, node_ns).check(conf, att, cached)
    except (OSError, ValueError) as e:
        raise LabError(f"no cached result for {att.container_id}: {e}") from None
    except libcni.PluginFailed as e:
        raise LabError(str(e)) from None


def delete(node_dir: Path, node_ns: str, att: libcni.Attachment) -> None:
    """CNI DEL of ``att`` (cached result as prevResult when there is one); drops the cache."""
    conf = conflist(node_dir)
    cache = _cache_path(node_dir, conf["name"], att)
    try:
        cached = json.loads(cache.read_text())
    except (OSError, ValueError):
        cached = None
    try:
        runtime(node_dir, node_ns).delete(conf, att, cached)
    except libcni.PluginFailed as e:
        raise LabError(str(e)) from None
    cache.unlink(missing_ok=True)


def container_id(lab: Lab, node: Node, j: int) -> str:
    """The container ID of pod ``j`` of ``node``: ``<lab><node>pod<j>-`` padded with '0' to 16
    (the '-' ends the number: padding alone made pod 1 and pod 10 the same container)."""
    return f"{lab.name}{node.name}pod{j}-".ljust(16, "0")


def wire(lab: Lab, node: Node, j: int, retry_s: float = 0.0) -> Pod:
    """Pod ``j`` of ``node``: namespace ``prl-<lab>-<node>p<j>``, attached by CNI ADD through
    the node's conflist (:func:`add`); recorded in lab.json before the ADD so that ``lab down``
    removes it. An ADD that fails with CNI code 11 (try again later: e.g. the node is claiming
    another IPAM block) is tried again, as kubelet retries a sandbox, for up to ``retry_s``
    seconds (every RETRY_INTERVAL_S). Raises LabError naming the pod when the ADD fails."""
    name = f"{node.name}p{j}"
    pod_ns = f"{lab.prefix}{name}"
    netns.add(pod_ns)
    lab.namespaces.append(pod_ns)
    cid = container_id(lab, node, j)
    pod = Pod(name, node.name, pod_ns, cid)
    lab.pods.append(pod)
    lab.save()
    deadline = time.monotonic() + retry_s
    while True:
        try:
            result, pod.add_ms = add(Path(node.dir), node.ns, attachment(pod_ns, cid, name))
            break
        except AddFailed as e:
            if e.code != TRY_AGAIN_LATER or time.monotonic() >= deadline:
                raise LabError(f"CNI ADD for pod {name} on {node.name}: {e}") from None
            time.sleep(RETRY_INTERVAL_S)
        except LabError as e:
            raise LabError(f"CNI ADD for pod {name} on {node.name}: {e}") from None
    pod.ip = result["ips"][0]["address"].split("/")[0]
    lab.save()
    return pod

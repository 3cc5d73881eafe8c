"""Run a CNI network configuration list the way a container runtime's libcni does.

The lab and the tests wire pods through exactly what ``podroute cni install`` wrote: the
conflist in a conf dir and the plugins found by ``type`` in CNI_PATH (here the installed
podroute plugin and containernetworking-plugins' ``portmap``). What libcni
(github.com/containernetworking/cni, ``libcni/api.go``) does, and this module does too:

- each plugin's network config is its conflist entry plus the list's ``name`` and
  ``cniVersion``, plus ``prevResult`` when there is one, plus ``runtimeConfig`` holding only
  the runtime arguments named in the entry's ``capabilities`` (``buildOneConfig``,
  ``injectRuntimeConfig``);
- ADD runs the plugins in order, each getting the previous one's result as ``prevResult``;
  the last result is the attachment's result, which the runtime caches
  (``AddNetworkList``);
- CHECK runs the plugins in order, each with the cached result as ``prevResult``
  (``CheckNetworkList``);
- DEL runs the plugins in reverse order, each with the cached result as ``prevResult``
  when one is cached (``DelNetworkList``);
- the environment is the caller's plus CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS,
  CNI_IFNAME, CNI_ARGS and CNI_PATH (CNI spec 1.0.0, section "Parameters").

A failing plugin raises :class:`PluginFailed` with its CNI error (code, msg, details);
like libcni, nothing is undone here: a runtime answers a failed ADD with a DEL.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence


class PluginFailed(Exception):
    """A plugin exited non-zero. ``code`` is the CNI error code from its stdout (or None
    when it printed no error JSON), ``msg`` its message."""

    def __init__(self, plugin: str, command: str, code: int | None, msg: str) -> None:
        super().__init__(f"CNI {command} by plugin {plugin!r} failed"
                         + (f" (code {code})" if code is not None else "") + f": {msg}")
        self.plugin, self.command, self.code, self.msg = plugin, command, code, msg


@dataclass(frozen=True)
class Attachment:
    """One attachment's runtime parameters (CNI spec 1.0.0, "Parameters").

    ``args``: CNI_ARGS pairs; ``capability_args``: runtime arguments offered to plugins
    that declare the capability (e.g. ``{"portMappings": [{"hostPort": 8080,
    "containerPort": 80, "protocol": "tcp"}]}``)."""
    container_id: str
    netns: str
    ifname: str = "eth0"
    args: Mapping[str, str] = field(default_factory=dict)
    capability_args: Mapping[str, Any] = field(default_factory=dict)


def load_conflist(path: Path) -> dict[str, Any]:
    """The conflist at ``path``. Raises ValueError naming the file when it is not a JSON
    object with a ``plugins`` list (libcni's ``ConfListFromBytes`` checks)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read conflist: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("plugins"), list) or not doc["plugins"]:
        raise ValueError(f"{path}: a conflist needs a non-empty 'plugins' list")
    if not isinstance(doc.get("name"), str) or not doc["name"]:
        raise ValueError(f"{path}: a conflist needs a 'name'")
    return doc


def plugin_config(conflist: Mapping[str, Any], index: int, prev_result: Mapping[str, Any] | None,
                  capability_args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The network config libcni hands plugin ``index`` of ``conflist`` on stdin."""
    entry = dict(conflist["plugins"][index])
    entry["cniVersion"] = conflist.get("cniVersion", "")
    entry["name"] = conflist["name"]
    if prev_result is not None:
        entry["prevResult"] = prev_result
    caps = entry.get("capabilities") or {}
    rt = {k: v for k, v in (capability_args or {}).items() if caps.get(k) is True}
    if rt:
        entry["runtimeConfig"] = rt
    return entry


def find_plugin(name: str, cni_path: Sequence[Path]) -> Path:
    """The first executable ``name`` in ``cni_path`` (libcni's ``FindInPath``). Raises
    PluginFailed with code 50 ("plugin not available") when there is none."""
    for d in cni_path:
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return p
    raise PluginFailed(name, "-", 50, f"no plugin {name!r} in {':'.join(map(str, cni_path))}")


class Runtime:
    """A runtime's view of one node: where plugins live and how they are executed.

    ``cni_path``: plugin directories, searched in order; ``netns_of_host``: the network
    namespace (name under /run/netns) a plugin runs in, entered with ``nsenter --net``
    only (no private mount namespace, as a runtime's child); None runs in the caller's.
    ``timeout``: seconds per plugin exec."""

    def __init__(self, cni_path: Sequence[Path], netns_of_host: str | None = None, timeout: float = 60) -> None:
        self.cni_path = [Path(p) for p in cni_path]
        self.host_ns = netns_of_host
        self.timeout = timeout

    def _exec(self, conflist: Mapping[str, Any], index: int, command: str, att: Attachment,
              prev: Mapping[str, Any] | None) -> dict[str, Any] | None:
        entry = conflist["plugins"][index]
        plugin = find_plugin(entry["type"], self.cni_path)
        env = {**os.environ, "CNI_COMMAND": command, "CNI_CONTAINERID": att.container_id,
               "CNI_NETNS": att.netns, "CNI_IFNAME": att.ifname,
               "CNI_ARGS": ";".join(f"{k}={v}" for k, v in att.args.items()),
               "CNI_PATH": ":".join(map(str, self.cni_path))}
        argv = [str(plugin)]
        if self.host_ns is not None:
            argv = [shutil.which("nsenter") or "nsenter", f"--net=/run/netns/{self.host_ns}", *argv]
        stdin = json.dumps(plugin_config(conflist, index, prev, att.capability_args))
        try:
            p = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise PluginFailed(entry["type"], command, None, f"no answer within {self.timeout}s") from None
        if p.returncode != 0:
            try:
                err = json.loads(p.stdout)
                code, msg = err.get("code"), f"{err.get('msg', '')} {err.get('details', '')}".strip()
            except (ValueError, AttributeError):
                code, msg = None, (p.stdout + p.stderr).strip()[-500:]
            raise PluginFailed(entry["type"], command, code, msg or f"exit {p.returncode}")
        if command != "ADD":
            return None
        try:
            result = json.loads(p.stdout)
        except ValueError:
            raise PluginFailed(entry["type"], command, None, f"result is not JSON: {p.stdout[:200]!r}") from None
        if not isinstance(result, dict):
            raise PluginFailed(entry["type"], command, None, f"result is not an object: {p.stdout[:200]!r}")
        return result

    def add(self, conflist: Mapping[str, Any], att: Attachment) -> dict[str, Any]:
        """ADD through every plugin; returns the final result (the one to cache)."""
        prev: dict[str, Any] | None = None
        for i in range(len(conflist["plugins"])):
            prev = self._exec(conflist, i, "ADD", att, prev)
        if prev is None:
            raise PluginFailed("-", "ADD", 7, "the conflist has no plugins")
        return prev

    def check(self, conflist: Mapping[str, Any], att: Attachment, cached: Mapping[str, Any]) -> None:
        """CHECK through every plugin with the cached ADD result as prevResult."""
        for i in range(len(conflist["plugins"])):
            self._exec(conflist, i, "CHECK", att, cached)

    def delete(self, conflist: Mapping[str, Any], att: Attachment, cached: Mapping[str, Any] | None) -> None:
        """DEL through every plugin, last first, with the cached result (if any) as prevResult."""
        for i in reversed(range(len(conflist["plugins"]))):
            self._exec(conflist, i, "DEL", att, cached)


def first_conflist(conf_dir: Path) -> Path:
    """The lexically first ``*.conflist`` in ``conf_dir``: the network a CRI runtime uses
    (libcni ``ConfFiles`` sorts by name and the runtime takes the first). Single-plugin
    ``.conf``/``.json`` files, which libcni also lists, are not considered: podroute installs
    a conflist. Raises ValueError when there is none."""
    found = sorted(p for p in Path(conf_dir).glob("*.conflist") if p.is_file())
    if not found:
        raise ValueError(f"no *.conflist in {conf_dir}")
    return found[0]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m podroute.lab.libcni ADD|CHECK|DEL ...``: one attachment, as a runtime does
    it (cnitool-like). ADD prints the result and caches it in ``--cache-dir``; CHECK and DEL
    use the cached result. Exit 0, or 1 with the plugin's error on stderr."""
    import argparse
    import sys
    p = argparse.ArgumentParser(prog="python -m podroute.lab.libcni", description=main.__doc__)
    p.add_argument("command", choices=["ADD", "CHECK", "DEL"])
    p.add_argument("--conf-dir", type=Path, required=True)
    p.add_argument("--cni-path", required=True, help="plugin dirs, ':'-separated")
    p.add_argument("--netns", required=True)
    p.add_argument("--container-id", required=True)
    p.add_argument("--ifname", default="eth0")
    p.add_argument("--cache-dir", type=Path, required=True)
    p.add_argument("--arg", action="append", default=[], help="CNI_ARGS pair K=V (repeatable)")
    a = p.parse_args(argv)
    try:
        conf = load_conflist(first_conflist(a.conf_dir))
    except ValueError as e:
        print(e, file=sys.stderr)
        return 1
    att = Attachment(a.container_id, a.netns, a.ifname, dict(kv.split("=", 1) for kv in a.arg))
    cache = a.cache_dir / f"{conf['name']}-{a.container_id}-{a.ifname}.json"
    rt = Runtime([Path(d) for d in a.cni_path.split(":") if d])
    try:
        if a.command == "ADD":
            result = rt.add(conf, att)
            a.cache_dir.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(result))
            print(json.dumps(result))
        elif a.command == "CHECK":
            rt.check(conf, att, json.loads(cache.read_text()))
        else:
            rt.delete(conf, att, json.loads(cache.read_text()) if cache.exists() else None)
            cache.unlink(missing_ok=True)
    except (PluginFailed, OSError, ValueError) as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

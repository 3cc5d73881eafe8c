"""Run one Speaker from a JSON file and talk JSON lines: ``python -m bgp <config.json>``.

A debugging and test driver (the agent uses :class:`bgp.speaker.Speaker` directly). It runs
in the calling process's network namespace (start it with ``ip netns exec`` / ``nsenter``).

Config JSON: the SpeakerConfig fields (plus optional ``exabgp_speed``, default 0.1;
``exabgp_python`` defaults to this interpreter when it can import exabgp, ``null`` turns the
launcher off), addresses/prefixes as strings, ``peers`` as a list of
PeerConfig objects. stdout gets one JSON object per line: ``{"routes": {prefix: {...}}}`` (the
whole Loc-RIB) after every ``on_changes`` call and ``{"status": {...}}`` in answer to ``status`` on stdin. stdin
commands: ``status``, ``announce P1 P2 ...`` (replaces the set), ``peers <JSON list of
PeerConfig objects>`` (:meth:`Speaker.set_peers`), ``exports <JSON list of {"prefix",
"communities"}>``, ``nexthops <JSON {block: ip}>``, ``drain [settle_s]`` (:meth:`Speaker.drain`,
answered with ``{"drained": {...}}``), ``stop`` (graceful: nothing withdrawn). EOF on stdin stops.
``BGP_LOG_LEVEL`` (default INFO) sets the stderr log level.
"""
from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import logging
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from .errors import BGPError
from .model import ExportRoute, PeerConfig, SpeakerConfig
from .speaker import Speaker


def load_peers(raw: list) -> tuple[PeerConfig, ...]:
    """PeerConfig objects from their JSON form."""
    return tuple(PeerConfig(**{**p, "address": IPv4Address(p["address"]),
                               "local_address": IPv4Address(p["local_address"])
                               if p.get("local_address") else None}) for p in raw)


def load_exports(raw: list) -> tuple[ExportRoute, ...]:
    return tuple(ExportRoute(IPv4Network(r["prefix"]), tuple(r.get("communities", ())))
                 for r in raw)


def load_next_hops(raw: dict) -> dict[IPv4Network, IPv4Address]:
    return {IPv4Network(k): IPv4Address(v) for k, v in raw.items()}


def load_config(obj: dict) -> SpeakerConfig:
    """Build a SpeakerConfig from its JSON form (raises KeyError/ValueError/TypeError)."""
    peers = load_peers(obj["peers"])
    nets = lambda key: tuple(IPv4Network(x) for x in obj.get(key, ()))  # noqa: E731
    kw = {k: v for k, v in obj.items() if k not in (
        "peers", "announce", "import_pools", "own_blocks", "router_id", "local_address",
        "node_ip", "listen_address", "state_dir", "import_extra", "export_extra",
        "expected_next_hops", "route_reflector_cluster_id")}
    if "import_extra" in obj:
        kw["import_extra"] = nets("import_extra")
    if "export_extra" in obj:
        kw["export_extra"] = load_exports(obj["export_extra"])
    if "expected_next_hops" in obj:
        kw["expected_next_hops"] = load_next_hops(obj["expected_next_hops"])
    if obj.get("route_reflector_cluster_id"):
        kw["route_reflector_cluster_id"] = IPv4Address(obj["route_reflector_cluster_id"])
    return SpeakerConfig(
        router_id=IPv4Address(obj["router_id"]), local_as=int(obj["local_as"]),
        local_address=IPv4Address(obj["local_address"]), peers=peers,
        announce=nets("announce"), import_pools=nets("import_pools"),
        own_blocks=nets("own_blocks"), node_ip=IPv4Address(obj["node_ip"]),
        listen_address=IPv4Address(obj["listen_address"]) if obj.get("listen_address") else None,
        state_dir=Path(obj["state_dir"]), **{k: v for k, v in kw.items() if k != "local_as"})


def _jsonable(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (IPv4Address, IPv4Network, Path)):
        return str(value)
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _main(path: str) -> int:
    raw = json.loads(Path(path).read_text())
    speed = float(raw.pop("exabgp_speed", 0.1))
    if "exabgp_python" not in raw and importlib.util.find_spec("exabgp") is not None:
        raw["exabgp_python"] = sys.executable  # the withdrawal fast path (exabgp_launch.py)
    cfg = load_config(raw)
    # on_changes gives the delta; this driver prints the whole Loc-RIB after each one.
    speaker = Speaker(cfg, lambda _delta: _emit(
        {"routes": _jsonable(dict(speaker.best_routes_view()))}), exabgp_speed=speed)
    run = asyncio.create_task(speaker.run())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while not run.done():
        line_task = asyncio.ensure_future(reader.readline())
        await asyncio.wait({line_task, run}, return_when=asyncio.FIRST_COMPLETED)
        if run.done():
            line_task.cancel()
            break
        text = line_task.result().decode()
        words = text.split()
        if not words or words[0] == "stop":
            await speaker.stop()
            break
        rest = text.strip()[len(words[0]):].strip()
        try:
            if words[0] == "peers":
                speaker.set_peers(load_peers(json.loads(rest)))
                _emit({"ok": "peers"})
            elif words[0] == "exports":
                speaker.set_exports(load_exports(json.loads(rest)))
                _emit({"ok": "exports"})
            elif words[0] == "nexthops":
                speaker.set_expected_next_hops(load_next_hops(json.loads(rest)))
                _emit({"ok": "nexthops"})
        except (ValueError, KeyError, TypeError, BGPError) as exc:
            _emit({"error": f"{type(exc).__name__}: {exc}"})
        if words[0] == "status":
            _emit({"status": _jsonable(speaker.status())})
        elif words[0] == "drain":
            settle = float(words[1]) if len(words) > 1 else 0.5
            _emit({"drained": (await speaker.drain(settle_s=settle)).as_dict()})
        elif words[0] == "announce":
            speaker.set_announcements(IPv4Network(w) for w in words[1:])
            _emit({"ok": "announce"})
    await run
    _emit({"stopped": True})
    return 0


def main() -> int:
    import os
    logging.basicConfig(level=os.environ.get("BGP_LOG_LEVEL", "INFO").upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if len(sys.argv) != 2:
        sys.stderr.write(__doc__ or "")
        return 2
    return asyncio.run(_main(sys.argv[1]))


if __name__ == "__main__":
    sys.exit(main())

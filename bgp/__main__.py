"""Run one Speaker from a JSON file and talk JSON lines: ``python -m bgp <config.json>``.

A debugging and test driver (the agent uses :class:`bgp.speaker.Speaker` directly). It runs
in the calling process's network namespace (start it with ``ip netns exec`` / ``nsenter``).

Config JSON: the SpeakerConfig fields (plus optional ``exabgp_speed``, default 0.1), addresses/prefixes as strings, ``peers`` as a list of
PeerConfig objects. stdout gets one JSON object per line: ``{"routes": {prefix: {...}}}`` on
every Loc-RIB change and ``{"status": {...}}`` in answer to ``status`` on stdin. stdin
commands: ``status``, ``announce P1 P2 ...`` (replaces the set), ``stop``. EOF on stdin stops.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from .model import PeerConfig, SpeakerConfig
from .speaker import Speaker


def load_config(obj: dict) -> SpeakerConfig:
    """Build a SpeakerConfig from its JSON form (raises KeyError/ValueError/TypeError)."""
    peers = tuple(PeerConfig(**{**p, "address": IPv4Address(p["address"]),
                                "local_address": IPv4Address(p["local_address"])
                                if p.get("local_address") else None}) for p in obj["peers"])
    nets = lambda key: tuple(IPv4Network(x) for x in obj.get(key, ()))  # noqa: E731
    kw = {k: v for k, v in obj.items() if k not in (
        "peers", "announce", "import_pools", "own_blocks", "router_id", "local_address",
        "node_ip", "listen_address", "state_dir")}
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
    return value


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _main(path: str) -> int:
    raw = json.loads(Path(path).read_text())
    speed = float(raw.pop("exabgp_speed", 0.1))
    cfg = load_config(raw)
    speaker = Speaker(cfg, lambda rib: _emit({"routes": _jsonable(dict(rib))}),
                      exabgp_speed=speed)
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
        words = line_task.result().decode().split()
        if not words or words[0] == "stop":
            await speaker.stop()
            break
        if words[0] == "status":
            _emit({"status": _jsonable(speaker.status())})
        elif words[0] == "announce":
            speaker.set_announcements(IPv4Network(w) for w in words[1:])
            _emit({"ok": "announce"})
    await run
    _emit({"stopped": True})
    return 0


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if len(sys.argv) != 2:
        sys.stderr.write(__doc__ or "")
        return 2
    return asyncio.run(_main(sys.argv[1]))


if __name__ == "__main__":
    sys.exit(main())

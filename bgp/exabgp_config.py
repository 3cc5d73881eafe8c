"""Render the ExaBGP 5 configuration file and process environment for a SpeakerConfig.

The config holds one ``process`` block running the stdlib relay (bgp/relay.py) and one
``neighbor`` block per peer. Settings that ExaBGP reads from its environment (not the
config file) are returned by :func:`exabgp_env`. Shape follows ExaBGP 5.0.x
(``exabgp/configuration/neighbor/__init__.py``).
"""
from __future__ import annotations

import re
from ipaddress import IPv4Address
from pathlib import Path

from .errors import ConfigError
from .model import MAX_PREFIXES_ACTIONS, PeerConfig, SpeakerConfig

PROCESS_NAME = "podroute"
RELAY_PATH = Path(__file__).resolve().parent / "relay.py"
LAUNCH_PATH = Path(__file__).resolve().parent / "exabgp_launch.py"
# ExaBGP's tokenizer splits on whitespace and treats ; { } as syntax: keep passwords simple.
_PASSWORD_OK = re.compile(r'^[A-Za-z0-9!#$%&()*+,\-./:<=>?@\[\]^_`|~]{1,80}$')
_COMMUNITY_OK = re.compile(r'^(\d{1,5}):(\d{1,5})$')


def check_community(text: str) -> None:
    """Raise ConfigError unless ``text`` is a standard community "ASN:VALUE" (RFC 1997,
    both halves 0..65535)."""
    m = _COMMUNITY_OK.match(text)
    if m is None or int(m.group(1)) > 65535 or int(m.group(2)) > 65535:
        raise ConfigError(f"community {text!r} is not ASN:VALUE with 16-bit halves (RFC 1997)")


def relay_command(socket_path: Path, python: str = "/usr/bin/python3") -> str:
    """The helper command line ExaBGP runs: ``python -I -S relay.py <socket>`` (isolated,
    no site: the relay is stdlib only and must start fast)."""
    for part in (python, str(RELAY_PATH), str(socket_path)):
        if any(c.isspace() or c in ';{}"\'' for c in part):
            raise ConfigError(f"path unusable in an ExaBGP run line: {part!r}")
    return f"{python} -I -S {RELAY_PATH} {socket_path}"


def _check_peer(cfg: SpeakerConfig, peer: PeerConfig) -> None:
    if not (1 <= peer.asn <= 4294967295):
        raise ConfigError(f"peer {peer.address}: asn {peer.asn} out of range")
    if peer.hold_time != 0 and not (3 <= peer.hold_time <= 65535):
        raise ConfigError(f"peer {peer.address}: hold time must be 0 or 3..65535 (RFC 4271 §4.2)")
    if not (1 <= peer.port <= 65535):
        raise ConfigError(f"peer {peer.address}: port {peer.port} out of range")
    if peer.password is not None and not _PASSWORD_OK.match(peer.password):
        # The message never includes the password itself.
        raise ConfigError(f"peer {peer.address}: md5 password has characters ExaBGP cannot parse")
    if peer.multihop_ttl is not None and not (1 <= peer.multihop_ttl <= 255):
        raise ConfigError(f"peer {peer.address}: multihop ttl out of range")
    if peer.max_prefixes is not None and peer.max_prefixes < 0:
        raise ConfigError(f"peer {peer.address}: max_prefixes must be >= 0")
    if peer.max_prefixes_action not in MAX_PREFIXES_ACTIONS:
        raise ConfigError(f"peer {peer.address}: max_prefixes_action must be one of "
                          f"{', '.join(MAX_PREFIXES_ACTIONS)}")
    if peer.rr_client and peer.asn != cfg.local_as:
        raise ConfigError(f"peer {peer.address}: a route-reflector client must be iBGP "
                          "(RFC 4456 §2)")


def render_config(cfg: SpeakerConfig, socket_path: Path, python: str = "/usr/bin/python3") -> str:
    """Return the ExaBGP 5 config text. Raises ConfigError on values ExaBGP would reject.

    Each neighbor: router-id, local-address, local-as, peer-as, hold-time, ipv4 unicast,
    graceful-restart (RFC 4724) + route-refresh capabilities, ``manual-eor true`` (we send
    End-of-RIB after replaying announcements, else a restarted ExaBGP sends it at once and a
    peer flushes our stale routes before the replay, RFC 4724 §4.2), md5-password, passive/listen,
    and the api block that feeds our relay parsed updates, notifications, opens and state.
    ExaBGP's own Adj-RIB-In is off (``adj-rib-in false``): the speaker keeps its own.
    """
    if not (1 <= cfg.local_as <= 4294967295):
        raise ConfigError(f"local asn {cfg.local_as} out of range")
    if not (0 <= cfg.graceful_restart_time <= 4095):
        raise ConfigError("graceful restart time must be 0..4095 s (RFC 4724 §3)")
    if not cfg.peers:
        raise ConfigError("at least one peer is required")
    for route in cfg.export_extra:
        for c in route.communities:
            check_community(c)
    seen: set[IPv4Address] = set()
    lines = [
        "# Rendered by podroute bgp/exabgp_config.py: do not edit.",
        f"process {PROCESS_NAME} {{",
        f"    run {relay_command(socket_path, python)};",
        "    encoder json;",
        "}",
        "",
    ]
    for peer in cfg.peers:
        if peer.address in seen:
            raise ConfigError(f"duplicate peer {peer.address}")
        seen.add(peer.address)
        _check_peer(cfg, peer)
        local = peer.local_address or cfg.local_address
        lines.append(f"neighbor {peer.address} {{")
        if peer.name:
            safe = re.sub(r'[^A-Za-z0-9_.:-]', '_', peer.name)
            lines.append(f'    description "{safe}";')
        lines += [
            f"    router-id {cfg.router_id};",
            f"    local-address {local};",
            f"    local-as {cfg.local_as};",
            f"    peer-as {peer.asn};",
            f"    hold-time {peer.hold_time};",
            "    manual-eor true;",
            # We keep our own Adj-RIB-In (bgp/rib.py); ExaBGP's copy costs ~0.55 kB and
            # ~6 us per received route (100k: 94 vs 38 MB RSS, 1.4 vs 0.9 s; bench/).
            "    adj-rib-in false;",
        ]
        if peer.port != 179:
            lines.append(f"    connect {peer.port};")
        if peer.passive:
            lines.append("    passive true;")
            lines.append(f"    listen {cfg.listen_port};")
        if peer.multihop_ttl is not None:
            lines.append(f"    outgoing-ttl {peer.multihop_ttl};")
        if peer.password is not None:
            lines.append(f"    md5-password '{peer.password}';")
        lines += [
            "    family {",
            "        ipv4 unicast;",
            "    }",
            "    capability {",
            f"        graceful-restart {cfg.graceful_restart_time};",
            "        route-refresh;",
            "    }",
            "    api {",
            f"        processes [ {PROCESS_NAME} ];",
            "        neighbor-changes;",
            "        receive {",
            "            parsed;",
            "            update;",
            "            notification;",
            "            open;",
            "        }",
            "    }",
            "}",
            "",
        ]
    return "\n".join(lines)


def redact(text: str) -> str:
    """Config text with md5 passwords replaced, safe to log."""
    return re.sub(r"md5-password '[^']*'", "md5-password '<redacted>'", text)


def exabgp_env(cfg: SpeakerConfig, speed: float = 0.1) -> dict[str, str]:
    """Environment settings for ``exabgp server`` (added to os.environ by the caller).

    Root without dropping privileges (else the helper runs as nobody and dies), foreground,
    no named-pipe CLI, acks on, logs to stdout (captured by the speaker), reactor ``speed``
    (``exabgp/reactor/loop.py`` ``_prevent_spin``: past ``speed`` loops in one second, each
    further loop sleeps ``speed``/100 s; with ExaBGP 5.0.15, 0.1 doubles announce throughput
    against the default 1.0).
    """
    env = {
        "exabgp.daemon.user": "root",
        "exabgp.daemon.drop": "false",
        "exabgp.daemon.daemonize": "false",
        "exabgp.daemon.pid": "",
        "exabgp.api.cli": "false",
        "exabgp.api.ack": "true",
        "exabgp.api.respawn": "true",
        "exabgp.api.encoder": "json",
        "exabgp.log.destination": "stdout",
        "exabgp.log.level": "INFO",
        "exabgp.log.short": "true",
        "exabgp.reactor.speed": str(speed),
        "exabgp.tcp.port": str(cfg.listen_port),
    }
    if cfg.listen_address is not None:
        env["exabgp.tcp.bind"] = str(cfg.listen_address)
    return env

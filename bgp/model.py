"""Desired state and observed status of the BGP speaker (frozen dataclasses, ipaddress types)."""
from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path


@dataclass(frozen=True)
class PeerConfig:
    """One BGP neighbor.

    ``asn`` is the peer AS (equal to the local AS: iBGP); ``hold_time`` in seconds (RFC 4271
    §4.2, 0 or >= 3); ``password`` enables TCP MD5 (RFC 2385) and is never logged;
    ``passive`` means we never open the TCP connection; ``port`` is the peer's TCP port;
    ``multihop_ttl`` sets eBGP multihop; ``name`` is a free-form label for status/logs.
    """

    address: IPv4Address
    asn: int
    password: str | None = field(default=None, repr=False)
    hold_time: int = 90
    passive: bool = False
    port: int = 179
    local_address: IPv4Address | None = None
    multihop_ttl: int | None = None
    name: str | None = None


@dataclass(frozen=True)
class SpeakerConfig:
    """Everything needed to run one node's speaker.

    ``announce``: prefixes we originate (normally the node's own blocks);
    ``import_pools``: learned prefixes must lie inside one of these;
    ``own_blocks``: learned prefixes overlapping these are rejected;
    ``node_ip``: learned routes with this next hop are rejected (our own routes reflected back);
    ``graceful_restart_time``: seconds advertised in the GR capability (RFC 4724 §3);
    ``state_dir``: where the rendered config and the relay socket live;
    ``exabgp_bin``: the ExaBGP executable (name on PATH or absolute path).
    """

    router_id: IPv4Address
    local_as: int
    local_address: IPv4Address
    peers: tuple[PeerConfig, ...]
    announce: tuple[IPv4Network, ...]
    import_pools: tuple[IPv4Network, ...]
    own_blocks: tuple[IPv4Network, ...]
    node_ip: IPv4Address
    listen_address: IPv4Address | None = None
    listen_port: int = 179
    graceful_restart_time: int = 120
    state_dir: Path = field(kw_only=True)
    exabgp_bin: str = "exabgp"


@dataclass(frozen=True)
class PathAttrs:
    """Path attributes of one received route (RFC 4271 §5.1, RFC 4456 §8).

    ``origin``: 0 IGP, 1 EGP, 2 INCOMPLETE; ``med`` None when absent; ``local_pref`` None when
    absent (treated as 100, the common default, in best-path selection).
    """

    next_hop: IPv4Address
    as_path: tuple[int, ...] = ()
    origin: int = 0
    med: int | None = None
    local_pref: int | None = None
    originator_id: IPv4Address | None = None
    cluster_list: tuple[IPv4Address, ...] = ()
    communities: tuple[str, ...] = ()


@dataclass(frozen=True)
class BestRoute:
    """A Loc-RIB entry. ``next_hops`` has more than one element for ECMP (sorted);
    ``peers`` are the neighbors that supplied the selected paths (same order as next_hops)."""

    prefix: IPv4Network
    next_hops: tuple[IPv4Address, ...]
    peers: tuple[IPv4Address, ...]
    as_path: tuple[int, ...] = ()


@dataclass(frozen=True)
class PeerStatus:
    """One neighbor as observed through ExaBGP's state events.

    ``state``: "idle" (never seen), "connected" (TCP up), "established", "down";
    ``since``: unix time (s) of the last state change; ``prefixes_*`` count the current
    Adj-RIB-In after import policy (received = accepted + rejected);
    ``last_error``: the last down reason or notification text.
    """

    address: IPv4Address
    asn: int
    state: str
    since: float
    prefixes_received: int
    prefixes_accepted: int
    prefixes_rejected: int
    last_error: str | None
    rejected_by_reason: tuple[tuple[str, int], ...] = ()
    eor_received: bool = False   # End-of-RIB seen on the current session (RFC 4724 §2)


@dataclass(frozen=True)
class SpeakerStatus:
    """Whole-speaker status: ``exabgp_pid`` None when not running; ``exabgp_restarts`` counts
    starts after the first; ``last_exit`` describes the last exit (code and stderr tail);
    ``announced`` is the desired announced set."""

    peers: tuple[PeerStatus, ...]
    exabgp_pid: int | None
    exabgp_restarts: int
    last_exit: str | None
    announced: tuple[IPv4Network, ...]

"""Desired state and observed status of the BGP speaker (frozen dataclasses, ipaddress types)."""
from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Mapping

MAX_PREFIXES_ACTIONS = ("reject", "teardown")


@dataclass(frozen=True)
class PeerConfig:
    """One BGP neighbor.

    ``asn`` is the peer AS (equal to the local AS: iBGP); ``hold_time`` in seconds (RFC 4271
    §4.2, 0 or >= 3); ``password`` enables TCP MD5 (RFC 2385) and is never logged;
    ``passive`` means we never open the TCP connection; ``port`` is the peer's TCP port;
    ``multihop_ttl`` sets eBGP multihop; ``name`` is a free-form label for status/logs.
    ``local_address`` is the TCP source address for this session (None: the speaker's).

    ``multihop_ttl`` (1..255) is the IP TTL of our packets to a non-adjacent peer (rendered as
    ExaBGP's ``outgoing-ttl``; None = ExaBGP's default, i.e. directly connected).

    Import policy knobs (bgp/policy.py): ``enforce_next_hop`` checks routes inside a known
    node block against the block's expected next hop (None = auto: True for iBGP, False for
    eBGP, whose next hop is legitimately the ToR); ``max_prefixes`` caps the accepted routes
    from this peer (None = no limit) and ``max_prefixes_action`` says what happens beyond it:
    "reject" (the excess routes are rejected, reason ``max_prefixes``) or "teardown" (Cease
    NOTIFICATION subcode 1 "Maximum Number of Prefixes Reached", RFC 4486 §4).

    ``rr_client`` marks the peer a route-reflector client (RFC 4456 §2); it matters only when
    ``SpeakerConfig.route_reflector_cluster_id`` is set.
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
    enforce_next_hop: bool | None = None
    max_prefixes: int | None = None
    max_prefixes_action: str = "reject"
    rr_client: bool = False

    def is_ibgp(self, local_as: int) -> bool:
        return self.asn == local_as

    def enforces_next_hop(self, local_as: int) -> bool:
        """``enforce_next_hop`` resolved: explicit value, else True only for iBGP peers."""
        if self.enforce_next_hop is not None:
            return self.enforce_next_hop
        return self.is_ibgp(local_as)


@dataclass(frozen=True)
class ExportRoute:
    """An extra prefix we originate (service CIDRs: ClusterIP / ExternalIP / LoadBalancer
    ranges), with standard BGP communities ``"ASN:VALUE"`` (RFC 1997), e.g. ("64512:100",)."""

    prefix: IPv4Network
    communities: tuple[str, ...] = ()


@dataclass(frozen=True)
class SpeakerConfig:
    """Everything needed to run one node's speaker.

    ``announce``: prefixes we originate (normally the node's own blocks);
    ``import_pools``: learned prefixes must lie inside one of these;
    ``own_blocks``: learned prefixes overlapping these are rejected;
    ``node_ip``: learned routes with this next hop are rejected (our own routes reflected back);
    ``graceful_restart_time``: seconds advertised in the GR capability (RFC 4724 §3);
    ``state_dir``: where the rendered config and the relay socket live;
    ``exabgp_bin``: the ExaBGP executable (name on PATH or absolute path);
    ``exabgp_python``: when set, ExaBGP runs as ``<exabgp_python> bgp/exabgp_launch.py
    server <conf>`` instead, so pure withdrawals reach the speaker undecoded (that module's
    docstring has the measurements); exabgp must be importable by that interpreter.

    Import policy additions: ``import_extra``: further ranges accepted besides the pools;
    ``accept_default``: accept 0.0.0.0/0 (rejected as ``default`` otherwise);
    ``expected_next_hops``: node block → that node's IP (from the datastore; a route inside a
    block with another next hop is rejected as ``wrong_next_hop`` from peers that enforce it).

    Export: ``export_extra``: prefixes announced besides ``announce``, with communities.

    ``route_reflector_cluster_id``: when set, the speaker acts as a route reflector (RFC 4456)
    for its iBGP peers with this CLUSTER_ID; ``gr_stale_path_time``: seconds a restarted
    peer's stale routes may wait for its End-of-RIB once the session is back (bounds RFC 4724
    §4.2 when a peer never sends End-of-RIB).
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
    exabgp_python: str | None = None
    import_extra: tuple[IPv4Network, ...] = ()
    accept_default: bool = False
    expected_next_hops: Mapping[IPv4Network, IPv4Address] = field(default_factory=dict)
    export_extra: tuple[ExportRoute, ...] = ()
    route_reflector_cluster_id: IPv4Address | None = None
    gr_stale_path_time: int = 360


@dataclass(frozen=True, slots=True)  # slots: 100k+ of these in a full table
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
    # AS_PATH length for best path when it differs from len(as_path): an AS_SET counts 1
    # (RFC 4271 §9.1.2.2 a). None = len(as_path).
    as_path_length: int | None = None

    def path_length(self) -> int:
        return len(self.as_path) if self.as_path_length is None else self.as_path_length


@dataclass(frozen=True, slots=True)  # slots: 100k+ of these in a full table
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
    # Graceful restart, receiving side (RFC 4724 §4.2): routes kept as stale after the
    # session went down, and the restart time (s) the peer advertised in its last OPEN
    # (None: no GR capability seen).
    stale_routes: int = 0
    gr_restart_time: int | None = None
    # Times we tore the session down for exceeding max_prefixes (RFC 4486 subcode 1).
    max_prefixes_teardowns: int = 0
    # Routes currently reflected to this peer (route-reflector mode, RFC 4456).
    reflected_routes: int = 0
    rr_client: bool = False
    # Withdrawn and announced prefixes that arrived undecoded through bgp/exabgp_launch.py's
    # fast path, since the speaker started (0 with the plain exabgp entry point).
    withdrawn_undecoded: int = 0
    announced_undecoded: int = 0
    # Times the session left Established, and UPDATE messages received, since the speaker started.
    flaps: int = 0
    updates_received: int = 0


@dataclass(frozen=True)
class SpeakerStatus:
    """Whole-speaker status: ``exabgp_pid`` None when not running; ``exabgp_restarts`` counts
    starts after the first; ``last_exit`` describes the last exit (code and stderr tail);
    ``announced`` is the desired announced set; ``prefixes_sent``: prefixes handed to ExaBGP
    to announce / withdraw to every neighbor since the speaker started (``{"announce": n,
    "withdraw": n}``; ExaBGP packs them into UPDATEs, which it does not report);
    ``reloads``: SIGUSR1 sent to ExaBGP, ``reload_retries`` of them re-sent because ExaBGP had
    not loaded the config, ``reload_pending`` what the last check found wrong (empty when
    ExaBGP holds the configured neighbors; bgp/reload.py)."""

    peers: tuple[PeerStatus, ...]
    exabgp_pid: int | None
    exabgp_restarts: int
    last_exit: str | None
    announced: tuple[IPv4Network, ...]
    prefixes_sent: Mapping[str, int] = field(default_factory=dict)
    reloads: int = 0
    reload_retries: int = 0
    reload_pending: tuple[str, ...] = ()

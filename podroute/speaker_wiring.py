"""What the agent tells the BGP speaker: its config, its sessions, and the speaker it builds.

The sessions are the config's peers plus, with a datastore, the topology it implies
(:func:`podroute.datastore.peers_for`: mesh, route reflectors, global and per-node peers).
"""
from __future__ import annotations

import importlib.util
import shutil
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Awaitable, Callable, Mapping, Protocol

from bgp.drain import DrainReport
from bgp.model import BestRoute, ExportRoute, PeerConfig, SpeakerConfig, SpeakerStatus
from bgp.speaker import Speaker
from podroute.config import NodeConfig
from podroute.datastore import Cluster, PeerSpec, expected_next_hops, peers_for

OnChanges = Callable[[Mapping[int, "BestRoute | None"]], None]


class SpeakerPort(Protocol):
    """What the agent uses of a BGP speaker (bgp.speaker.Speaker; fakes in tests)."""

    config: SpeakerConfig

    def set_announcements(self, cidrs: tuple[IPv4Network, ...]) -> None: ...

    def set_peers(self, peers: tuple[PeerConfig, ...]) -> None: ...

    def set_expected_next_hops(self, hops: Mapping[IPv4Network, IPv4Address]) -> None: ...

    def status(self) -> SpeakerStatus: ...

    def best_routes_view(self) -> Mapping[IPv4Network, BestRoute]: ...

    def run(self) -> Awaitable[None]: ...

    def stop(self) -> Awaitable[None]: ...

    def drain(self, settle_s: float, timeout: float) -> Awaitable[DrainReport]: ...


# (node config, Loc-RIB change callback, cluster file or None) -> speaker
SpeakerFactory = Callable[[NodeConfig, OnChanges, "Cluster | None"], SpeakerPort]


def exabgp_bin() -> str:
    """The exabgp entry point next to the interpreter (the venv; PATH may not have it), else PATH's."""
    local = Path(sys.executable).parent / "exabgp"
    return str(local) if local.exists() else (shutil.which("exabgp") or "exabgp")


def exabgp_python() -> str | None:
    """This interpreter when it has ExaBGP (installed in the agent's own environment): ExaBGP then
    runs under bgp/exabgp_launch.py (pure withdrawals undecoded). Looks the module up without
    importing it."""
    return sys.executable if importlib.util.find_spec("exabgp") is not None else None


def peer_configs(cfg: NodeConfig, cluster: Cluster | None) -> tuple[PeerConfig, ...]:
    """The BGP sessions this node should have: config peers plus the cluster topology."""
    if cluster is not None:
        specs = peers_for(cfg.node_name, cluster, cfg.peers)
    else:
        specs = tuple(PeerSpec(p, "node") for p in cfg.peers)
    return tuple(
        PeerConfig(address=s.peer.address, asn=s.peer.asn, password=s.peer.password,
                   hold_time=s.peer.hold_time, passive=s.peer.passive, port=s.peer.port,
                   local_address=s.peer.source_address or cfg.node_ip, multihop_ttl=s.peer.multihop_ttl,
                   max_prefixes=s.peer.max_prefixes, max_prefixes_action=s.peer.max_prefixes_action,
                   rr_client=s.rr_client, name=s.node or None)
        for s in specs)


def next_hops(cluster: Cluster | None) -> dict[IPv4Network, IPv4Address]:
    """Block -> owning node IP from the cluster file ({} without one)."""
    return expected_next_hops(cluster) if cluster is not None else {}


def own_blocks(cfg: NodeConfig) -> tuple[IPv4Network, ...]:
    """The blocks import policy refuses to learn. A node that claims blocks at run time may
    release one that another node then claims, so the fixed list would refuse that node's
    route: there the expected next hops (every node's blocks, ours via our node IP) guard
    our blocks instead."""
    return () if cfg.datastore.claims_blocks else cfg.pod_cidrs


def speaker_config(cfg: NodeConfig, cluster: Cluster | None) -> SpeakerConfig:
    me = cluster.node(cfg.node_name) if cluster is not None else None
    return SpeakerConfig(router_id=cfg.bgp_router_id, local_as=cfg.asn, local_address=cfg.node_ip,
                         peers=peer_configs(cfg, cluster),
                         announce=cfg.pod_cidrs, import_pools=tuple(p.cidr for p in cfg.ip_pools),
                         own_blocks=own_blocks(cfg), node_ip=cfg.node_ip,
                         listen_address=cfg.listen_address, listen_port=cfg.listen_port,
                         graceful_restart_time=cfg.graceful_restart_time,
                         state_dir=cfg.paths.state_dir / "bgp", exabgp_bin=exabgp_bin(),
                         exabgp_python=exabgp_python(),
                         import_extra=cfg.import_extra, accept_default=cfg.accept_default,
                         expected_next_hops=next_hops(cluster),
                         export_extra=tuple(ExportRoute(s.cidr, s.communities) for s in cfg.service_cidrs),
                         route_reflector_cluster_id=me.rr_cluster_id if me else None)


def exabgp_speaker(cfg: NodeConfig, on_changes: OnChanges, cluster: Cluster | None) -> SpeakerPort:
    """The production SpeakerFactory: bgp.speaker.Speaker over ExaBGP."""
    return Speaker(speaker_config(cfg, cluster), on_changes=on_changes)


def apply_cluster(speaker: SpeakerPort, cfg: NodeConfig, cluster: Cluster) -> None:
    """A new cluster topology: re-derive the expected next hops, and the sessions when they
    differ from the speaker's (a block claimed anywhere changes the topology but not the
    sessions, and set_peers rewrites ExaBGP's config and reloads it)."""
    speaker.set_expected_next_hops(next_hops(cluster))
    peers = peer_configs(cfg, cluster)
    if peers != tuple(speaker.config.peers):
        speaker.set_peers(peers)

"""The shape of ``podroute status --json``: one dict built from the agent's collaborators.

Keys (statusd.render reads them): ``node``, ``started`` (unix s), ``bgp`` (peers, rejection
counts by reason, the ExaBGP process, announced prefixes, the Loc-RIB's first
:data:`STATUS_ROUTES` routes and its size), ``fib`` (routes desired per owner, the last apply,
resync/drift counters, whether our restart hold is on, failing routes, felix's thread),
``loop`` (the coordinator's loop-lag contract, :meth:`podroute.looplag.LoopLag.status`),
``encapsulation`` (:meth:`podroute.encap.Encap.status`), ``workloads`` (count), ``datastore``
(:func:`datastore_section`: None without a datastore), ``tasks``, ``task_failures`` and
``health`` (``{"ready": ..., "live": ...}``: the ``/readyz`` and ``/livez`` reports,
:mod:`podroute.health`). Everything is JSON-serialisable.
"""
from __future__ import annotations

import heapq
from typing import Any

from felix.worker import RouteTableWorker
from podroute.blocks_wiring import BlocksWiring
from podroute.clusterwatch import ClusterWatch
from podroute.config import NodeConfig
from podroute.speaker_wiring import SpeakerPort

STATUS_ROUTES = 100  # a status call must stay cheap with 100k routes: the first ones and a count
FIB_OWNERS = ("workloads", "blocks", "bgp")


def bgp_section(speaker: SpeakerPort, local_asn: int) -> dict[str, Any]:
    sp = speaker.status()
    passive = {p.address: p.passive for p in speaker.config.peers}  # effective: config + cluster file
    peers, rejections = [], {}
    for p in sp.peers:
        peers.append({"address": str(p.address), "asn": p.asn,
                      "type": "iBGP" if p.asn == local_asn else "eBGP",
                      "state": p.state, "since": p.since,
                      "prefixes_received": p.prefixes_received, "prefixes_accepted": p.prefixes_accepted,
                      "prefixes_rejected": p.prefixes_rejected, "info": p.last_error or "",
                      "stale_routes": p.stale_routes, "gr_restart_time": p.gr_restart_time,
                      "rr_client": p.rr_client, "reflected_routes": p.reflected_routes,
                      "eor_received": p.eor_received, "withdrawn_undecoded": p.withdrawn_undecoded,
                      "announced_undecoded": p.announced_undecoded,
                      "passive": passive.get(p.address)})
        for reason, n in p.rejected_by_reason:
            rejections[reason] = rejections.get(reason, 0) + n
    view = speaker.best_routes_view()
    return {"peers": peers, "rejections": rejections,
            "exabgp": {"pid": sp.exabgp_pid, "restarts": sp.exabgp_restarts, "last_exit": sp.last_exit},
            "announced": [str(a) for a in sp.announced],
            "routes_total": len(view),
            "routes": [{"prefix": str(r.prefix), "next_hops": [str(n) for n in r.next_hops],
                        "peers": [str(p) for p in r.peers]}
                       for r in heapq.nsmallest(STATUS_ROUTES, view.values(), key=lambda r: r.prefix)]}


def fib_section(routes: RouteTableWorker, *, last_apply: dict[str, Any] | None, resyncs: int,
                drifts: int, hold: bool, failing: int) -> dict[str, Any]:
    by_owner = {owner: len(routes.owned(owner)) for owner in FIB_OWNERS}
    by_owner["total"] = len(routes.desired())
    return {"protocol": routes.protocol, "desired_by_owner": by_owner, "last_apply": last_apply,
            "resyncs": resyncs, "monitor_triggers": drifts, "graceful_restart_hold": hold,
            "failing_routes": failing, "worker": routes.stats()}


def node_section(cfg: NodeConfig, blocks: BlocksWiring | None = None) -> dict[str, Any]:
    """``pod_cidrs``: the node's blocks now (claimed ones change at run time), else the config's."""
    cidrs = blocks.blocks if blocks is not None else cfg.pod_cidrs
    return {"name": cfg.node_name, "ip": str(cfg.node_ip), "asn": cfg.asn,
            "router_id": str(cfg.bgp_router_id), "pod_cidrs": [str(c) for c in cidrs]}


def datastore_section(cluster: ClusterWatch | None, blocks: BlocksWiring | None,
                      cfg: NodeConfig) -> dict[str, Any] | None:
    """The datastore's state (:meth:`ClusterWatch.status`: ``datastore``, ``location``, ``state``
    "connected"/"unavailable", ``available``, ``since``, ``revision``, ``nodes``, ``last_error``)
    and this node's blocks: ``blocks`` [{``cidr``, ``size``, ``used`` (None: not known),
    ``tunnel``}], ``tunnel_address``, ``claim_error`` (why the last claim failed, or None),
    ``max_blocks_per_host`` (0: no limit; None: the store does not claim). None without a
    datastore."""
    if cluster is None:
        return None
    if blocks is not None:
        return {**cluster.status(), **blocks.status()}
    static = [{"cidr": str(c), "size": c.num_addresses, "used": None, "tunnel": i == 0}
              for i, c in enumerate(cfg.pod_cidrs)]
    return {**cluster.status(), "blocks": static,
            "tunnel_address": str(cfg.pod_cidrs[0].network_address) if cfg.pod_cidrs else None,
            "claim_error": None, "max_blocks_per_host": None}

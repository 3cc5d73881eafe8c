"""Every metric family the agent exports, with its help text: the one owner of the names
(the collector, the per-operation instruments, the README's operator table and the tests
import them from here). The names the lab test and the alert rules use are fixed by the
session's contract: ``podroute_bgp_session_up``, ``podroute_fib_routes``,
``podroute_fib_write_errors_total``, ``podroute_ipam_block_addresses``, ``podroute_ready``.

Conventions (Prometheus naming): ``podroute_`` prefix, counters end in ``_total``, base units
(seconds, bytes). The process collector's ``process_*`` families (CPU seconds, resident
memory bytes, open fds) are prometheus_client's own.
"""
from __future__ import annotations

FIB_KINDS = ("remote", "blackhole", "workload", "tunnel")
CNI_COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC")

DOC: dict[str, str] = {
    # health
    "podroute_ready": "1 when /readyz is ok: FIB programmed, restart hold released, every peer Established once or reported absent",
    "podroute_health_check": "1 when the named /readyz or /livez check passes, 0 when it fails",
    # agent
    "podroute_event_loop_lag_seconds": "How late the agent's event loop ran its last tick (grows while the loop is blocked)",
    "podroute_event_loop_lag_worst_seconds": "Worst event-loop lag in the last 60 s",
    "podroute_event_loop_stalls_total": "Event-loop ticks later than the 0.25 s lag threshold",
    "podroute_exabgp_restarts_total": "ExaBGP process starts after the first",
    "podroute_exabgp_running": "1 while the ExaBGP child process runs",
    # BGP, per peer
    "podroute_bgp_session_up": "1 when the BGP session with the peer is Established, 0 otherwise",
    "podroute_bgp_session_state": "1 for the session's current state (idle, connect, established, down)",
    "podroute_bgp_session_state_seconds": "Seconds since the session's last state change",
    "podroute_bgp_prefixes_received": "Prefixes in the peer's Adj-RIB-In (accepted plus rejected)",
    "podroute_bgp_prefixes_accepted": "Prefixes from the peer accepted by import policy",
    "podroute_bgp_prefixes_rejected": "Prefixes from the peer rejected by import policy, by reason",
    "podroute_bgp_updates_received_total": "UPDATE messages received from the peer",
    "podroute_bgp_session_flaps_total": "Times the session left Established",
    "podroute_bgp_max_prefixes_teardowns_total": "Sessions torn down for exceeding maxPrefixes (RFC 4486 Cease subcode 1)",
    "podroute_bgp_stale_routes": "The peer's routes kept as stale by graceful restart (RFC 4724 4.2)",
    "podroute_bgp_end_of_rib_received": "1 once the peer's End-of-RIB arrived on the current session",
    "podroute_bgp_prefixes_sent_total": "Our prefixes handed to ExaBGP to announce or withdraw to every neighbor",
    "podroute_bgp_loc_rib_routes": "Best routes in the Loc-RIB",
    # FIB
    "podroute_fib_routes": "Routes of podroute's protocol in the FIB by kind (remote, blackhole, workload, tunnel)",
    "podroute_fib_desired_routes": "Routes felix wants, by owner (workloads, blocks, bgp)",
    "podroute_fib_apply_duration_seconds": "Duration of felix's apply() (diff and write desired vs kernel)",
    "podroute_fib_full_resync_duration_seconds": "Duration of the applies that re-read every route of ours from the kernel",
    "podroute_fib_route_writes_total": "Route writes that succeeded, by action (add, replace, delete)",
    "podroute_fib_write_errors_total": "Route writes the kernel refused, by errno",
    "podroute_fib_dump_errors_total": "Kernel route dumps that failed (nothing written by that apply)",
    "podroute_fib_drift_repairs_total": "Changes to our routes by someone else, seen by the netlink monitor (each re-reads and repairs)",
    "podroute_fib_periodic_resyncs_total": "Full resyncs started by the resyncInterval timer",
    "podroute_fib_conflict_routes": "Routes we want whose destination another protocol's route holds (EEXIST)",
    "podroute_fib_failing_routes": "Routes failing to program now, by errno (retried with backoff)",
    # CNI
    "podroute_cni_request_duration_seconds": "Duration of CNI requests handled by the agent, by command",
    "podroute_cni_requests_total": "CNI requests by command and result code (0 success, else the CNI error code)",
    "podroute_cni_pods": "Pods wired on this node (their /32 routes)",
    # IPAM
    "podroute_ipam_blocks": "IPAM blocks affine to this node",
    "podroute_ipam_block_addresses": "Addresses per IPAM block, used (allocated or reserved) or free",
    # datastore
    "podroute_datastore_connected": "1 while the datastore watch is connected",
    "podroute_datastore_watch_events_total": "Datastore watch events taken in (a full resync counts one)",
    "podroute_datastore_errors_total": "Datastore errors: data rejected plus attempts that found it unavailable",
    "podroute_datastore_revision": "Datastore revision of the last event taken in",
}

"""The agent-side CNI plugin: ADD / DEL / CHECK / STATUS for a no-bridge, Calico-style pod network.

Mirrors Calico's workload wiring (calico-cni ``dataplane/linux``) and the reference
``ptp`` plugin's semantics, over the :class:`cni.wiring.Wiring` seam:

* ADD (CNI spec 1.0.0 "ADD: Add container to network"): allocate ``<ip>`` from the
  node's block(s), create the veth with its peer directly in the pod netns as
  CNI_IFNAME, configure the pod end (``<ip>/32``, MTU, ``169.254.1.1 dev <if> scope
  link``, ``default via 169.254.1.1``) and the host end (proxy ARP, forwarding, up), then
  hand the workload to the WorkloadSink, the only writer of ``<ip>/32 dev <veth> scope link
  proto 90`` (felix in the agent), and answer once it reports the route programmed (as ptp
  answers after adding it; ``route_timeout`` bounds the wait: code 11). Any failure rolls
  back everything created, in reverse order. Repeating an ADD with
  identical parameters returns the same result, after completing the attachment if it is
  half-wired (:mod:`cni.reconcile`); a different netns or MTU is an error. An ADD whose
  caller went away before the answer is rolled back (:meth:`CNIPlugin.abandon`).
* DEL ("DEL: Remove container from network"): idempotent; a missing netns, link,
  route or allocation is not an error. Always releases the IP; the sink removes the route
  and DEL answers once it has. The host veth is retired
  (down, in a link group) and the pair deleted in batches by :meth:`CNIPlugin.reap`.
* CHECK ("CHECK: Check container's networking is as expected"): needs ``prevResult``
  (code 7 without it, where the reference plugins fail too); allocation, host veth (up,
  proxy_arp=1), host route, pod address/MTU/routes, and prevResult's address and interface
  MACs against the real ones (:mod:`cni.check`); mismatch -> code 999 naming what is wrong.
* STATUS (CNI 1.1 "STATUS: Check plugin status"; configs of cniVersion 1.1.0 and later):
  success when the agent can wire pods, code 50 with the reason otherwise (:mod:`cni.status`).
* GC (CNI spec 1.1.0 "GC: Clean up any stale resources"): see :mod:`cni.reconcile`.

Attachments are keyed as the spec keys them: (container ID, network name, CNI_IFNAME), the
IPAM handle ``"<network>.<containerID>.<ifname>"``. Host veth name: ``host_prefix`` + the
first hex digits of SHA-1 of ``"<containerID>/<network>/<ifname>"`` (Calico's scheme of a
hashed key under its own prefix; ``/`` occurs in none of the three), 15 characters, so two
attachments of one container (Multus' ``net1``, a second network) never share a pair.
Request fields are validated when the :class:`~cni.model.CNIRequest` is built
(:mod:`cni.validate`), the network name here (code 7).

Requests are serialised by one asyncio lock; blocking work runs in worker threads (two hops
per ADD, one per DEL: :mod:`cni.steps`), the WorkloadSink is awaited on the event loop thread;
results are shaped by :mod:`cni.result`.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from ipaddress import IPv4Address
from typing import Any, Callable, Mapping, Protocol, TypeVar

from nlcore.route import PODROUTE_PROTO

from . import validate
from .check import observe, prev_result_problems
from .errors import (INCOMPATIBLE_CNI_VERSION, INTERNAL, INVALID_ENVIRONMENT_VARIABLES, CNIError,
                     InvalidConfig, NetnsNotFound)
from .ipam import IPAM
from .model import CNIRequest, CNIResult, WorkloadEndpoint
from .reaper import Reaper
from .result import build as build_result, endpoint_from_attrs
from .reconcile import Reconciler, finish
from .route_writer import WiringRoutes, confirm_route
from .status import plugin_status
from .steps import Steps, in_thread
from .wiring import Wiring

log = logging.getLogger(__name__)
T = TypeVar("T")

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


class WorkloadSink(Protocol):
    """The only writer of each workload's /32 host route (felix in the agent, which also
    repairs drift). Each call returns once the route is programmed (added) or gone (removed),
    and raises if it could not be; the plugin bounds the wait."""

    async def workload_added(self, ep: WorkloadEndpoint) -> None: ...

    async def workload_removed(self, ep: WorkloadEndpoint) -> None: ...


def host_ifname_for(prefix: str, container_id: str, network: str, ifname: str) -> str:
    """``prefix`` + ``sha1("<container_id>/<network>/<ifname>")`` hex digits, cut to 15
    characters (IFNAMSIZ - 1): 12 digits (48 bits) under the 3-character ``prt``."""
    key = f"{container_id}/{network}/{ifname}"
    return (prefix + hashlib.sha1(key.encode()).hexdigest())[:validate.MAX_IFNAME]


class CNIPlugin:
    """The CNIHandler of the agent.

    ``mtu``: pod interface MTU in bytes (config ``"mtu"`` overrides per network);
    ``protocol``: route protocol of the host /32 routes (podroute's, PODROUTE_PROTO);
    ``workloads``: the route's writer (felix's sink; default :class:`cni.route_writer.WiringRoutes`,
    the plugin's own thread through ``wiring``); ``route_timeout``: seconds ADD and DEL wait
    for it; ``host_prefix``: host veth name prefix
    (1-4 chars, must not be Calico's ``cali``); ``reap_delay``: seconds between a DEL and the
    batched deletion of retired veth pairs; ``readiness``: called (on the event loop) by
    STATUS, returns None when the agent can wire pods or the reason it cannot.
    """

    def __init__(self, *, ipam: IPAM, wiring: Wiring, mtu: int, protocol: int = PODROUTE_PROTO,
                 workloads: WorkloadSink | None = None, host_prefix: str = "prt",
                 reap_delay: float = 0.2, route_timeout: float = 10.0,
                 readiness: Callable[[], str | None] | None = None) -> None:
        if not host_prefix or len(host_prefix) > 4 or host_prefix.startswith("cali"):
            raise ValueError(f"host_prefix {host_prefix!r} must be 1-4 chars and not 'cali'")
        if not 68 <= mtu <= 65535:
            raise ValueError(f"mtu {mtu} out of range 68..65535")
        if not 0 < protocol < 256:
            raise ValueError(f"route protocol {protocol} out of range 1..255")
        self.ipam = ipam
        self.wiring = wiring
        self.mtu = mtu
        self.protocol = protocol
        self.workloads: WorkloadSink = workloads if workloads is not None else WiringRoutes(wiring, protocol)
        self.route_timeout = route_timeout
        self.host_prefix = host_prefix
        self.readiness = readiness
        self._lock = asyncio.Lock()
        self._reaper = Reaper(self.reap, reap_delay)
        self._steps = Steps(ipam, wiring)
        # handle -> the result object of the latest successful ADD for it (see abandon()).
        self._answers: dict[str, CNIResult] = {}

    # -- CNIHandler -------------------------------------------------------------------------

    async def handle(self, req: CNIRequest) -> CNIResult:
        """Dispatch one request. Raises CNIError with the CNI code on failure."""
        if req.command == "STATUS":  # reads only: not queued behind ADDs and DELs
            await self.status(req)
            return None
        async with self._lock:
            if req.command == "ADD":
                result = await self.add(req)
                self._answers[self.handle_key(req.config["name"], req)] = result
                return result
            if req.command == "DEL":
                await self.delete(req)
                return None
            if req.command == "CHECK":
                await self.check(req)
                return None
            if req.command == "GC":  # CNI 1.1: see cni.reconcile
                await Reconciler(self).gc_request(req)
                return None
        raise CNIError(INVALID_ENVIRONMENT_VARIABLES, f"unknown CNI_COMMAND {req.command!r}")

    async def abandon(self, req: CNIRequest, result: CNIResult) -> None:
        """Roll back the ADD ``req`` that was answered with ``result`` but whose caller is
        gone (see :mod:`cni.server`): a DEL of that attachment, unless a later ADD for the same
        attachment has answered since (its caller holds that answer). Never raises: a failed
        rollback is logged, and the restart reconciler or a CNI GC finishes it."""
        async with self._lock:
            handle = self.handle_key(req.config["name"], req)
            if self._answers.get(handle) is not result:
                log.info("ADD %s: caller gone, but a later ADD answered for it; kept", handle)
                return
            try:
                await self.delete(req)
            except CNIError as e:
                log.error("ADD %s: rollback after the caller went away incomplete: %s",
                          handle, e.msg)
                return
            log.warning("ADD %s: rolled back, its caller went away before the answer", handle)

    def endpoints(self) -> list[WorkloadEndpoint]:
        """Current workloads, from the IPAM state (rebuilds felix's desired state at start)."""
        out = []
        for alloc in self.ipam.allocations().values():
            ep = endpoint_from_attrs(alloc.ip, alloc.attrs)
            if ep is not None:
                out.append(ep)
        return sorted(out, key=lambda e: e.ip)

    # -- helpers ----------------------------------------------------------------------------

    def host_ifname(self, req: CNIRequest) -> str:
        """The host veth name of ``req``'s attachment (see the module docstring)."""
        return host_ifname_for(self.host_prefix, req.container_id,
                               str(req.config.get("name")), req.ifname)

    def _parse_config(self, config: Mapping[str, Any]) -> tuple[str, str, int]:
        """-> (network name, cniVersion, mtu). Raises InvalidConfig (7) / CNIError (1)."""
        name = validate.network_name(config.get("name"))
        version = self._check_version(config.get("cniVersion"))
        mtu = config.get("mtu", self.mtu)
        if isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535:
            raise InvalidConfig(f"mtu {mtu!r} must be an integer in 68..65535")
        return name, version, mtu

    @staticmethod
    def _check_version(version: Any) -> str:
        if version not in SUPPORTED_VERSIONS:
            raise CNIError(INCOMPATIBLE_CNI_VERSION, f"incompatible CNI version "
                           f"{validate.shown(str(version))}; supported {list(SUPPORTED_VERSIONS)}")
        return version

    @staticmethod
    def handle_key(network: str, req: CNIRequest) -> str:
        return f"{network}.{req.container_id}.{req.ifname}"

    # -- ADD --------------------------------------------------------------------------------

    async def add(self, req: CNIRequest, readd: bool = True) -> dict[str, Any]:
        """CNI ADD. Returns the CNI result; raises CNIError (everything rolled back).

        Two worker-thread hops: the IPAM claim, then the wiring (with its own rollback); then
        the sink programs the host route, awaited on the loop (:meth:`_route_added`)."""
        network, version, mtu = self._parse_config(req.config)
        if not req.netns:
            raise CNIError(INVALID_ENVIRONMENT_VARIABLES, "CNI_NETNS is required for ADD")
        handle = self.handle_key(network, req)
        host_ifname = self.host_ifname(req)
        attrs = {"network": network, "container_id": req.container_id, "ifname": req.ifname,
                 "netns": req.netns, "host_ifname": host_ifname, "mtu": mtu,
                 "pod_namespace": req.pod_namespace, "pod_name": req.pod_name}

        alloc, created = await in_thread("IPAM allocation", self.ipam.claim, handle, attrs)
        if not created:
            return await self._repeat_add(req, alloc.ip, alloc.attrs, attrs, version, readd)
        ip = alloc.ip
        ep = WorkloadEndpoint(req.container_id, req.ifname, host_ifname, ip, req.netns,
                              req.pod_namespace, req.pod_name)
        host_mac, pod_mac = await in_thread("ADD wiring", self._steps.wire, req, handle, ip, host_ifname, mtu)
        try:
            await self._route_added(ep)
        except asyncio.CancelledError:
            raise  # agent shutdown: the record stands; the next start hands it to felix again
        except CNIError as e:
            await self._route_removed_quietly(ep, handle)
            await in_thread("ADD rollback", self._steps.unwire_added, handle, host_ifname)
            raise CNIError(e.code, f"ADD failed at host route: {e.msg}", e.details) from e
        log.info("ADD %s: %s/32 on %s (host %s)", handle, ip, req.ifname, host_ifname)
        return build_result(version, host_ifname, host_mac, req.ifname, pod_mac, req.netns, ip)

    async def _route_added(self, ep: WorkloadEndpoint) -> None:
        """The sink programs ``ep``'s host route; CNIError 11 if it does not answer within
        ``route_timeout`` s, 999 naming the failure if it reports one."""
        await self._sink("workload_added", self.workloads.workload_added, ep)

    async def _route_removed_quietly(self, ep: WorkloadEndpoint, handle: str) -> None:
        try:
            await self._sink("workload_removed", self.workloads.workload_removed, ep)
        except CNIError as e:
            log.error("ADD %s rollback: %s", handle, e.msg)

    async def _sink(self, what: str, call: Callable[[WorkloadEndpoint], Any],
                    ep: WorkloadEndpoint) -> None:
        await confirm_route(what, call, ep, self.route_timeout)

    async def _repeat_add(self, req: CNIRequest, ip: IPv4Address, old: Mapping[str, Any],
                          new: Mapping[str, Any], version: str,
                          readd: bool = True) -> dict[str, Any]:
        """ADD for an attachment IPAM already has: the same result if it is whole; repaired in
        place if it is half-wired (:func:`cni.reconcile.finish`); else rolled back and added
        afresh (once: ``readd``). A different netns or MTU is an error (code 999). The host
        veth is the one the record names, whatever name this ADD would have picked."""
        keys = ("netns", "mtu")  # what the request sets; the host name is the allocation's
        diff = [k for k in keys if old.get(k) != new.get(k)]
        host_ifname = old.get("host_ifname") or new["host_ifname"]  # kept across renames
        if diff:
            raise CNIError(INTERNAL, f"container {req.container_id} interface {req.ifname} is "
                           f"already attached with different {', '.join(diff)}; DEL it first",
                           f"existing {dict((k, old.get(k)) for k in keys)}")
        try:
            seen = await in_thread("read the attachment", observe, self.wiring, self.protocol,
                                    req.netns, req.ifname, ip, host_ifname, int(new["mtu"]))
        except NetnsNotFound:
            await self.delete(req)  # code 3 tells the runtime not to DEL: nothing may stay
            raise
        if seen.problems or seen.host is None or seen.pod is None:
            # Half-wired (a crash mid-ADD, or something removed a piece): a runtime retries
            # the ADD and will not DEL for us, so complete it, or start it over.
            handle = self.handle_key(new["network"], req)
            why = "; ".join(seen.problems)
            try:
                await in_thread("repair", finish, self.wiring, ip,
                                 {**new, "host_ifname": host_ifname}, self.protocol, int(new["mtu"]))
                await self._route_added(WorkloadEndpoint(
                    req.container_id, req.ifname, host_ifname, ip, req.netns, req.pod_namespace, req.pod_name))
                log.warning("ADD %s: repeated for a broken attachment (%s); repaired", handle, why)
            except CNIError as e:
                if not readd:
                    raise CNIError(e.code, f"ADD {handle}: attachment still broken after a "
                                   f"rollback and a new ADD: {e.msg}", e.details) from e
                log.warning("ADD %s: repeated for a broken attachment (%s); repair failed (%s); "
                            "rolling back and adding again", handle, why, e.msg)
                await self.delete(req)
                return await self.add(req, readd=False)
            seen = await in_thread("read the attachment", observe, self.wiring, self.protocol,
                                    req.netns, req.ifname, ip, host_ifname, int(new["mtu"]))
            if seen.host is None or seen.pod is None:
                raise CNIError(INTERNAL, f"ADD {handle}: repaired attachment is still missing "
                               f"pieces: {'; '.join(seen.problems)}")
        return build_result(version, host_ifname, seen.host.mac, req.ifname,
                            seen.pod.mac, req.netns, ip)

    # -- DEL --------------------------------------------------------------------------------

    async def delete(self, req: CNIRequest) -> None:
        """CNI DEL. Idempotent; raises CNIError 999 only if an existing object could not be
        removed (the IP is released regardless, and a retry finishes the job).

        On return the pod is detached: its host veth down in the retired group, its IP
        released, and its host route gone (removed by the sink, awaited: one thread hop, then
        the sink). The veth pair itself is deleted by :meth:`reap` moments later, batched with
        other DELs (see :mod:`cni.netlink_wiring`)."""
        name = validate.network_name(req.config.get("name"))
        handle = self.handle_key(name, req)
        self._answers.pop(handle, None)
        alloc, errors, retired = await in_thread("DEL", self._steps.unwire, req, handle, self.host_ifname(req))
        if alloc is not None:
            host_ifname = alloc.attrs.get("host_ifname") or self.host_ifname(req)
            ep = endpoint_from_attrs(alloc.ip, alloc.attrs) or WorkloadEndpoint(
                req.container_id, req.ifname, host_ifname, alloc.ip, req.netns)
            try:
                await self._sink("workload_removed", self.workloads.workload_removed, ep)
            except CNIError as e:
                errors.append(e.msg)
        if retired:
            self._schedule_reap()
        if errors:
            raise CNIError(INTERNAL, f"DEL incomplete: {'; '.join(errors)}")
        log.info("DEL %s: done (ip %s)", handle, alloc.ip if alloc else None)

    # -- retired veths ----------------------------------------------------------------------

    @property
    def reap_delay(self) -> float:
        return self._reaper.delay

    @reap_delay.setter
    def reap_delay(self, seconds: float) -> None:
        self._reaper.delay = seconds

    def _schedule_reap(self) -> None:
        self._reaper.schedule()

    async def reap(self) -> bool:
        """Delete every retired veth pair now (one netlink request for all); True if there
        were some. Raises CNIError if the kernel refused. The agent calls it at start for
        pairs retired by a previous run."""
        return bool(await in_thread("delete retired veths", self.wiring.reap_retired))

    # -- CHECK ------------------------------------------------------------------------------

    async def check(self, req: CNIRequest) -> None:
        """CNI CHECK. Raises CNIError 7 without a usable ``prevResult``, 999 naming every
        mismatch found (see :mod:`cni.check`)."""
        network, version, mtu = self._parse_config(req.config)
        if not req.netns:
            raise CNIError(INVALID_ENVIRONMENT_VARIABLES, "CNI_NETNS is required for CHECK")
        prev = req.config.get("prevResult")
        if prev is None:
            raise InvalidConfig("CHECK needs prevResult, the result of the ADD it checks "
                                "(CNI spec: the runtime must include it)")
        if not isinstance(prev, dict):
            raise InvalidConfig("prevResult must be a JSON object (a CNI result)")
        handle = self.handle_key(network, req)
        alloc = await in_thread("IPAM lookup", self.ipam.get, handle)
        if alloc is None:
            raise CNIError(INTERNAL, f"CHECK: no IP allocation for {handle}")
        host_ifname = alloc.attrs.get("host_ifname") or self.host_ifname(req)
        seen = await in_thread("read the attachment", observe, self.wiring, self.protocol,
                                req.netns, req.ifname, alloc.ip, host_ifname, mtu)
        problems = [*seen.problems,
                    *prev_result_problems(prev, req.ifname, req.netns, host_ifname, alloc.ip, seen)]
        if problems:
            raise CNIError(INTERNAL, "CHECK failed: " + "; ".join(problems))

    # -- STATUS -----------------------------------------------------------------------------

    async def status(self, req: CNIRequest) -> None:
        """CNI STATUS (see :mod:`cni.status`): returns when the agent can service ADD; raises
        CNIError 50 with the reason otherwise, 1 for a config older than 1.1.0, 7 for a
        config without a valid name."""
        validate.network_name(req.config.get("name"))
        await plugin_status(self._check_version(req.config.get("cniVersion")), self.ipam,
                            self.readiness)

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
per ADD, one per DEL), the WorkloadSink is awaited on the event loop thread.
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
from .errors import (HOST_NS, INCOMPATIBLE_CNI_VERSION, INTERNAL, INVALID_ENVIRONMENT_VARIABLES,
                     CNIError, InterfaceExists, InvalidConfig, NetnsNotFound)
from .ipam import IPAM
from .model import CNIRequest, CNIResult, WorkloadEndpoint
from .reaper import Reaper
from .reconcile import Reconciler, finish
from .route_writer import WiringRoutes, confirm_route
from .status import plugin_status
from .wiring import GATEWAY, Wiring

log = logging.getLogger(__name__)
T = TypeVar("T")

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
_OLD_RESULT_FORMAT = ("0.3.0", "0.3.1", "0.4.0")  # ips[] entries carry "version": "4"


async def _in_thread(what: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread; non-CNI exceptions become code 999 naming ``what``. If the caller is cancelled meanwhile (agent shutdown),
    the thread still finishes (it cannot be stopped) and its own rollback or commit stands; the
    cancellation is re-raised once it has. Nothing is leaked by that: a finished ADD is in the
    IPAM state, which the runtime's retry (ADD is idempotent) or DEL and the next agent start
    (felix's endpoints) all read."""
    fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        try:
            await fut
        except BaseException:
            pass
        raise
    except CNIError:
        raise
    except Exception as e:  # a bug or an unexpected OS error: still a CNI error
        raise CNIError(INTERNAL, f"{what} failed: {e}", repr(e)) from e


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
            ep = self._endpoint_from_attrs(alloc.ip, alloc.attrs)
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

    @staticmethod
    def _endpoint_from_attrs(ip: IPv4Address, attrs: Mapping[str, Any]) -> WorkloadEndpoint | None:
        try:
            return WorkloadEndpoint(container_id=attrs["container_id"], ifname=attrs["ifname"],
                                    host_ifname=attrs["host_ifname"], ip=ip,
                                    netns=attrs.get("netns", ""),
                                    pod_namespace=attrs.get("pod_namespace"),
                                    pod_name=attrs.get("pod_name"))
        except KeyError:
            return None

    def _result(self, version: str, host_ifname: str, host_mac: str, ifname: str, pod_mac: str,
                netns: str, ip: IPv4Address) -> dict[str, Any]:
        ipc: dict[str, Any] = {"address": f"{ip}/32", "gateway": str(GATEWAY), "interface": 1}
        if version in _OLD_RESULT_FORMAT:
            ipc["version"] = "4"
        return {
            "cniVersion": version,
            "interfaces": [{"name": host_ifname, "mac": host_mac},
                           {"name": ifname, "mac": pod_mac, "sandbox": netns}],
            "ips": [ipc],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {},
        }

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

        alloc, created = await _in_thread("IPAM allocation", self.ipam.claim, handle, attrs)
        if not created:
            return await self._repeat_add(req, alloc.ip, alloc.attrs, attrs, version, readd)
        ip = alloc.ip
        ep = WorkloadEndpoint(req.container_id, req.ifname, host_ifname, ip, req.netns,
                              req.pod_namespace, req.pod_name)
        host_mac, pod_mac = await _in_thread("ADD wiring", self._wire, req, handle, ip, host_ifname, mtu)
        try:
            await self._route_added(ep)
        except asyncio.CancelledError:
            raise  # agent shutdown: the record stands; the next start hands it to felix again
        except CNIError as e:
            await self._route_removed_quietly(ep, handle)
            await _in_thread("ADD rollback", self._unwire_added, handle, host_ifname)
            raise CNIError(e.code, f"ADD failed at host route: {e.msg}", e.details) from e
        log.info("ADD %s: %s/32 on %s (host %s)", handle, ip, req.ifname, host_ifname)
        return self._result(version, host_ifname, host_mac, req.ifname, pod_mac, req.netns, ip)

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

    def _unwire_added(self, handle: str, host_ifname: str) -> None:
        """Worker thread: undo a wired ADD whose route failed (veth pair, then the IP)."""
        try:
            self.wiring.delete_host_veth(host_ifname)
        except Exception:
            log.exception("ADD %s rollback: delete veth failed", handle)
        self._release_quietly(handle)

    def _wire(self, req: CNIRequest, handle: str, ip: IPv4Address, host_ifname: str,
              mtu: int) -> tuple[str, str]:
        """Worker thread: veth, both sides -> (host MAC, pod MAC). On any failure undoes what it
        did (and releases ``handle``'s IP), then raises CNIError naming the step."""
        w = self.wiring
        undo: list[tuple[str, Callable[[], Any]]] = [("release IP", lambda: self.ipam.release(handle))]
        step = "create_veth_in_netns"
        try:
            self._create_veth(handle, req, host_ifname, mtu)
            undo.append(("delete veth", lambda: w.delete_host_veth(host_ifname)))
            step = "configure_pod_side"
            pod_mac = w.configure_pod_side(req.netns, req.ifname, ip, mtu)
            step = "configure_host_side"
            host_mac = w.configure_host_side(host_ifname)
            return host_mac, pod_mac
        except BaseException as e:
            for name, fn in reversed(undo):
                try:
                    fn()
                except Exception:
                    log.exception("ADD %s rollback: %s failed", handle, name)
            if isinstance(e, InterfaceExists):
                raise CNIError(e.code, f"ADD failed at {step}: {e.msg}", e.details) from e
            if isinstance(e, CNIError):
                msg = e.msg if e.msg.startswith(step) else f"ADD failed at {step}: {e.msg}"
                raise CNIError(e.code, msg, e.details) from e
            if isinstance(e, Exception):
                raise CNIError(INTERNAL, f"ADD failed at {step}: {e}", repr(e)) from e
            raise

    def _create_veth(self, handle: str, req: CNIRequest, host_ifname: str, mtu: int) -> None:
        """Create the pair; a name held by a retired pair (a DEL of this pod or netns not yet
        reaped: the runtime's ADD-DEL-ADD retry) or by a leftover host veth that no other
        attachment's allocation owns is freed first. Raises InterfaceExists if the name is
        still taken after that, CNIError 999 naming the owner if another attachment holds it."""
        w = self.wiring
        reaped = stale_deleted = False
        while True:
            try:
                w.create_veth_in_netns(host_ifname, req.netns, req.ifname, mtu)
                return
            except InterfaceExists as e:
                if not reaped:
                    reaped = True
                    if w.reap_retired():
                        continue
                if e.ifname == host_ifname and e.where == HOST_NS and not stale_deleted:
                    owner = next((h for h, a in self.ipam.allocations().items()
                                  if h != handle and a.attrs.get("host_ifname") == host_ifname),
                                 None)
                    if owner is not None:  # a live attachment's pair, never "stale"
                        raise CNIError(INTERNAL, f"host veth name {host_ifname} of {handle} is "
                                       f"held by attachment {owner}") from e
                    # Calico does the same: a veth nobody owns is from a dead sandbox.
                    log.warning("ADD %s: deleting stale host veth %s", handle, host_ifname)
                    w.delete_host_veth(host_ifname)
                    stale_deleted = True
                    continue
                raise

    def _release_quietly(self, handle: str) -> None:
        try:
            self.ipam.release(handle)
        except Exception:
            log.exception("rollback: releasing the IP of %s failed", handle)

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
            seen = await _in_thread("read the attachment", observe, self.wiring, self.protocol,
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
                await _in_thread("repair", finish, self.wiring, ip,
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
            seen = await _in_thread("read the attachment", observe, self.wiring, self.protocol,
                                    req.netns, req.ifname, ip, host_ifname, int(new["mtu"]))
            if seen.host is None or seen.pod is None:
                raise CNIError(INTERNAL, f"ADD {handle}: repaired attachment is still missing "
                               f"pieces: {'; '.join(seen.problems)}")
        return self._result(version, host_ifname, seen.host.mac, req.ifname,
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
        alloc, errors, retired = await _in_thread("DEL", self._unwire, req, handle)
        if alloc is not None:
            host_ifname = alloc.attrs.get("host_ifname") or self.host_ifname(req)
            ep = self._endpoint_from_attrs(alloc.ip, alloc.attrs) or WorkloadEndpoint(
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

    def _unwire(self, req: CNIRequest, handle: str) -> tuple[Any, list[str], bool]:
        """Worker thread: -> (allocation or None, errors, host veth retired)."""
        w = self.wiring
        errors: list[str] = []

        def attempt(what: str, fn: Callable[..., Any], *args: Any) -> Any:
            try:
                return fn(*args)
            except CNIError as e:
                errors.append(f"{what}: {e.msg}")
            except Exception as e:
                errors.append(f"{what}: {e!r}")
            return None

        try:
            allocs = self.ipam.allocations()
        except CNIError as e:
            raise CNIError(e.code, f"DEL failed at IPAM lookup: {e.msg}", e.details) from e
        alloc = allocs.get(handle)
        attrs = dict(alloc.attrs) if alloc else {}
        host_ifname = attrs.get("host_ifname") or self.host_ifname(req)
        retired = False
        if not any(h != handle and a.attrs.get("host_ifname") == host_ifname
                   for h, a in allocs.items()):
            # The pair is ours alone. Retiring the host end detaches the pod at once; the
            # deletion of both ends is batched by reap().
            retired = bool(attempt("retire host veth", w.retire_host_veth, host_ifname))
        if req.netns and not retired:
            attempt("delete pod interface", w.delete_pod_iface, req.netns, req.ifname)
        try:
            self.ipam.release(handle)
        except CNIError as e:
            errors.append(f"IPAM release: {e.msg}")
        return alloc, errors, retired

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
        return bool(await _in_thread("delete retired veths", self.wiring.reap_retired))

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
        alloc = await _in_thread("IPAM lookup", self.ipam.get, handle)
        if alloc is None:
            raise CNIError(INTERNAL, f"CHECK: no IP allocation for {handle}")
        host_ifname = alloc.attrs.get("host_ifname") or self.host_ifname(req)
        seen = await _in_thread("read the attachment", observe, self.wiring, self.protocol,
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

"""The blocking half of CNI ADD and DEL: what a worker thread runs over the Wiring seam and
the IPAM state, each step with its own rollback (the ptp plugin's shape: ADD undoes what it
created, in reverse order; DEL swallows not-found). :class:`cni.plugin.CNIPlugin` orchestrates
these on the event loop through :func:`in_thread`; nothing here touches the loop."""
from __future__ import annotations

import asyncio
import logging
from ipaddress import IPv4Address
from typing import Any, Callable, TypeVar

from .errors import HOST_NS, INTERNAL, CNIError, InterfaceExists
from .ipam import IPAM
from .model import CNIRequest
from .wiring import Wiring

log = logging.getLogger("cni.plugin")  # the plugin's log: one stream per request
T = TypeVar("T")


async def in_thread(what: str, fn: Callable[..., T], *args: Any) -> T:
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


class Steps:
    """The worker-thread steps of ADD and DEL for one IPAM state and one Wiring."""

    def __init__(self, ipam: IPAM, wiring: Wiring) -> None:
        self.ipam = ipam
        self.wiring = wiring

    def wire(self, req: CNIRequest, handle: str, ip: IPv4Address, host_ifname: str,
              mtu: int) -> tuple[str, str]:
        """Worker thread: veth, both sides -> (host MAC, pod MAC). On any failure undoes what it
        did (and releases ``handle``'s IP), then raises CNIError naming the step."""
        w = self.wiring
        undo: list[tuple[str, Callable[[], Any]]] = [("release IP", lambda: self.ipam.release(handle))]
        step = "create_veth_in_netns"
        try:
            self.create_veth(handle, req, host_ifname, mtu)
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


    def create_veth(self, handle: str, req: CNIRequest, host_ifname: str, mtu: int) -> None:
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


    def unwire_added(self, handle: str, host_ifname: str) -> None:
        """Worker thread: undo a wired ADD whose route failed (veth pair, then the IP)."""
        try:
            self.wiring.delete_host_veth(host_ifname)
        except Exception:
            log.exception("ADD %s rollback: delete veth failed", handle)
        self.release_quietly(handle)


    def release_quietly(self, handle: str) -> None:
        try:
            self.ipam.release(handle)
        except Exception:
            log.exception("rollback: releasing the IP of %s failed", handle)


    def unwire(self, req: CNIRequest, handle: str, default_host_ifname: str) -> tuple[Any, list[str], bool]:
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
        host_ifname = attrs.get("host_ifname") or default_host_ifname
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

"""The per-operation instruments: what no component counts already, observed once per
operation (one felix apply, one CNI request), never per route or per pod.

- :meth:`Instruments.felix_applied` is felix's ``on_apply`` hook
  (:class:`podroute.felix_loop.FelixDriver`): the apply duration histogram, the full-resync
  duration histogram (applies that re-read the kernel), successful writes by action, refused
  writes by errno, failed dumps;
- :class:`InstrumentedCNI` wraps the agent's CNI handler (:class:`cni.server.CNIHandler`):
  the request duration histogram and the result counter by CNI error code (0: success; 999:
  the handler crashed, as :mod:`cni.server` answers it).
"""
from __future__ import annotations

import errno as E
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from cni.errors import INTERNAL, CNIError
from cni.model import CNIRequest, CNIResult
from cni.server import CNIHandler
from felix.routetable import ApplyResult
from podroute.metrics.names import CNI_COMMANDS, DOC

# Incremental applies take ~1 ms, a full 100k-route sync ~1 s, a stuck RTNL much longer.
APPLY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RESYNC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# CNI ADD: ~10-50 ms (veth, IPAM, the route through felix); the shim times out at 30 s.
CNI_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _name(n: str) -> str:
    # prometheus_client appends _total to a Counter's name itself
    return n[:-6] if n.endswith("_total") else n


class Instruments:
    """The histograms and counters, registered in ``registry`` (one per agent)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def hist(name: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, DOC[name], labels, registry=registry, buckets=buckets)

        def counter(name: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(_name(name), DOC[name], labels, registry=registry)

        self.apply_s = hist("podroute_fib_apply_duration_seconds", (), APPLY_BUCKETS)
        self.resync_s = hist("podroute_fib_full_resync_duration_seconds", (), RESYNC_BUCKETS)
        writes = counter("podroute_fib_route_writes_total", ("action",))
        self._writes = {a: writes.labels(a) for a in ("add", "replace", "delete")}
        self.write_errors = counter("podroute_fib_write_errors_total", ("errno",))
        self.dump_errors = counter("podroute_fib_dump_errors_total")
        self.cni_s = hist("podroute_cni_request_duration_seconds", ("command",), CNI_BUCKETS)
        self.cni_results = counter("podroute_cni_requests_total", ("command", "code"))
        for cmd in ("ADD", "DEL", "CHECK"):
            self.cni_s.labels(cmd)  # present (count 0) before the first request
            self.cni_results.labels(cmd, "0")

    def felix_applied(self, res: ApplyResult) -> None:
        """Felix's ``on_apply`` hook (module doc); on the event loop, once per apply."""
        self.apply_s.observe(res.duration_s)
        if res.full_sync:
            self.resync_s.observe(res.duration_s)
        w = self._writes
        if res.added:
            w["add"].inc(res.added)
        if res.replaced:
            w["replace"].inc(res.replaced)
        if res.deleted:
            w["delete"].inc(res.deleted)
        if res.errors:
            by_errno: dict[int, int] = {}
            for f in res.errors:
                if f.route is None:
                    self.dump_errors.inc()
                else:
                    by_errno[f.errno] = by_errno.get(f.errno, 0) + 1
            for no, n in by_errno.items():
                self.write_errors.labels(E.errorcode.get(no, str(no))).inc(n)


class InstrumentedCNI:
    """A :class:`cni.server.CNIHandler` timing and counting ``handler``'s requests (module doc).
    Commands outside the CNI spec's set are counted as ``other`` (the label stays bounded)."""

    def __init__(self, handler: CNIHandler, inst: Instruments) -> None:
        self.handler = handler
        self._inst = inst

    async def handle(self, req: CNIRequest) -> CNIResult:
        cmd = req.command if req.command in CNI_COMMANDS else "other"
        t0 = time.perf_counter()
        code = 0
        try:
            return await self.handler.handle(req)
        except CNIError as e:
            code = e.code
            raise
        except Exception:
            code = INTERNAL
            raise
        finally:
            self._inst.cni_s.labels(cmd).observe(time.perf_counter() - t0)
            self._inst.cni_results.labels(cmd, str(code)).inc()

    async def abandon(self, req: CNIRequest, result: CNIResult) -> None:
        await self.handler.abandon(req, result)

    def __getattr__(self, name: str) -> Any:  # the rest of the plugin's surface, unchanged
        return getattr(self.handler, name)

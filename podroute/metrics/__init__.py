"""The agent's Prometheus metrics (``prometheus_client``), served with the health endpoints.

:class:`AgentMetrics` holds one :class:`prometheus_client.CollectorRegistry` per agent (not
the library's global one: tests run several agents in one process) with:

- :class:`podroute.metrics.collector.AgentCollector`: gauges and counters read from the
  agent's state at scrape time (nothing on the hot path);
- :class:`podroute.metrics.instruments.Instruments`: histograms and the counters no component
  keeps, observed once per felix apply and per CNI request;
- prometheus_client's ``ProcessCollector`` (``process_cpu_seconds_total``,
  ``process_resident_memory_bytes``, ``process_open_fds``, ...): the agent's own process.

:meth:`AgentMetrics.install` hooks the instruments into the agent (felix's ``on_apply``, the
CNI handler); :meth:`AgentMetrics.run` is the agent's guarded task that serves
:mod:`podroute.metrics.server` until cancelled. The names are in
:mod:`podroute.metrics.names`.
"""
from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, disable_created_metrics, generate_latest

from podroute.metrics.collector import AgentCollector
from podroute.metrics.instruments import InstrumentedCNI, Instruments
from podroute.metrics.server import Listener

__all__ = ["AgentMetrics"]


class AgentMetrics:
    """The metrics of ``agent`` (:class:`podroute.agent.Agent`), served on ``address``:``port``
    (port 0: any free port, then :attr:`port`)."""

    def __init__(self, agent: Any, address: str, port: int) -> None:
        # The *_created series (counter and histogram creation times) double the exposition
        # and no rule or dashboard here reads them; the library's only switch is global.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        self.instruments = Instruments(self.registry)
        self.collector = AgentCollector(agent)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)
        self.listener = Listener(address, port, self.registry, agent.health.liveness, agent.health.served)

    def install(self, agent: Any) -> None:
        """Hook the per-operation instruments into ``agent``: felix's apply hook and the
        handler its CNI server serves."""
        agent.felix.on_apply = self.instruments.felix_applied
        agent.cni_handler = InstrumentedCNI(agent.cni_handler, self.instruments)

    @property
    def port(self) -> int | None:
        return self.listener.port

    def exposition(self) -> bytes:
        """The text a scrape gets (from a thread other than the loop's: it waits on the loop)."""
        return generate_latest(self.registry)

    async def run(self) -> None:
        """Serve until cancelled. Raises OSError when the address cannot be bound."""
        self.collector.bind(asyncio.get_running_loop())
        self.listener.start()
        try:
            await asyncio.Event().wait()
        finally:
            self.listener.stop()

"""CNI STATUS (spec 1.1 "STATUS: Check plugin status"): can this node service ADD now?

A plugin must succeed when it is ready to service ADD, and fail with code 50 ("the plugin is
not available", libcni ``ErrPluginNotAvailable``) when it knows it cannot: here when the
agent's readiness callable names a reason (shutting down, a failed task, routes never
programmed: :meth:`podroute.agent.Agent.cni_readiness`), when the IPAM state cannot be read,
or when no address is free (the spec's "resources are exhausted" case). STATUS exists only
for configs of cniVersion 1.1.0 and later; older ones get code 1, as libcni's skel answers.
The shim answers 50 by itself when the agent cannot be reached (:mod:`cni.shim`).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

from .errors import INCOMPATIBLE_CNI_VERSION, PLUGIN_NOT_AVAILABLE, CNIError
from .ipam import IPAM

log = logging.getLogger(__name__)

STATUS_SINCE = (1, 1, 0)


def version_tuple(version: str) -> tuple[int, ...]:
    """``"1.1.0"`` -> ``(1, 1, 0)``. Raises ValueError on a malformed version."""
    return tuple(int(p) for p in version.split("."))


async def plugin_status(version: str, ipam: IPAM,
                        readiness: Callable[[], str | None] | None) -> None:
    """Return if ADD can be serviced; raise CNIError 50 with the reason, or 1 if ``version``
    (a supported cniVersion) predates STATUS. ``readiness`` runs on the calling (event
    loop) thread and must not block; the IPAM read runs in a worker thread."""
    if version_tuple(version) < STATUS_SINCE:
        raise CNIError(INCOMPATIBLE_CNI_VERSION,
                       f"config version {version} does not allow STATUS (1.1.0 or later)")
    if readiness is not None:
        try:
            reason = readiness()
        except Exception as e:  # a readiness bug must still answer STATUS
            log.exception("STATUS: readiness check failed")
            reason = f"readiness check failed: {e!r}"
        if reason:
            raise CNIError(PLUGIN_NOT_AVAILABLE, f"podroute agent is not ready: {reason}")
    try:
        free = await asyncio.to_thread(ipam.free_count)
    except CNIError as e:
        raise CNIError(PLUGIN_NOT_AVAILABLE, f"IPAM state is not usable: {e.msg}",
                       e.details) from e
    except Exception as e:
        raise CNIError(PLUGIN_NOT_AVAILABLE, f"IPAM state is not usable: {e!r}") from e
    if free <= 0:
        raise CNIError(PLUGIN_NOT_AVAILABLE,
                       "no free address in IPAM blocks " + ", ".join(map(str, ipam.blocks)))

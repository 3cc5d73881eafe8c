"""The agent's graceful-restart hold after a restart (RFC 4724 §4.1): the routes kept from
the previous run stay until End-of-RIB from every configured peer, not only those whose
sessions came back first (in a mesh the node we dial is up long before the one that dials us)."""
from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from podroute.agent import Agent


def agent_with(peers):
    agent = Agent.__new__(Agent)   # only what _bgp_converged reads; the rest needs a kernel
    agent.speaker = NS(status=lambda: NS(peers=tuple(NS(state=s, eor_received=e) for s, e in peers)))
    return agent


@pytest.mark.parametrize("peers,converged", [
    ([("established", True), ("established", True)], True),
    ([("established", True), ("connect", False)], False),    # the other session not back yet
    ([("established", True), ("idle", False)], False),
    ([("established", True), ("established", False)], False),  # up, End-of-RIB still to come
    ([], False),
])
def test_converged_needs_end_of_rib_from_every_configured_peer(peers, converged):
    assert agent_with(peers)._bgp_converged() is converged

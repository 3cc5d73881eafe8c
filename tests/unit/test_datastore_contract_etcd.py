"""The Datastore contract (tests/contract/datastore_contract.py) on EtcdDatastore against a real
etcd on loopback (the ``etcd_server`` fixture), including the outage test: the fixture's etcd is
stopped and started by PID."""
from __future__ import annotations

import pytest

from etcdstoreutil import EtcdHarness
from tests.contract.datastore_contract import *  # noqa: F401,F403 - the contract's test functions


@pytest.fixture
async def harness(etcd_server):
    h = EtcdHarness(etcd_server)
    yield h
    await h.close()

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from nsutil import netns as _netns  # noqa: E402


def _can_netns() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def pytest_collection_modifyitems(config, items):
    if _can_netns():
        return
    skip = pytest.mark.skip(reason="needs root and iproute2 for network namespaces")
    for item in items:
        if "privileged" in item.keywords or "e2e" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def make_netns():
    """Factory fixture: ``make_netns(tag)`` returns a fresh namespace name, deleted at teardown."""
    stack = []

    def make(tag: str = "t") -> str:
        cm = _netns(tag)
        name = cm.__enter__()
        stack.append(cm)
        return name

    yield make
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory):
    """A real etcd on loopback (tests/etcdutil.py), one per test module, stopped by PID at teardown.
    Tests that stop it must leave it running again (``etcd_server.restart()``)."""
    from etcdutil import EtcdServer

    if shutil.which("etcd") is None:
        pytest.skip("needs Debian's etcd-server (scripts/setup installs it)")
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def kube_apiserver(tmp_path_factory):
    """A real kube-apiserver with its own etcd on loopback, RBAC on, podroute's CRDs and role
    applied (tests/kubeutil.py), one per test module, stopped by PID at teardown. Tests that stop
    the API server must leave it running again (``kube_apiserver.start_apiserver()``)."""
    from kubeutil import KubeAPIServer, binary

    if shutil.which("etcd") is None or not binary().exists():
        pytest.skip(f"needs Debian's etcd-server and {binary()} (scripts/setup builds it)")
    server = KubeAPIServer(tmp_path_factory.mktemp("kube"))
    server.start()
    yield server
    server.stop()

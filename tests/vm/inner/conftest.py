"""Collected only inside the VM (tests/vm/conftest.py ignores this dir elsewhere)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _has_ipip() -> bool:
    try:
        return any(l.split()[0] == "ipip" for l in open("/proc/modules"))
    except OSError:
        return False


def pytest_collection_modifyitems(config, items):
    skip = None
    if os.environ.get("PODROUTE_IN_VM") != "1" or not _has_ipip():
        skip = pytest.mark.skip(reason="runs only inside the IPIP VM (tests/kernel/vm.py)")
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.vm)
            if skip:
                item.add_marker(skip)

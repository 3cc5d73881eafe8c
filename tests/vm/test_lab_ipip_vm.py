"""The lab with IPIP (Always and CrossSubnet) in a real IPIP kernel: one VM boot runs
tests/vm/inner/test_lab_encap_inner.py (both labs, sequentially) through the real CLI."""
from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.vm


def test_lab_ipip_and_crosssubnet_in_vm(vm):
    t0 = time.monotonic()
    res = vm.pytest("tests/vm/inner/test_lab_encap_inner.py", timeout=1500, extra=("-rA", "-s"))
    print(res.stdout)
    print(f"[vm] lab IPIP tests: boot-to-test {res.boot_seconds} s, in-guest {res.command_seconds} s, "
          f"total {time.monotonic() - t0:.1f} s")
    assert "2 passed" in res.stdout and " failed" not in res.stdout, res.stdout

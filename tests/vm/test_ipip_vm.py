"""IPIP on a real IPIP kernel: runs tests/vm/inner/test_ipip_inner.py inside the VM."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.vm


def test_ipip_inner_tests_pass_in_vm(vm):
    res = vm.pytest("tests/vm/inner/test_ipip_inner.py", extra=("-rA",))
    assert " passed" in res.stdout and " failed" not in res.stdout, res.stdout
    print(res.stdout)

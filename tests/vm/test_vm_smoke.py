"""The VM harness itself: the IPIP kernel boots, runs a command, and reports its exit status."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.vm


def test_ipip_link_and_fallback_tunl0(vm):
    script = (
        "set -e; uname -r; grep -w ipip /proc/modules; ns=prt-smoke-$$; ip netns add $ns; "
        "ip -n $ns link add name ipx0 type ipip remote 198.18.1.2 local 198.18.1.1; "
        "ip -n $ns -d link show ipx0; ip -n $ns -d link show tunl0; ip netns del $ns; "
        "echo to-stderr >&2"
    )
    res = vm.run(["sh", "-c", script])
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith("6.1."), res.stdout
    assert "remote 198.18.1.2 local 198.18.1.1" in res.stdout
    assert "tunl0@NONE" in res.stdout and "ipip any remote any local any" in res.stdout
    assert res.stderr.strip() == "to-stderr"
    assert 0 < res.boot_seconds < res.wall_seconds


def test_failing_command_exit_status_is_propagated(vm):
    res = vm.run(["false"])
    assert res.returncode == 1
    with pytest.raises(Exception):
        res.check_returncode()


def test_cwd_env_and_read_only_root(vm):
    res = vm.run(["sh", "-c", 'pwd; echo "$FOO"; touch /work/main/x 2>/dev/null && echo rw || echo ro; '
                  'touch /tmp/x && echo tmp-rw; exit 3'], cwd="/work/main/ipip", env={"FOO": "bar baz"})
    assert res.returncode == 3
    assert res.stdout.split("\n")[:4] == ["/work/main/ipip", "bar baz", "ro", "tmp-rw"]

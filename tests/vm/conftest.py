"""tests/vm/: tests that need a kernel with IPIP run inside a qemu VM (tests/kernel/vm.py).

Host side: the ``vm`` fixture (session-scoped) gives ``vm.run(argv, ...)`` → VMResult
and ``vm.pytest(*paths)``, which runs ``.venv/bin/python -m pytest`` on the given
files *inside* the VM (repo visible read-only through the 9p root) and fails the host
test with the inner output if the inner run fails.

Inside the VM (``PODROUTE_IN_VM=1``): only tests/vm/inner/ is collected; outside it,
inner/ is ignored so a plain ``pytest tests/`` never runs those bodies on the host.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

IN_VM = os.environ.get("PODROUTE_IN_VM") == "1"
REPO = Path(__file__).resolve().parents[2]

collect_ignore = [] if IN_VM else ["inner"]
if IN_VM:
    collect_ignore_glob = ["test_*.py"]  # host-side tests never run inside the VM

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


class VMRunner:
    """Runs commands / inner pytest files in a fresh VM each call (≈8-10 s per boot)."""

    def __init__(self, repo: Path = REPO) -> None:
        self.repo = repo
        self.timings: list[tuple[str, float, float]] = []

    def run(self, argv, *, cwd: str | None = None, env=None, timeout: float = 300):
        from tests.kernel.vm import run_in_vm

        res = run_in_vm(list(argv), cwd=cwd or str(self.repo), env=env, timeout=timeout)
        self.timings.append((" ".join(map(str, argv))[:60], res.boot_seconds, res.wall_seconds))
        print(f"[vm] {argv!r}: exit {res.returncode}, boot-to-command {res.boot_seconds} s, "
              f"command {res.command_seconds} s, wall {res.wall_seconds} s")
        return res

    def pytest(self, *paths: str, timeout: float = 300, extra=()):
        """Run the inner pytest files in the VM; fail (with the inner output) unless they pass."""
        argv = [str(self.repo / ".venv/bin/python"), "-m", "pytest", "-q", "-x",
                "-p", "no:cacheprovider", "-p", "no:hypothesispytest", *extra, *paths]
        res = self.run(argv, timeout=timeout)
        if res.returncode != 0:
            pytest.fail(f"inner pytest in the VM failed with exit {res.returncode}\n"
                        f"--- stdout ---\n{res.stdout}\n--- stderr ---\n{res.stderr}\n"
                        f"--- console tail ---\n" + "\n".join(res.console.splitlines()[-20:]),
                        pytrace=False)
        return res


@pytest.fixture(scope="session")
def vm() -> VMRunner:
    if IN_VM:
        pytest.skip("already inside the VM")
    if os.geteuid() != 0:
        pytest.skip("building/booting the test VM needs root (apt, 9p export of /)")
    if not Path("/dev/kvm").exists() and shutil.which("qemu-system-x86_64") is None \
            and shutil.which("apt-get") is None:
        pytest.skip("neither qemu nor apt-get available")
    return VMRunner()

"""`systemd-analyze verify configs/podroute.service`, on the unit exactly as shipped.

verify checks that every Exec* command exists and is executable, so it runs with
``--root`` on a throwaway root holding systemd's own units (copied from the host, for the
targets the unit orders against), the unit at /etc/systemd/system, and the console
script ``podroute`` of this checkout's venv at the path the unit names
(/opt/podroute/venv/bin/podroute). The README step test (tests/e2e/test_readme_node.py)
verifies the same unit against a venv really installed with ``pip install .``.
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from podroute.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "configs" / "podroute.service"
VENV_BIN = Path("/opt/podroute/venv/bin")
SYSTEM_UNITS = Path("/usr/lib/systemd/system")

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None or not SYSTEM_UNITS.is_dir(),
                                reason="systemd-analyze (package systemd) is not installed")


def exec_lines() -> list[list[str]]:
    """argv of every Exec*= line of the unit (prefixes like '-' or '+' stripped)."""
    out = []
    for line in UNIT.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip().startswith("Exec"):
            out.append(shlex.split(value.strip().lstrip("-+!@:")))
    return out


def make_root(tmp_path: Path, *, with_commands: bool = True) -> Path:
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy2(UNIT, root / "etc/systemd/system/podroute.service")
    if with_commands:
        for argv in exec_lines():
            exe = Path(argv[0])
            assert exe.parent == VENV_BIN, f"{exe}: the unit runs podroute from its venv"
            target = root / exe.relative_to("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(sys.executable).parent / exe.name, target)  # pip's console script
    return root


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}", "podroute.service"],
                          capture_output=True, text=True, timeout=60)


def test_unit_commands_are_podroute_cli_invocations():
    lines = exec_lines()
    assert {tuple(a[1:3]) for a in lines} >= {("cni", "install"), ("node", "run")}
    parser = build_parser()
    for argv in lines:
        parser.parse_args(argv[1:])  # SystemExit (exit 2) on an unknown command or option


def test_systemd_analyze_verify_passes(tmp_path):
    p = verify(make_root(tmp_path))
    assert p.returncode == 0 and p.stderr.strip() == "", p.stderr


def test_verify_fails_without_the_installed_commands(tmp_path):
    # the check above has teeth: the same root without /opt/podroute/venv fails verify
    p = verify(make_root(tmp_path, with_commands=False))
    assert p.returncode != 0 and "/opt/podroute/venv/bin/podroute is not executable" in p.stderr


def test_unit_is_type_notify_with_a_watchdog():
    # the agent sends READY=1 and WATCHDOG=1 (podroute.sdnotify); systemd restarts it when the pings stop
    keys = dict(line.split("=", 1) for line in UNIT.read_text().splitlines()
                if "=" in line and not line.startswith("#"))
    assert keys["Type"] == "notify" and keys["NotifyAccess"] == "main"
    assert keys["WatchdogSec"] == "30" and keys["Restart"] == "on-failure"
    assert int(keys["TimeoutStartSec"]) > 120  # readiness may wait gracefulRestartTime for a peer

"""The benchmark suite runs end to end at smoke size (no performance thresholds asserted)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.privileged

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = ["fib_add_1000", "fib_delete_1000", "resync_1000", "bgp_conv_99pct_1000", "bgp_conv_100pct_1000",
            "bgp_withdraw_1000", "memory_1000", "cni_add_p50", "cni_add_p99", "cni_del_p50", "cni_del_p99",
            "cni_concurrent_20"]


def _ns() -> set[str]:
    p = Path("/var/run/netns")
    return {x.name for x in p.iterdir()} if p.exists() else set()


def test_smoke_suite_produces_every_figure(tmp_path):
    before = _ns()
    p = subprocess.run([sys.executable, "-m", "bench", "--size", "smoke", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["errors"] == {}
    for name in EXPECTED:
        f = json.loads((tmp_path / f"{name}.json").read_text())
        assert isinstance(f["podroute"], (int, float)) and f["podroute"] > 0, name
        assert isinstance(f["anchor"], (int, float)) and f["anchor"] > 0, name
    lab = json.loads((tmp_path / "lab_join_3.json").read_text())
    assert isinstance(lab["podroute"], (int, float))
    png = tmp_path / "convergence.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "figure" in p.stdout and "podroute" in p.stdout
    assert not {n for n in _ns() - before if n.startswith(("prb-", "prl-b"))}

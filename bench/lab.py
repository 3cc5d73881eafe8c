"""Lab convergence: a new node joins an N-node lab; time until every other FIB has its block.

Reuses ``podroute lab up`` (podroute/lab/runner.py measures exactly this for the last node it
starts: report.json ``timings.join_converge_s`` from its BGP session coming up, ``join_total_s``
from its agent starting) with a throwaway lab name ``b<hex>`` and state dir, then ``lab down``.
No anchor exists for this figure (see the issue); the table shows the growth with N instead.
With one side there is no asymmetry to correct: every N is timed by the same code in the
runner, from the joining node's BGP session coming up (its agent's own status ``since``, the
latest of its sessions: with no other receiver there is no common sender clock to prefer) to
the last other FIB holding its block, so the figure compares across N, not with another speaker.

``lab_join_etcd_<N>`` and ``lab_join_etcd_registered_<N>`` (issue 17, item 7): the same join
with the lab on a real etcd (``--datastore etcd``), beside the same lab on the file datastore
(the anchor), both in the same run on the lab's default topology (a BIRD route reflector):

- ``lab_join_etcd_<N>``: from starting the new node's agent until its block is in every other
  FIB (``timings.join_total_s``), etcd vs file: the ratio is what the etcd start costs (list,
  claim a block in a Version==0 transaction, register under a lease) on top of the BGP join.
- ``lab_join_etcd_registered_<N>``: on etcd, from the new node's registration (its agent's
  "node registered" log line, podroute.clusterwatch, once etcd has the key under its lease)
  until its block is in every other FIB (``timings.join_registered_s``); target < 1 s at N=30.
  No anchor: a node on the file datastore does not register (its config and, with a cluster
  file, the file list it before it starts).

Not the node-to-node mesh: there every other node learns the new node from the datastore and
adds a session to it by reloading ExaBGP, and an announcement replayed to a neighbour during that
reload is sometimes lost (seen at N=10 on etcd: a node's block never reached one peer), so a
mesh lab of 10 or more nodes does not reliably come up; that is a speaker bug, reported, not a
figure.
"""
from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import ns as N


def run_one(nodes: int, timeout: float = 600, extra: tuple[str, ...] = ()) -> dict:
    name = "b" + secrets.token_hex(4)
    state = Path(tempfile.mkdtemp(prefix="prb-lab-"))
    base = [sys.executable, "-m", "podroute.cli", "lab"]
    try:
        p = subprocess.run([*base, "up", "--nodes", str(nodes), "--pods", "1", "--name", name,
                            "--state-dir", str(state), *extra], capture_output=True, text=True, timeout=timeout)
        try:
            rep = json.loads((state / name / "report.json").read_text())
        except (OSError, ValueError):
            raise N.BenchError(f"lab up --nodes {nodes} failed ({p.returncode}): {p.stderr[-600:]} {p.stdout[-600:]}")
        t = rep["timings"]
        reg = t.get("join_registered_s")
        return {"nodes": nodes, "join_converge_ms": t["join_converge_s"] * 1e3,
                "join_total_ms": t["join_total_s"] * 1e3, "join_registered_ms": reg * 1e3 if reg is not None else None,
                "lab_passed": rep.get("passed"), "rc": p.returncode, "options": list(extra)}
    finally:
        subprocess.run([*base, "down", "--name", name, "--state-dir", str(state)], capture_output=True,
                       timeout=120)
        shutil.rmtree(state, ignore_errors=True)


def run_datastores(sizes: list[int]) -> list[dict]:
    """``lab_join_etcd_<N>`` (etcd vs file, agent start -> every FIB) and
    ``lab_join_etcd_registered_<N>`` (etcd, registration -> every FIB) for each N."""
    out = []
    for n in sizes:
        file = run_one(n, extra=("--datastore", "file"))
        etcd = run_one(n, extra=("--datastore", "etcd"))
        if etcd["join_registered_ms"] is None:
            raise N.BenchError(f"lab --nodes {n} --datastore etcd: the new agent logged no registration")
        detail = {"etcd": etcd, "file": file}
        out.append({"figure": f"lab_join_etcd_{n}", "unit": "ms", "higher_is_better": False,
                    "podroute": etcd["join_total_ms"], "anchor": file["join_total_ms"],
                    "anchor_name": "the same lab on the file datastore, same run (agent start -> every FIB)",
                    "target_ratio": None, "target": "informational (the etcd start's cost)",
                    "target_abs_ms": None, "detail": detail})
        out.append({"figure": f"lab_join_etcd_registered_{n}", "unit": "ms", "higher_is_better": False,
                    "podroute": etcd["join_registered_ms"], "anchor": None,
                    "anchor_name": "none (a file-datastore node does not register); file join_total "
                                   f"{file['join_total_ms']:.0f} ms in the same run",
                    "target_ratio": None, "target": "< 1000 ms at N=30",
                    "target_abs_ms": 1000.0 if n >= 30 else None, "detail": detail})
    return out


def run(sizes: list[int]) -> list[dict]:
    rows = [run_one(n) for n in sizes]
    first = rows[0]
    out = []
    for r in rows:
        out.append({"figure": f"lab_join_{r['nodes']}", "unit": "ms", "higher_is_better": False,
                    "podroute": r["join_converge_ms"], "anchor": None,
                    "anchor_name": f"none (growth vs N={first['nodes']}: "
                                   f"x{r['join_converge_ms'] / max(first['join_converge_ms'], 1e-9):.2f})",
                    "target_ratio": None, "target": "< 1000 ms at N=30", "target_abs_ms": 1000.0 if r["nodes"] >= 30 else None,
                    "detail": r})
    return out + run_datastores(sizes)

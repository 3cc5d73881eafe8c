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
(the anchor), both in the same run on the lab's default topology (a BIRD route reflector), each the median
of JOIN_SAMPLES joins (``lab node add`` into a lab of N-1 nodes, then ``lab node remove``):

- ``lab_join_etcd_<N>``: from starting the new node's agent until its block is in every other
  FIB (lab.json ``timings.add_<node>_total_s``), etcd vs file: the ratio is what the etcd start costs (list,
  claim a block in a Version==0 transaction, register under a lease) on top of the BGP join.
- ``lab_join_etcd_registered_<N>``: on etcd, from the new node's registration (its agent's
  "node registered" log line, podroute.clusterwatch, once etcd has the key under its lease)
  until its block is in every other FIB (``timings.add_<node>_registered_s``); target < 1 s at N=30.
  No anchor: a node on the file datastore does not register (its config and, with a cluster
  file, the file list it before it starts).

Not the node-to-node mesh: there every other node learns each new node from the datastore and
adds a session to it by reloading ExaBGP, and reloads in quick succession go wrong (seen on etcd:
an announcement replayed to a neighbour during a reload never reached it, at N=10; neighbours of
later reloads never loaded, "ExaBGP does not know neighbor ... after a reload", at N=6), so a mesh
lab of 6 or more nodes on etcd does not reliably come up. That is a speaker bug, reported.
"""
from __future__ import annotations

import json
import secrets
import statistics
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import ns as N

JOIN_SAMPLES = 5   # joins per datastore and N for the lab_join_etcd figures (a median: one join varies by 2x)


def run_one(nodes: int, timeout: float = 600) -> dict:
    name = "b" + secrets.token_hex(4)
    state = Path(tempfile.mkdtemp(prefix="prb-lab-"))
    base = [sys.executable, "-m", "podroute.cli", "lab"]
    try:
        p = subprocess.run([*base, "up", "--nodes", str(nodes), "--pods", "1", "--name", name,
                            "--state-dir", str(state)], capture_output=True, text=True, timeout=timeout)
        try:
            rep = json.loads((state / name / "report.json").read_text())
        except (OSError, ValueError):
            raise N.BenchError(f"lab up --nodes {nodes} failed ({p.returncode}): {p.stderr[-600:]} {p.stdout[-600:]}")
        t = rep["timings"]
        return {"nodes": nodes, "join_converge_ms": t["join_converge_s"] * 1e3,
                "join_total_ms": t["join_total_s"] * 1e3, "lab_passed": rep.get("passed"), "rc": p.returncode}
    finally:
        subprocess.run([*base, "down", "--name", name, "--state-dir", str(state)], capture_output=True,
                       timeout=120)
        shutil.rmtree(state, ignore_errors=True)


def run_joins(nodes: int, datastore: str, samples: int = JOIN_SAMPLES, timeout: float = 600) -> dict:
    """``samples`` joins of one node into a lab of ``nodes - 1`` on ``datastore``: ``lab up``, then
    ``lab node add`` (each a join timed by the lab, probes.time_join) and ``lab node remove`` in
    turn, so every sample is a join at ``nodes`` nodes. Medians and every sample, in ms."""
    name = "b" + secrets.token_hex(4)
    state = Path(tempfile.mkdtemp(prefix="prb-lab-"))
    base = [sys.executable, "-m", "podroute.cli", "lab"]
    where = ["--lab", name, "--state-dir", str(state)]
    total: list[float] = []
    registered: list[float] = []
    try:
        p = subprocess.run([*base, "up", "--nodes", str(nodes - 1), "--pods", "1", "--name", name, "--state-dir",
                            str(state), "--datastore", datastore], capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise N.BenchError(f"lab up --nodes {nodes - 1} --datastore {datastore} failed ({p.returncode}): "
                               f"{p.stderr[-600:]} {p.stdout[-300:]}")
        for _ in range(samples):
            add = subprocess.run([*base, "node", "add", "--pods", "0", *where], capture_output=True, text=True,
                                 timeout=timeout)
            lab = json.loads((state / name / "lab.json").read_text())
            new = lab["nodes"][-1]["name"]
            if add.returncode != 0 or f"add_{new}_total_s" not in lab["timings"]:
                raise N.BenchError(f"lab node add ({datastore}, {nodes} nodes) failed: {add.stderr[-600:]}")
            total.append(lab["timings"][f"add_{new}_total_s"] * 1e3)
            if f"add_{new}_registered_s" in lab["timings"]:
                registered.append(lab["timings"][f"add_{new}_registered_s"] * 1e3)
            rm = subprocess.run([*base, "node", "remove", new, *where], capture_output=True, text=True, timeout=timeout)
            if rm.returncode != 0:
                raise N.BenchError(f"lab node remove {new} ({datastore}) failed: {rm.stderr[-600:]}")
    finally:
        subprocess.run([*base, "down", "--name", name, "--state-dir", str(state)], capture_output=True,
                       timeout=120)
        shutil.rmtree(state, ignore_errors=True)
    return {"nodes": nodes, "datastore": datastore, "join_total_ms": statistics.median(total),
            "join_registered_ms": statistics.median(registered) if registered else None,
            "samples_total_ms": total, "samples_registered_ms": registered}


def run_datastores(sizes: list[int]) -> list[dict]:
    """``lab_join_etcd_<N>`` (etcd vs file, agent start -> every FIB) and
    ``lab_join_etcd_registered_<N>`` (etcd, registration -> every FIB) for each N: medians of
    JOIN_SAMPLES joins each."""
    out = []
    for n in sizes:
        file = run_joins(n, "file")
        etcd = run_joins(n, "etcd")
        if etcd["join_registered_ms"] is None:
            raise N.BenchError(f"lab --nodes {n} --datastore etcd: the new agents logged no registration")
        detail = {"etcd": etcd, "file": file, "method": f"median of {JOIN_SAMPLES} lab node add at N={n}"}
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

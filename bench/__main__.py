"""``python -m bench --size smoke|full [--only fib,resync,bgp,cni,memory,lab,scale] [--out bench/results]``

Runs podroute's benchmarks, each against its anchor measured in the same run on this machine,
prints figure | podroute | anchor | ratio | target | pass, and writes ``<out>/<figure>.json``,
``<out>/summary.json`` and ``<out>/convergence.png`` (FIB routes vs ms since the sender's
session Established, podroute vs BIRD vs FRR). Each figure times both sides the same way; the
method of each is in its module's docstring (bench/fib.py, bgp.py, cni.py, lab.py). Needs root (network namespaces ``prb-<hex>``, always deleted, also on failure
or Ctrl-C). ``pass`` is informational; nothing is asserted.

Addresses: links/peers 198.18.0.0/16, pods 198.19.0.0/16; the FIB/BGP figures program
``10.x.y.z/26`` routes only as FIB entries in isolated namespaces: no traffic is ever sent to them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from . import ns as N

SIZES = {
    "smoke": {"fib": [1000], "bgp": [1000], "pods": 10, "lab": [3]},
    "full": {"fib": [10_000, 100_000], "bgp": [1000, 10_000, 100_000], "pods": 100, "lab": [10, 30]},
}
ALL = ("fib", "resync", "bgp", "cni", "memory", "lab")
OPT_IN = ("scale",)   # only with --only: bench/scale.py (1,000 Nodes on a real kube-apiserver, ~2 min)


def ratio(f: dict) -> float | None:
    if f.get("anchor") in (None, 0) or f.get("podroute") is None:
        return None
    return f["podroute"] / f["anchor"]


def passed(f: dict) -> bool | None:
    r = ratio(f)
    if f.get("target_abs_ms") is not None:
        return f["podroute"] <= f["target_abs_ms"]
    if f.get("target_abs_mb") is not None:
        return f["podroute"] <= f["target_abs_mb"]
    tr = f.get("target_ratio")
    if tr is None or r is None:
        return None
    return r >= tr if f.get("higher_is_better") else r <= tr


def _fmt(v, unit="") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        s = f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"
    else:
        s = str(v)
    return f"{s} {unit}".strip()


def table(figs: list[dict]) -> str:
    head = ["figure", "podroute", "anchor", "ratio", "target", "pass"]
    rows = []
    for f in figs:
        r = ratio(f)
        p = passed(f)
        rows.append([f["figure"], _fmt(f.get("podroute"), f.get("unit", "")),
                     _fmt(f.get("anchor"), f.get("unit", "")) + (f" ({f['anchor_name']})" if f.get("anchor_name") else ""),
                     "-" if r is None else f"{r:.2f}x", f.get("target") or "-",
                     "-" if p is None else ("yes" if p else "NO")])
    w = [max(len(str(x[i])) for x in rows + [head]) for i in range(len(head))]
    line = lambda cells: " | ".join(str(c).ljust(w[i]) for i, c in enumerate(cells))  # noqa: E731
    return "\n".join([line(head), "-+-".join("-" * x for x in w)] + [line(r) for r in rows])


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.5), squeeze=False)
    for ax, r in zip(axes[0], runs):
        for who, style in (("podroute", "-"), ("bird", "--"), ("frr", ":")):
            s = r.get(who, {}).get("series_ms") or []
            if not s:
                continue
            xs = [max(0.0, t) for t, _ in s]
            ys = [c for _, c in s]
            xs, ys = [0.0] + xs, [0] + ys
            label = {"podroute": "podroute agent (felix + ExaBGP)", "bird": "BIRD 2 (kernel protocol)",
                     "frr": "FRR (zebra + bgpd)"}[who]
            ax.step(xs, ys, style, where="post", label=label)
        ax.set_title(f"BGP -> FIB convergence, N={r['n']:,}")
        ax.set_xlabel("ms since the sender's session Established")
        ax.set_ylabel("routes in receiver FIB")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bgp_figures(r: dict) -> list[dict]:
    n, p, b, f = r["n"], r["podroute"], r["bird"], r.get("frr")
    target_conv = {10_000: ("<= 3x BIRD", 3.0)}.get(n, ("(report; 10k: <= 3x BIRD, 100k: <= 2x FRR)", None))
    out = []
    if f is not None:
        target_frr = ("<= 2x FRR", 2.0) if n >= 100_000 else ("(report; 100k: <= 2x FRR)", None)
        for key, what in (("to_99_ms", "99"), ("to_100_ms", "100")):
            out.append({"figure": f"bgp_conv_{what}pct_{n}_vs_frr", "unit": "ms", "higher_is_better": False,
                        "podroute": p[key], "anchor": f[key], "anchor_name": "FRR zebra+bgpd",
                        "target_ratio": target_frr[1], "target": target_frr[0],
                        "detail": {"n": n, "t0": "sender's Established time for each receiver's session",
                                   "podroute_session_up": p["session_up"], "frr_session_up": f["session_up"],
                                   "frr_rss_mb": f["rss_mb"]}})
    for key, what in (("to_99_ms", "99%"), ("to_100_ms", "100%")):
        out.append({"figure": f"bgp_conv_{what.rstrip('%')}pct_{n}", "unit": "ms", "higher_is_better": False,
                    "podroute": p[key], "anchor": b[key], "anchor_name": "BIRD kernel proto",
                    "target_ratio": target_conv[1], "target": target_conv[0],
                    "detail": {"n": n, "t0": "sender's Established time for each receiver's session",
                               "podroute_session_up": p["session_up"], "bird_session_up": b["session_up"],
                               "podroute_own_session_up": p.get("own_session_up"),
                               "bird_own_session_up": b.get("own_session_up"),
                               "podroute_last_apply": p.get("last_apply"),
                               "podroute_cpu_ms_from_first_route": p.get("cpu_ms_announce")}})
    out.append({"figure": f"bgp_withdraw_{n}", "unit": "ms", "higher_is_better": False,
                "podroute": p["withdraw_ms"], "anchor": b["withdraw_ms"], "anchor_name": "BIRD kernel proto",
                "target_ratio": 3.0, "target": "<= 3x BIRD",
                "detail": {"n": n, "podroute_series": p["withdraw_series_ms"], "bird_series": b["withdraw_series_ms"],
                           "podroute_cpu_ms": p.get("cpu_ms_withdraw")}})
    return out


def metrics_figure(r: dict) -> dict:
    """BGP -> FIB convergence (100%) with metrics on (listener up, /metrics scraped every
    second) against the same agent with metrics off, in the same run: the median of the
    metrics-on runs against the median of the metrics-off runs, alternated after the main
    podroute run (bench/bgp.py ``AB_ORDER``). The detail also has the CPU time of the agent and
    ExaBGP (every thread) from the first route in the FIB to convergence, per run."""
    import statistics
    n, runs = r["n"], r["podroute_ab"]
    on = [x["to_100_ms"] for x in runs if x["metrics"]]
    off = [x["to_100_ms"] for x in runs if not x["metrics"]]
    cpu = [x.get("cpu_ms_all_threads") or 0.0 for x in runs]
    return {"figure": f"bgp_conv_100pct_{n}_metrics_on", "unit": "ms", "higher_is_better": False,
            "podroute": statistics.median(on), "anchor": statistics.median(off), "anchor_name": "podroute, metrics off",
            "target_ratio": 1.05, "target": "<= 1.05x metrics off",
            "detail": {"n": n, "order": ["on" if x["metrics"] else "off" for x in runs],
                       "to_100_ms": [x["to_100_ms"] for x in runs], "to_99_ms": [x["to_99_ms"] for x in runs],
                       "withdraw_ms": [x["withdraw_ms"] for x in runs],
                       "mean_on_ms": sum(on) / len(on), "mean_off_ms": sum(off) / len(off),
                       "cpu_ms_all_threads": cpu,
                       "cpu_ratio_median": statistics.median([c for c, x in zip(cpu, runs) if x["metrics"]])
                       / max(1e-9, statistics.median([c for c, x in zip(cpu, runs) if not x["metrics"]])),
                       "main_run_to_100_ms": r["podroute"]["to_100_ms"],
                       "scraper": [x.get("scraper") for x in runs if x["metrics"]],
                       "loop_worst_s": [(x.get("loop") or {}).get("worst_s") for x in runs],
                       "ready": [((x.get("health") or {}).get("ready") or {}).get("ok") for x in runs]}}


def memory_figure(r: dict) -> dict:
    n, p, b = r["n"], r["podroute"], r["bird"]
    return {"figure": f"memory_{n}", "unit": "MB", "higher_is_better": False,
            "podroute": p["rss_mb"], "anchor": b["rss_mb"], "anchor_name": "BIRD RSS",
            "target_ratio": None, "target": "<= 150 MB at 100k", "target_abs_mb": 150.0 if n >= 100_000 else None,
            "detail": {"n": n, "podroute_processes": p["rss_parts"], "bird_processes": b["rss_parts"],
                       "podroute_converged_mb": p.get("rss_mb_converged"),
                       "podroute_after_resync_mb": p.get("rss_mb_after_resync"),
                       "bird_converged_mb": b.get("rss_mb_converged"),
                       "bird_after_link_event_mb": b.get("rss_mb_after_resync"),
                       "method": "each side: larger of two samples, at convergence and after a link event",
                       "calico_node_published_mib": "250-300"}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="smoke")
    ap.add_argument("--only", default=",".join(ALL), help=f"comma list of {','.join(ALL + OPT_IN)} ({','.join(OPT_IN)} only when named)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--bgp-routes", help="comma list of route counts for the bgp group, overriding --size")
    args = ap.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    bad = [x for x in only if x not in ALL + OPT_IN]
    if bad:
        ap.error(f"unknown figure group(s) {bad}; choose from {ALL + OPT_IN}")
    if os.geteuid() != 0:
        print("bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    size = dict(SIZES[args.size])
    if args.bgp_routes:
        try:
            size["bgp"] = [int(x) for x in args.bgp_routes.split(",")]
        except ValueError:
            ap.error(f"--bgp-routes {args.bgp_routes!r}: expected integers like 10000,100000")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="prb-work-"))
    N.install_handlers()
    figs: list[dict] = []
    errors: dict[str, str] = {}
    bgp_runs: list[dict] = []
    t_start = time.time()

    def group(name, fn):
        print(f"bench: running {name} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            fn()
        except N.BenchError as e:
            errors[name] = str(e)
            print(f"bench: {name} FAILED: {e}", file=sys.stderr)
        except Exception as e:  # noqa: BLE001 - one broken figure must not hide the others
            errors[name] = repr(e)
            traceback.print_exc()
        finally:
            N.cleanup()
        print(f"bench: {name} done in {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)

    try:
        if "fib" in only or "resync" in only:
            from . import fib

            def do_fib():
                for n in size["fib"]:
                    for f in fib.run(n):
                        grp = "resync" if f["figure"].startswith("resync") else "fib"
                        if grp in only:
                            figs.append(f)
            group("fib/resync", do_fib)
        if "bgp" in only or "memory" in only:
            from . import bgp

            def do_bgp():
                for n in size["bgp"]:
                    # metrics on vs off: one extra announce run, at the largest size only
                    r = bgp.run(n, work / f"bgp{n}", metrics_ab="bgp" in only and n == max(size["bgp"]))
                    bgp_runs.append(r)
                    if "bgp" in only:
                        figs.extend(bgp_figures(r))
                        if "podroute_ab" in r:
                            figs.append(metrics_figure(r))
                    if "memory" in only and (args.size == "smoke" or n >= 10_000):
                        figs.append(memory_figure(r))
            group("bgp/memory", do_bgp)
        if "cni" in only:
            from . import cni
            group("cni", lambda: figs.extend(cni.run(size["pods"], work / "cni")))
        if "lab" in only:
            from . import lab
            group("lab", lambda: figs.extend(lab.run(size["lab"])))
        if "scale" in only:
            from . import scale
            group("scale", lambda: figs.extend(scale.run()))
    except KeyboardInterrupt:
        print("bench: interrupted; cleaning up", file=sys.stderr)
        N.cleanup()
        return 130
    finally:
        N.cleanup()
        if os.environ.get("BENCH_KEEP_WORK"):  # logs and configs of every daemon, for a post-mortem
            print(f"bench: work directory kept: {work}", file=sys.stderr)
        else:
            import shutil
            shutil.rmtree(work, ignore_errors=True)

    for f in figs:
        f["ratio"] = ratio(f)
        f["pass"] = passed(f)
        f["size"] = args.size
        (out / f"{f['figure']}.json").write_text(json.dumps(f, indent=2))
    png = None
    if bgp_runs:
        png = out / "convergence.png"
        plot(bgp_runs, png)
        (out / "bgp_series.json").write_text(json.dumps(
            [{"n": r["n"], "podroute": r["podroute"]["series_ms"], "bird": r["bird"]["series_ms"],
              "frr": (r.get("frr") or {}).get("series_ms")} for r in bgp_runs]))
    summary = {"size": args.size, "started": t_start, "duration_s": time.time() - t_start,
               "figures": [{k: f.get(k) for k in ("figure", "unit", "podroute", "anchor", "anchor_name", "ratio",
                                                  "target", "pass")} for f in figs],
               "errors": errors, "plot": str(png) if png else None,
               "machine": {"cpus": os.cpu_count(), "uname": " ".join(os.uname())}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(table(figs))
    for k, v in errors.items():
        print(f"ERROR {k}: {v}")
    print(f"results in {out}" + (f", plot {png}" if png else ""))
    left = N.leftovers()
    if left:
        print(f"bench: namespaces STILL PRESENT: {left}", file=sys.stderr)
    return 1 if errors or left else 0


if __name__ == "__main__":
    sys.exit(main())

"""The lab's Prometheus (``podroute lab up --monitoring``): Debian's ``prometheus`` binary
scraping every node agent's metrics listener, with podroute's alert rules loaded.

It runs in its own namespace ``prl-<name>-mon``, a monitoring host on the underlay:
``eth0`` 198.18.0.254/24 on fabric bridge ``br0``, default route via the lab router
198.18.0.1, which forwards to the other underlay subnets. It reaches each node's metrics
listener at ``<node IP>:9091`` (the ``metrics:`` section :func:`node_metrics` puts into
every node.yaml) exactly as a Prometheus server on a real fabric would. Nothing listens in
the root namespace: the HTTP API (``http://198.18.0.254:9090``) is reached from inside that
namespace, by :func:`http_get` / :func:`query` or by an operator with
``ip netns exec prl-<name>-mon promtool query instant ...`` (:func:`describe` prints it).

Scrape and rule evaluation intervals are :data:`SCRAPE_INTERVAL_S` (1 s, Prometheus
accepts it; the default of 1 min would make a lab test wait minutes). Targets come from a
``file_sd`` file (:func:`write_targets`), which Prometheus watches, so a node added to or
removed from a running lab is picked up without a restart (within 5 s: Prometheus's
discovery manager passes target changes on at most every 5 s). The alert rules are a copy of
the repository's ``configs/prometheus/alerts.yml`` (:data:`RULES_FILE`); a wheel without
the repository's ``configs/`` runs without rules and says so.

Files, all under ``<root>/prometheus/``: ``prometheus.yml`` (:func:`render_config`),
``targets.json``, ``alerts.yml``, ``data/`` (the TSDB) and ``prometheus.log``. lab.json
records ``monitoring`` = ``{"ns", "pid", "dir", "url", "rules"}``; ``lab down`` stops the
server by that PID and removes the directory with the rest of the lab.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from podroute.config import MetricsConfig
from podroute.lab import fabric, netns
from podroute.lab.model import MON_IP, Lab, Node, wait
from podroute.lab.netns import LabError

PROMETHEUS = "prometheus"
PROMTOOL = "promtool"
PROM_PORT = 9090          # Prometheus's own default port
METRICS_PORT = MetricsConfig.port   # the agents' metrics listener: node.yaml's default (Felix's 9091)
JOB = "podroute"          # the scrape job; configs/prometheus/alerts.yml's PodrouteAgentDown selects it
SCRAPE_INTERVAL_S = 1
START_TIMEOUT_S = 30
SCRAPE_WAIT_S = 30
HTTP_TIMEOUT_S = 5.0
RULES_FILE = Path(__file__).resolve().parents[2] / "configs" / "prometheus" / "alerts.yml"

# Run inside the namespace by the venv's interpreter: an HTTP GET printing "<status>\n<body>",
# status 0 when nothing answered (urllib only, so no curl is needed on the host; no proxy from
# the environment, the lab's addresses are never behind one).
_GET = """import sys, urllib.error, urllib.request
try:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    r = opener.open(sys.argv[1], timeout=float(sys.argv[2]))
    code, body = r.status, r.read()
except urllib.error.HTTPError as e:
    code, body = e.code, e.read()
except (OSError, ValueError) as e:
    code, body = 0, str(e).encode()
sys.stdout.write(str(code) + "\\n" + body.decode(errors="replace"))
"""


def namespace(lab: Lab) -> str:
    return lab.prefix + "mon"


def url(path: str = "") -> str:
    return f"http://{MON_IP}:{PROM_PORT}{path}"


def node_metrics(node: Node) -> dict[str, Any]:
    """The ``metrics:`` section of ``node``'s node.yaml: the listener on its underlay address."""
    return {"address": node.ip, "port": METRICS_PORT}


def targets_doc(lab: Lab) -> list[dict[str, Any]]:
    """The ``file_sd`` document: one target group per node, labelled ``node=<lab node name>``."""
    return [{"targets": [f"{n.ip}:{METRICS_PORT}"], "labels": {"node": n.name}} for n in lab.nodes]


def render_config(lab_name: str, targets_file: Path, rules: Path | None) -> str:
    """``prometheus.yml`` for lab ``lab_name``: job :data:`JOB` over ``targets_file``, every
    interval :data:`SCRAPE_INTERVAL_S` (the scrape timeout may not exceed it), ``rules`` loaded."""
    every = f"{SCRAPE_INTERVAL_S}s"
    doc = {
        "global": {"scrape_interval": every, "scrape_timeout": every, "evaluation_interval": every,
                   "external_labels": {"lab": lab_name}},
        "rule_files": [str(rules)] if rules else [],
        "scrape_configs": [{"job_name": JOB, "file_sd_configs": [{"files": [str(targets_file)]}]}],
    }
    return yaml.safe_dump(doc, sort_keys=False)


def write_targets(lab: Lab) -> None:
    """Rewrite the targets file from ``lab.nodes`` (atomically: Prometheus watches it).
    A lab without monitoring has nothing to rewrite."""
    if not lab.monitoring:
        return
    path = Path(lab.monitoring["dir"]) / "targets.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(targets_doc(lab), indent=2))
    os.replace(tmp, path)


def _underlay(lab: Lab, ns: str) -> None:
    fabric.attach(lab, ns, "mon", str(MON_IP))


def start(lab: Lab) -> None:
    """Create the monitoring namespace, write the config, targets and rules, start
    Prometheus there, record it in lab.json and wait (:data:`START_TIMEOUT_S`) until its
    ``/-/ready`` answers 200. Raises LabError from the failing ``ip`` command, or with the
    end of prometheus.log when Prometheus exits first (a bad rules file, a busy port)."""
    ns = namespace(lab)
    _underlay(lab, ns)
    pdir = lab.path / "prometheus"
    (pdir / "data").mkdir(parents=True, exist_ok=True)
    rules = None
    if RULES_FILE.is_file():
        rules = pdir / "alerts.yml"
        shutil.copyfile(RULES_FILE, rules)
    else:
        print(f"note: {RULES_FILE} not found (not a source checkout): Prometheus runs without alert rules",
              flush=True)
    lab.monitoring = {"ns": ns, "pid": None, "dir": str(pdir), "url": url(), "rules": str(rules or "")}
    write_targets(lab)
    (pdir / "prometheus.yml").write_text(render_config(lab.name, pdir / "targets.json", rules))
    argv = [PROMETHEUS, f"--config.file={pdir / 'prometheus.yml'}", f"--storage.tsdb.path={pdir / 'data'}",
            f"--web.listen-address={MON_IP}:{PROM_PORT}", "--storage.tsdb.retention.time=1d"]
    with open(pdir / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    lab.monitoring["pid"] = proc.pid
    lab.save()
    wait("Prometheus to be ready", lambda: proc.poll() is not None or http_get(lab, "/-/ready")[0] == 200,
         START_TIMEOUT_S, 0.2)
    if proc.poll() is not None:
        raise LabError(f"prometheus exited with {proc.returncode}: "
                       f"{(pdir / 'prometheus.log').read_text(errors='replace')[-1500:]}")


def wait_scraping(lab: Lab, timeout: float = SCRAPE_WAIT_S) -> None:
    """Wait until every node of ``lab`` is an active target whose last scrape succeeded.
    Raises LabError listing each target's health and last error when that takes longer
    than ``timeout`` s (Prometheus passes new targets on at most every 5 s)."""
    want = {n.name for n in lab.nodes}
    last: dict[str, tuple[str, str]] = {}

    def scraping() -> bool:
        nonlocal last
        last = target_health(lab)
        return set(last) == want and all(h == "up" for h, _ in last.values())
    try:
        wait("Prometheus to scrape every agent", scraping, timeout, 0.25)
    except LabError as e:
        detail = "; ".join(f"{n}: {h} {err}".strip() for n, (h, err) in sorted(last.items())) or "no targets"
        raise LabError(f"{e} ({detail})") from None


def stop(lab: Lab) -> None:
    """SIGTERM Prometheus by its recorded PID (10 s to write its head block, then SIGKILL)."""
    pid = lab.monitoring.get("pid")
    if pid:
        netns.kill_pids([pid], grace=10)


def running(lab: Lab) -> bool:
    pid = lab.monitoring.get("pid")
    return bool(pid) and netns._alive(pid)


def http_get(lab: Lab, path_or_url: str, timeout: float = HTTP_TIMEOUT_S) -> tuple[int, str]:
    """GET ``path_or_url`` (a path on the lab's Prometheus, or a full URL such as an agent's
    ``/metrics``) from inside the monitoring namespace. Returns ``(HTTP status, body)``;
    status 0 when nothing answered (the body then says why)."""
    target = path_or_url if "://" in path_or_url else url(path_or_url)
    p = netns.run([sys.executable, "-I", "-c", _GET, target, str(timeout)], ns=namespace(lab),
                  check=False, timeout=timeout + 10)
    head, _, body = p.stdout.partition("\n")
    if not head.isdigit():
        raise LabError(f"GET {target} in {namespace(lab)} failed: {p.stderr.strip()[-500:]}")
    return int(head), body


def api(lab: Lab, endpoint: str, **params: str) -> Any:
    """``data`` of Prometheus HTTP API ``endpoint`` (e.g. ``/api/v1/query``) with ``params``.
    Raises LabError with Prometheus's own error text, or when it does not answer."""
    path = endpoint + ("?" + urllib.parse.urlencode(params) if params else "")
    code, body = http_get(lab, path)
    try:
        doc = json.loads(body)
    except ValueError:
        raise LabError(f"Prometheus {endpoint}: HTTP {code}: {body[:300]}") from None
    if doc.get("status") != "success":
        raise LabError(f"Prometheus {endpoint}: {doc.get('errorType')}: {doc.get('error')}")
    return doc["data"]


def query(lab: Lab, promql: str) -> list[dict[str, Any]]:
    """An instant query: ``[{"metric": {label: value}, "value": [unix time, "<value>"]}, ...]``
    (a range selector gives ``"values"`` instead of ``"value"``)."""
    return api(lab, "/api/v1/query", query=promql)["result"]


def target_health(lab: Lab) -> dict[str, tuple[str, str]]:
    """``{node name: (health "up"|"down"|"unknown", last scrape error)}`` of the active targets."""
    out = {}
    for t in api(lab, "/api/v1/targets", state="active")["activeTargets"]:
        out[t["labels"].get("node", t["scrapeUrl"])] = (t["health"], t.get("lastError", ""))
    return out


def describe(lab: Lab) -> list[str]:
    """Lines telling where the lab's Prometheus is and how to query it."""
    ns, m = namespace(lab), lab.monitoring
    rules = m.get("rules") or "none"
    return [f"Prometheus {m['url']} in namespace {ns} (pid {m['pid']}), scraping {len(lab.nodes)} agents "
            f"on :{METRICS_PORT} every {SCRAPE_INTERVAL_S}s; alert rules: {rules}",
            f"  query: ip netns exec {ns} {PROMTOOL} query instant {m['url']} 'podroute_bgp_session_up'",
            f"  API:   ip netns exec {ns} curl -s '{m['url']}/api/v1/query?query=podroute_bgp_session_up'",
            f"  alerts: ip netns exec {ns} curl -s {m['url']}/api/v1/alerts"]


def status_lines(lab: Lab) -> list[str]:
    """:func:`describe` plus whether the server runs and each target's health."""
    lines = describe(lab)
    if not running(lab):
        return lines + ["  NOT RUNNING"]
    try:
        health = target_health(lab)
    except LabError as e:
        return lines + [f"  not answering: {e}"]
    for node, (h, err) in sorted(health.items()):
        lines.append(f"  target {node}: {h}" + (f" ({err})" if err else ""))
    return lines

"""The lab's Prometheus set-up without namespaces (podroute.lab.monitoring): the node
configs' ``metrics:`` section, the targets, and the rendered prometheus.yml as Debian's
``promtool check config`` judges it (with the alert rules it loads)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from podroute.config import load
from podroute.lab import agents, model, monitoring
from podroute.lab.model import Lab, Node
from podroute.lab.netns import LabError
from podroute.lab.options import MAX_NODES, required_tools


def lab3(tmp_path: Path, subnets: int = 1) -> Lab:
    lab = Lab("t", str(tmp_path), subnets=subnets)
    for i in (1, 2, 3):
        s = (i - 1) % subnets
        lab.nodes.append(Node(f"n{i}", f"prl-t-n{i}", str(model.node_ip(i, s)), str(model.node_block(i)),
                              str(tmp_path / f"n{i}"), subnet=s))
    return lab


def test_monitoring_address_is_free_in_the_address_plan() -> None:
    highest_node = model.node_ip(MAX_NODES, 0)  # the largest lab, all on one subnet
    assert model.MON_IP in model.subnet_net(0)
    assert model.MON_IP > highest_node
    assert model.MON_IP not in (model.RR_IP, model.RR2_IP, model.subnet_net(0).broadcast_address)


def test_node_configs_get_the_metrics_section_only_with_monitoring(tmp_path: Path) -> None:
    lab = lab3(tmp_path, subnets=2)
    assert "metrics" not in agents.node_config_doc(lab, lab.nodes[1])
    lab.monitoring = {"ns": "prl-t-mon", "pid": 1, "dir": str(tmp_path / "prometheus")}
    assert agents.node_config_doc(lab, lab.nodes[1])["metrics"] == {"address": "198.18.1.12", "port": 9091}


def test_a_node_config_with_metrics_is_a_valid_agent_config(tmp_path: Path) -> None:
    lab = lab3(tmp_path)
    lab.monitoring = {"ns": "prl-t-mon", "pid": 1, "dir": str(tmp_path / "prometheus")}
    Path(lab.nodes[0].dir).mkdir()
    cfg = load(agents.node_config(lab, lab.nodes[0]))  # the agent's own loader accepts the section
    assert str(cfg.node_ip) == lab.nodes[0].ip


def test_targets_name_each_node(tmp_path: Path) -> None:
    lab = lab3(tmp_path, subnets=2)
    assert monitoring.targets_doc(lab) == [
        {"targets": ["198.18.0.11:9091"], "labels": {"node": "n1"}},
        {"targets": ["198.18.1.12:9091"], "labels": {"node": "n2"}},
        {"targets": ["198.18.0.13:9091"], "labels": {"node": "n3"}},
    ]
    monitoring.write_targets(lab)  # no monitoring: nothing written
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "prometheus").mkdir()
    lab.monitoring = {"dir": str(tmp_path / "prometheus")}
    lab.nodes.pop()
    monitoring.write_targets(lab)
    assert json.loads((tmp_path / "prometheus" / "targets.json").read_text()) == monitoring.targets_doc(lab)
    assert [p.name for p in (tmp_path / "prometheus").iterdir()] == ["targets.json"]


def test_config_scrapes_and_evaluates_every_second(tmp_path: Path) -> None:
    doc = yaml.safe_load(monitoring.render_config("t", tmp_path / "targets.json", tmp_path / "alerts.yml"))
    assert doc["global"]["scrape_interval"] == doc["global"]["evaluation_interval"] == "1s"
    assert doc["global"]["scrape_timeout"] == "1s"  # may not exceed the interval
    assert doc["rule_files"] == [str(tmp_path / "alerts.yml")]
    assert doc["scrape_configs"] == [{"job_name": "podroute",
                                      "file_sd_configs": [{"files": [str(tmp_path / "targets.json")]}]}]
    assert yaml.safe_load(monitoring.render_config("t", tmp_path / "targets.json", None))["rule_files"] == []


@pytest.mark.skipif(shutil.which(monitoring.PROMTOOL) is None, reason="promtool (Debian package prometheus) is missing")
def test_promtool_accepts_the_config_with_the_rules(tmp_path: Path) -> None:
    lab = lab3(tmp_path)
    lab.monitoring = {"dir": str(tmp_path)}
    monitoring.write_targets(lab)
    shutil.copyfile(monitoring.RULES_FILE, tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(
        monitoring.render_config("t", tmp_path / "targets.json", tmp_path / "alerts.yml"))
    p = subprocess.run([monitoring.PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "rules found" in p.stdout + p.stderr


def test_lab_json_keeps_the_monitoring_record(tmp_path: Path) -> None:
    lab = lab3(tmp_path)
    lab.monitoring = {"ns": "prl-t-mon", "pid": 42, "dir": str(tmp_path / "prometheus"),
                      "url": "http://198.18.0.254:9090", "rules": ""}
    lab.save()
    assert Lab.load(tmp_path) == lab
    raw = json.loads((tmp_path / "lab.json").read_text())
    del raw["monitoring"]  # a lab.json from before --monitoring
    (tmp_path / "lab.json").write_text(json.dumps(raw))
    assert Lab.load(tmp_path).monitoring == {}


def test_monitoring_needs_prometheus_and_promtool() -> None:
    assert "prometheus" not in required_tools("bird")
    assert required_tools("bird", True)[-2:] == ("prometheus", "promtool")


def test_describe_says_where_and_how_to_query(tmp_path: Path) -> None:
    lab = lab3(tmp_path)
    lab.monitoring = {"ns": "prl-t-mon", "pid": 42, "dir": "d", "url": "http://198.18.0.254:9090", "rules": "r"}
    text = "\n".join(monitoring.describe(lab))
    assert "http://198.18.0.254:9090 in namespace prl-t-mon (pid 42)" in text
    assert "ip netns exec prl-t-mon promtool query instant http://198.18.0.254:9090" in text


def test_wait_scraping_needs_every_node_up_and_names_the_laggards(tmp_path: Path, monkeypatch) -> None:
    lab = lab3(tmp_path)
    answers = iter([{}, {"n1": ("up", "")}, {"n1": ("up", ""), "n2": ("up", ""), "n3": ("unknown", "")},
                    {"n1": ("up", ""), "n2": ("up", ""), "n3": ("up", "")}])
    monkeypatch.setattr(monitoring, "target_health", lambda lab: next(answers))
    monkeypatch.setattr(model.time, "sleep", lambda s: None)
    monitoring.wait_scraping(lab, timeout=5)
    with pytest.raises(StopIteration):  # it asked until all three were up, and no further
        next(answers)
    down = {"n1": ("up", ""), "n2": ("down", "connection refused"), "n3": ("up", "")}
    monkeypatch.setattr(monitoring, "target_health", lambda lab: down)
    with pytest.raises(LabError, match=r"scrape every agent \(n1: up; n2: down connection refused; n3: up\)"):
        monitoring.wait_scraping(lab, timeout=0.01)


def test_the_in_namespace_get_ignores_a_proxy_from_the_environment() -> None:
    # The GET the lab runs inside the monitoring namespace, here against a loopback server with
    # http_proxy pointing at a port nothing listens on: a proxied request would answer status 0.
    import http.server
    import os
    import sys
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b'{"ok": false}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "no_proxy": ""}
        p = subprocess.run([sys.executable, "-I", "-c", monitoring._GET, f"http://127.0.0.1:{server.server_port}/readyz",
                            "5"], capture_output=True, text=True, timeout=30, env=env)
    finally:
        server.shutdown()
        server.server_close()
    assert p.stdout == '503\n{"ok": false}', p.stdout + p.stderr

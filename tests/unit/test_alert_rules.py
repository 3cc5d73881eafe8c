"""configs/prometheus/alerts.yml, checked and evaluated by Debian's promtool.

``promtool check rules`` parses every expression and template; ``promtool test rules``
evaluates the rules over the recorded series of configs/prometheus/alerts_test.yml (the
same PromQL engine as the server) and compares the firing alerts, labels and rendered
annotations at each ``eval_time``. A mutated copy of the rules must fail those tests, so
they do constrain the thresholds and durations.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from podroute.lab import monitoring

RULES = Path(__file__).resolve().parents[2] / "configs" / "prometheus" / "alerts.yml"
RULE_TESTS = RULES.with_name("alerts_test.yml")

pytestmark = pytest.mark.skipif(shutil.which(monitoring.PROMTOOL) is None,
                                reason="promtool (Debian package prometheus; scripts/setup installs it) is missing")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([monitoring.PROMTOOL, *args], capture_output=True, text=True, timeout=60)


def alerts() -> dict[str, dict]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def test_promtool_check_rules_passes() -> None:
    p = promtool("check", "rules", str(RULES))
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in p.stdout + p.stderr


def test_the_obvious_failures_each_have_an_alert() -> None:
    assert sorted(alerts()) == ["PodrouteAgentDown", "PodrouteAgentNotReady", "PodrouteBGPSessionDown",
                                "PodrouteFIBWriteErrors", "PodrouteIPAMNearlyFull"]


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    p = promtool("test", "rules", str(RULE_TESTS))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout + p.stderr


def test_every_alert_has_a_firing_case_in_the_unit_tests() -> None:
    doc = yaml.safe_load(RULE_TESTS.read_text())
    firing = {case["alertname"] for t in doc["tests"] for case in t["alert_rule_test"] if case["exp_alerts"]}
    assert firing == set(alerts())


@pytest.mark.parametrize("alert, old, new", [
    ("PodrouteBGPSessionDown", "for: 1m", "for: 2m"),
    ("PodrouteBGPSessionDown", "podroute_bgp_session_up == 0", "podroute_bgp_session_up < 0"),
    ("PodrouteIPAMNearlyFull", "> 0.9", "> 0.95"),
    ("PodrouteIPAMNearlyFull", "without (block, state)", "without (state)"),
])
def test_the_unit_tests_fail_on_a_mutated_rule(tmp_path: Path, alert: str, old: str, new: str) -> None:
    # Mutate only the named rule's block: the text from its "- alert:" line to the next one.
    text = RULES.read_text()
    start = text.index(f"- alert: {alert}")
    end = text.find("- alert:", start + 1)
    end = len(text) if end < 0 else end
    block = text[start:end]
    assert old in block
    (tmp_path / "alerts.yml").write_text(text[:start] + block.replace(old, new) + text[end:])
    shutil.copyfile(RULE_TESTS, tmp_path / "alerts_test.yml")
    p = promtool("test", "rules", str(tmp_path / "alerts_test.yml"))
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    assert "FAILED" in out and f"alertname: {alert}," in out, out


def test_the_agent_down_rule_selects_the_labs_scrape_job() -> None:
    assert f'job="{monitoring.JOB}"' in alerts()["PodrouteAgentDown"]["expr"]


def test_the_rules_use_only_metrics_the_agent_exports() -> None:
    names = pytest.importorskip("podroute.metrics.names")
    used = set()
    for rule in alerts().values():
        used |= set(re.findall(r"\b(podroute_[a-z_]+)", rule["expr"]))
    assert used and used <= set(names.DOC), used - set(names.DOC)

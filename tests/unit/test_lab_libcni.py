"""podroute.lab.libcni does what libcni does with a conflist (CNI spec 1.0.0 "Section 3:
Execution of Network Configurations"; libcni buildOneConfig / AddNetworkList /
CheckNetworkList / DelNetworkList), checked with recording plugins."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from podroute.lab.libcni import Attachment, PluginFailed, Runtime, first_conflist, plugin_config

CONF = {"cniVersion": "1.0.0", "name": "net1", "plugins": [
    {"type": "first", "x": 1},
    {"type": "second", "capabilities": {"portMappings": True, "bandwidth": False}},
]}
MAPS = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
# A plugin that records its env and stdin, and answers ADD with a result naming itself.
RECORDER = """#!/usr/bin/python3
import json, os, sys
conf = json.load(sys.stdin)
name = os.path.basename(sys.argv[0])
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps({"plugin": name, "env": {k: v for k, v in os.environ.items() if k.startswith("CNI_")},
                        "conf": conf}) + "\\n")
if os.environ.get("FAIL") == name:
    print(json.dumps({"cniVersion": "1.0.0", "code": 7, "msg": "bad config", "details": "from " + name}))
    sys.exit(1)
if os.environ["CNI_COMMAND"] == "ADD":
    prev = conf.get("prevResult", {"cniVersion": "1.0.0", "ips": []})
    print(json.dumps({**prev, "by": prev.get("by", []) + [name]}))
"""


@pytest.fixture
def rt(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("first", "second"):
        (bin_dir / name).write_text(RECORDER)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("RECORD", str(tmp_path / "record.jsonl"))
    return Runtime([tmp_path / "empty", bin_dir])


def calls(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "record.jsonl").read_text().splitlines()]


ATT = Attachment("cid1", "/var/run/netns/p1", "eth0", {"K8S_POD_NAME": "web"}, {"portMappings": MAPS, "other": 1})


def test_plugin_config_injects_name_version_prev_result_and_declared_capabilities_only():
    assert plugin_config(CONF, 0, None, {"portMappings": MAPS}) == {"type": "first", "x": 1, "cniVersion": "1.0.0",
                                                                    "name": "net1"}
    second = plugin_config(CONF, 1, {"ips": []}, {"portMappings": MAPS, "bandwidth": {"rate": 1}})
    assert second["prevResult"] == {"ips": []}
    assert second["runtimeConfig"] == {"portMappings": MAPS}  # bandwidth is declared false


def test_add_chains_results_in_order(rt, tmp_path):
    result = rt.add(CONF, ATT)
    assert result["by"] == ["first", "second"]
    c = calls(tmp_path)
    assert [x["plugin"] for x in c] == ["first", "second"]
    assert "prevResult" not in c[0]["conf"] and c[1]["conf"]["prevResult"]["by"] == ["first"]
    assert c[0]["env"] == {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "cid1", "CNI_NETNS": "/var/run/netns/p1",
                           "CNI_IFNAME": "eth0", "CNI_ARGS": "K8S_POD_NAME=web",
                           "CNI_PATH": f"{tmp_path / 'empty'}:{tmp_path / 'bin'}"}


def test_check_in_order_and_del_in_reverse_with_the_cached_result(rt, tmp_path):
    cached = {"cniVersion": "1.0.0", "ips": [], "by": ["first", "second"]}
    rt.check(CONF, ATT, cached)
    rt.delete(CONF, ATT, cached)
    rt.delete(CONF, ATT, None)
    c = calls(tmp_path)
    assert [(x["env"]["CNI_COMMAND"], x["plugin"]) for x in c] == [
        ("CHECK", "first"), ("CHECK", "second"), ("DEL", "second"), ("DEL", "first"), ("DEL", "second"),
        ("DEL", "first")]
    assert all(x["conf"]["prevResult"] == cached for x in c[:4])
    assert all("prevResult" not in x["conf"] for x in c[4:])


def test_a_failing_plugin_raises_its_cni_error_and_stops_the_chain(rt, tmp_path, monkeypatch):
    monkeypatch.setenv("FAIL", "first")
    with pytest.raises(PluginFailed) as ei:
        rt.add(CONF, ATT)
    assert (ei.value.plugin, ei.value.code, ei.value.msg) == ("first", 7, "bad config from first")
    assert [x["plugin"] for x in calls(tmp_path)] == ["first"]


def test_missing_plugin_is_code_50(tmp_path):
    with pytest.raises(PluginFailed) as ei:
        Runtime([tmp_path]).add(CONF, ATT)
    assert ei.value.code == 50 and "first" in str(ei.value)


def test_first_conflist_is_the_lexically_first(tmp_path):
    for name in ("87-podman-bridge.conflist", "10-podroute.conflist", "05-notalist.conf"):
        (tmp_path / name).write_text("{}")
    assert first_conflist(tmp_path).name == "10-podroute.conflist"
    os.remove(tmp_path / "10-podroute.conflist")
    os.remove(tmp_path / "87-podman-bridge.conflist")
    with pytest.raises(ValueError):
        first_conflist(tmp_path)

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from podroute.config import load, parse
from podroute.schema import ConfigError

REPO = Path(__file__).resolve().parents[2]
BASE = {
    "nodeName": "n1",
    "nodeIP": "198.18.0.11",
    "podCIDRs": ["198.19.1.0/26"],
    "ipPools": [{"cidr": "198.19.0.0/16"}],
    "peers": [{"address": "198.18.0.1", "asn": 64512}, {"address": "198.18.0.2", "asn": 64513}],
}


def with_(path: list, value):
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    cur = raw
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    return raw


def test_example_config_in_configs_is_valid():
    cfg = load(REPO / "configs" / "node.yaml")
    assert cfg.node_name == "worker-1"
    assert cfg.pod_cidrs == (ipaddress.IPv4Network("198.19.1.0/26"),)
    assert cfg.asn == 64512 and cfg.peers[0].hold_time == 90


def test_defaults():
    cfg = parse(BASE)
    assert cfg.asn == 64512
    assert cfg.bgp_router_id == ipaddress.IPv4Address("198.18.0.11")
    assert cfg.route_protocol == 90 and cfg.mtu is None
    assert cfg.paths.cni_socket == Path("/run/podroute/cni.sock")


@pytest.mark.parametrize("path,value,expected", [
    (["peers", 1, "asn"], 4294967296, "peers[1].asn: 4294967296 is out of range 1..4294967295"),
    (["peers", 0, "asn"], "sixty", "peers[0].asn: expected an integer, got 'sixty' (str)"),
    (["peers", 0, "passive"], "yes", "peers[0].passive: expected true or false, got 'yes' (str)"),
    (["peers", 0, "holdTime"], 2, "peers[0].holdTime: 2 is invalid"),
    (["nodeIP"], "198.18.0.300", "nodeIP: '198.18.0.300' is not an IPv4 address"),
    (["podCIDRs", 0], "198.19.1.1/26", "podCIDRs[0]: '198.19.1.1/26' is not an IPv4 CIDR"),
    (["podCIDRs", 0], "198.20.0.0/26", "podCIDRs[0]: 198.20.0.0/26 is not inside any of ipPools"),
    (["mtu"], 100, "mtu: 100 is out of range 576..9000"),
    (["nodeName"], "Node_1", "nodeName: 'Node_1' is not a DNS-1123 label"),
    (["ipPools", 0, "ipipMode"], "Sometimes", "ipPools[0].ipipMode: 'Sometimes' is not one of Always, CrossSubnet, Never"),
    (["peers", 1, "address"], "198.18.0.1", "peers[1].address: 198.18.0.1 is listed twice"),
    (["colour"], "blue", "colour: unknown key"),
])
def test_errors_name_the_key_path(path, value, expected):
    with pytest.raises(ConfigError) as ei:
        parse(with_(path, value), "node.yaml")
    assert str(ei.value).startswith("node.yaml: " + expected), str(ei.value)
    assert "\n" not in str(ei.value)


def test_missing_required_key():
    raw = dict(BASE)
    del raw["nodeIP"]
    with pytest.raises(ConfigError, match="^x.yaml: nodeIP: is required$"):
        parse(raw, "x.yaml")


def test_ipip_and_vxlan_are_mutually_exclusive():
    raw = with_(["ipPools", 0], {"cidr": "198.19.0.0/16", "ipipMode": "Always", "vxlanMode": "CrossSubnet"})
    with pytest.raises(ConfigError, match=r"ipPools\[0\]: ipipMode Always and vxlanMode CrossSubnet are mutually exclusive"):
        parse(raw)


def test_password_file_must_be_0600_and_is_not_in_repr(tmp_path):
    secret = tmp_path / "md5"
    secret.write_text("s3cr3t-key\n")
    os.chmod(secret, 0o644)
    raw = with_(["peers", 0, "passwordFile"], str(secret))
    with pytest.raises(ConfigError, match=r"peers\[0\]\.passwordFile: .* has mode 0644; .* must be 0600"):
        parse(raw)
    os.chmod(secret, 0o600)
    cfg = parse(raw)
    assert cfg.peers[0].password == "s3cr3t-key"
    assert "s3cr3t" not in repr(cfg)


def test_invalid_yaml_is_one_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("nodeName: [unclosed\n")
    with pytest.raises(ConfigError) as ei:
        load(f)
    assert str(ei.value).startswith(f"{f}: invalid YAML: line ")
    assert "\n" not in str(ei.value)


def test_cli_reports_wrong_type_in_one_line_without_traceback(tmp_path):
    f = tmp_path / "node.yaml"
    f.write_text(yaml.safe_dump(with_(["peers", 1, "asn"], "not-a-number")))
    p = subprocess.run([sys.executable, "-m", "podroute.cli", "config", "check", "--config", str(f)],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2
    assert p.stderr.strip() == f"podroute: invalid config: {f}: peers[1].asn: expected an integer, got 'not-a-number' (str)"
    assert "Traceback" not in p.stderr and p.stdout == ""


def test_bgp_policy_and_session_fields():
    raw = with_(["peers", 0], {"address": "198.18.0.1", "asn": 65000, "sourceAddress": "198.18.0.11",
                               "multihopTTL": 2, "maxPrefixes": 100, "maxPrefixesAction": "teardown"})
    raw["serviceCIDRs"] = [{"cidr": "198.18.128.0/24", "communities": ["64512:100"]}]
    raw["importExtraCIDRs"] = ["198.18.64.0/20"]
    cfg = parse(raw)
    p = cfg.peers[0]
    assert (p.source_address, p.multihop_ttl, p.max_prefixes, p.max_prefixes_action) == (
        ipaddress.IPv4Address("198.18.0.11"), 2, 100, "teardown")
    assert cfg.service_cidrs[0].communities == ("64512:100",)
    assert cfg.import_extra == (ipaddress.IPv4Network("198.18.64.0/20"),)
    raw["serviceCIDRs"] = [{"cidr": "198.18.128.0/24", "communities": ["64512:70000"]}]
    with pytest.raises(ConfigError, match=r"serviceCIDRs\[0\]\.communities\[0\]: '64512:70000' is not a standard community"):
        parse(raw)

"""Any bytes in a config file give one ConfigError line naming the file (issue 14 item 6)."""
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from podroute.config import MAX_CONFIG_BYTES, MAX_SECRET_BYTES, load, parse
from podroute.configfile import MAX_DEPTH, MAX_NODES
from podroute.datastore import load_cluster
from podroute.schema import ConfigError

REPO = Path(__file__).resolve().parents[2]
GOOD = ("nodeName: n1\nnodeIP: 198.18.0.11\npodCIDRs: [198.19.1.0/26]\n"
        "ipPools: [{cidr: 198.19.0.0/16}]\n")


def load_error(tmp_path: Path, content: bytes | str, name: str = "node.yaml") -> str:
    f = tmp_path / name
    f.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(ConfigError) as ei:
        load(f)
    text = str(ei.value)
    assert text.startswith(f"{f}: ") and text.isprintable(), text
    return text[len(f"{f}: "):]


def _bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\nnodeName: *a9\n"


@pytest.mark.parametrize("content,expected", [
    (random.Random(14).randbytes(300), "not UTF-8 text: line 1, column 5: byte 0xe5 (invalid continuation byte)"),
    ("nodeName: n1\n".encode("utf-16"), "is UTF-16 text (byte order mark); save it as UTF-8"),
    (b"nodeName: n1\nnodeIP: 198.18.0.11\n# caf\xe9\n", "not UTF-8 text: line 3, column 6: byte 0xe9"),
    (b"nodeName: n\x001\n", "invalid YAML: line 1, column 12: character U+0000 is not allowed in YAML"),
    ("asn: " + "9" * 5000 + "\n", "invalid YAML: line 1, column 6: invalid int value '99999"),
    ("nodeName: 2001-13-45\n", "invalid YAML: line 1, column 11: invalid timestamp value '2001-13-45' (month"),
    ("nodeName: !!bool maybe\n", "invalid YAML: line 1, column 11: invalid bool value 'maybe'"),
    ("nodeName: !!float x\n", "invalid YAML: line 1, column 11: invalid float value 'x'"),
    ("nodeName: !!python/object:os.system x\n", "invalid YAML: line 1, column 11: could not determine a constructor"),
    ("nodeName: " + "[" * 5000 + "]" * 5000 + "\n", f"invalid YAML: line 1, column {10 + MAX_DEPTH}: nested deeper than {MAX_DEPTH} levels"),
    ("a: " + "{b: " * 3000 + "1" + "}" * 3000 + "\n", f"nested deeper than {MAX_DEPTH} levels"),
    ("".join(" " * i + f"k{i}:\n" for i in range(200)), f"nested deeper than {MAX_DEPTH} levels"),
    (_bomb(), f"more than {MAX_NODES} nodes once aliases are expanded"),  # the text is shorter than MAX_NODES
    ("a: &y {k: *y}\n", f"nesting deeper than {MAX_DEPTH} levels once aliases are expanded"),
    ("# " + "x" * MAX_CONFIG_BYTES + "\n", f"larger than the {MAX_CONFIG_BYTES}-byte limit for this file"),
    ("- 1\n- 2\n", "(top level): expected a mapping, got list"),
    ("just text\n", "(top level): expected a mapping, got str"),
    (GOOD + "nodeName: n2\n", "nodeName: duplicate key at line 5 (first at line 1)"),
    (GOOD + "peers:\n  - {address: 198.18.0.1, asn: 1}\n  - address: 198.18.0.2\n    asn: 5\n    asn: 6\n",
     "peers[1].asn: duplicate key at line 9 (first at line 8)"),
    (GOOD + "listen: {port: 179, 'port': 180}\n", "listen.port: duplicate key at line 5 (first at line 5)"),
    (GOOD + "asn: 1\n0x1: 2\n1: 3\n", "1: duplicate key at line 7 (first at line 6)"),
    ("nodeName: [unclosed\n", "invalid YAML: line 2, column 1: expected ',' or ']'"),
])
def test_bad_bytes_give_one_line_naming_the_file(tmp_path, content, expected):
    assert expected in load_error(tmp_path, content)


def test_node_limit_grows_with_the_text_so_big_plain_files_still_load(monkeypatch):
    from podroute import configfile
    monkeypatch.setattr(configfile, "MAX_NODES", 10)
    plain = "[" + ", ".join(["1"] * 300) + "]"  # 301 nodes in 900 characters: no aliases, loads
    assert configfile.parse_yaml(plain) == [1] * 300
    bomb = "a: &a [1, 1, 1, 1]\nb: &b [*a, *a, *a, *a]\nc: [*b, *b, *b, *b]\n"  # 58 characters, 100+ nodes
    with pytest.raises(ConfigError, match=f"more than {len(bomb)} nodes once aliases are expanded"):
        configfile.parse_yaml(bomb)


def test_merge_keys_may_override_without_being_duplicates(tmp_path):
    f = tmp_path / "node.yaml"
    f.write_text("listen: &l {port: 179}\n" + GOOD.replace("nodeName: n1\n", "nodeName: n1\n") +
                 "peers: [{<<: {address: 198.18.0.1, asn: 1}, asn: 2}]\n")
    cfg = load(f)
    assert cfg.peers[0].asn == 2 and cfg.listen_port == 179


@pytest.mark.parametrize("path", ["/dev/zero", "/"])
def test_unbounded_or_unreadable_files(path):
    with pytest.raises(ConfigError) as ei:
        load(path)
    assert str(ei.value) in (f"{path}: larger than the {MAX_CONFIG_BYTES}-byte limit for this file",
                             f"{path}: cannot read: Is a directory")


def test_file_name_with_a_newline_stays_one_line(tmp_path):
    f = tmp_path / "a\nb.yaml"
    f.write_bytes(b"\xff")
    with pytest.raises(ConfigError) as ei:
        load(f)
    assert "\n" not in str(ei.value) and "a\\nb.yaml" in str(ei.value)


def _with_password_file(tmp_path: Path, target: Path | str) -> Path:
    f = tmp_path / "node.yaml"
    f.write_text(GOOD + f"peers: [{{address: 198.18.0.1, asn: 1, passwordFile: '{target}'}}]\n")
    return f


def _secret(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "md5"
    p.write_bytes(data)
    os.chmod(p, 0o600)
    return p


@pytest.mark.parametrize("make,expected", [
    (lambda d: (d / "dir").mkdir(mode=0o700) or d / "dir", "dir is a directory; it must be a file"),
    (lambda d: _secret(d, b"\xcc\x00binary\xff"), "md5 is not UTF-8 text (invalid byte at offset 0)"),
    (lambda d: os.mkfifo(d / "fifo", 0o600) or d / "fifo", "fifo is not a regular file"),
    (lambda d: Path("/dev/zero"), "/dev/zero is not a regular file"),
    (lambda d: _secret(d, b"k" * (MAX_SECRET_BYTES + 1)), f"md5 is larger than {MAX_SECRET_BYTES} bytes"),
    (lambda d: _secret(d, b" \n"), "md5 is empty"),
    (lambda d: d / "missing", "cannot read"),
    (lambda d: "/tmp/a\0b", "is not a usable path (NUL character)"),
])
def test_bad_password_files(tmp_path, make, expected):
    target = make(tmp_path)
    target = str(target).replace("\0", "\\0")
    f = _with_password_file(tmp_path, target)
    if "\\0" in target:  # a NUL can only come from a double-quoted YAML escape
        f.write_text(GOOD + 'peers: [{address: 198.18.0.1, asn: 1, passwordFile: "/tmp/a\\0b"}]\n')
    with pytest.raises(ConfigError) as ei:
        load(f)
    msg = str(ei.value)
    assert msg.startswith(f"{f}: peers[0].passwordFile: ") and expected in msg, msg
    assert "binary" not in msg  # never quotes the secret


def test_password_file_still_read_and_stripped(tmp_path):
    cfg = load(_with_password_file(tmp_path, _secret(tmp_path, b"s3cr3t\n")))
    assert cfg.peers[0].password == "s3cr3t"


def test_run_dir_too_long_for_a_unix_socket():
    raw = yaml.safe_load(GOOD)
    raw["paths"] = {"runDir": "/run/" + "x" * 100}
    with pytest.raises(ConfigError, match=r"^n\.yaml: paths\.runDir: /run/x+\.\.\. is too long"):
        parse(raw, "n.yaml")


def test_run_dir_must_be_absolute():
    raw = yaml.safe_load(GOOD)
    raw["paths"] = {"runDir": "run"}
    with pytest.raises(ConfigError, match=r"^n\.yaml: paths\.runDir: 'run' is not an absolute path$"):
        parse(raw, "n.yaml")


def test_cluster_file_bad_bytes_and_duplicate_keys(tmp_path):
    f = tmp_path / "cluster.yaml"
    f.write_bytes(b"nodes: []\n\xfe\n")
    with pytest.raises(ConfigError, match=r"cluster\.yaml: not UTF-8 text: line 2, column 1: byte 0xfe"):
        load_cluster(f)
    f.write_text("nodes:\n  - name: n1\n    ip: 198.18.0.11\n    ip: 198.18.0.12\n")
    with pytest.raises(ConfigError, match=r"cluster\.yaml: nodes\[0\]\.ip: duplicate key at line 4 \(first at line 3\)$"):
        load_cluster(f)


@pytest.mark.parametrize("argv", [["config", "check"], ["node", "run"]])
@pytest.mark.parametrize("content", ["nodeName: n1\n".encode("utf-16"), b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_cli_config_check_and_node_run_without_traceback(tmp_path, argv, content):
    f = tmp_path / "node.yaml"
    f.write_bytes(content)
    p = subprocess.run([sys.executable, "-m", "podroute.cli", *argv, "--config", str(f)],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith(f"podroute: invalid config: {f}: ") and p.stderr.count("\n") == 1, p.stderr
    assert p.stdout == ""


# -- fuzz: whatever the file holds, load() returns a NodeConfig or raises one clean ConfigError -----

from datetime import timedelta  # noqa: E402

from hypothesis import HealthCheck, example, given, settings, strategies as st  # noqa: E402

FUZZ = settings(max_examples=250, deadline=timedelta(seconds=5),
                suppress_health_check=[HealthCheck.too_slow])
_TOKENS = ["nodeName", "nodeIP", "podCIDRs", "ipPools", "peers", "asn", "passwordFile", "paths", "runDir",
           "listen", "cidr", ":", ": ", " ", "  ", "\n", "\t", "- ", "[", "]", "{", "}", ",", "&a ", "*a", "&b ",
           "*b", "!!int ", "!!bool ", "!!float ", "!!timestamp ", "!!binary ", "!!python/name:os.system ",
           "!!set ", "!!omap ", "<<: ", "? ", "'", '"', "\\x00", "\\u0000", "#", "|", ">", "---", "...",
           "%YAML 1.1\n", "%TAG ! tag:x,1:\n", "0x", "0o", "1e9", "1_000", "2001-01-01", "2001-13-45", "~",
           "null", ".nan", ".inf", "198.18.0.11", "198.19.1.0/26", "198.19.0.0/16", "\ufeff", "\u2028", "\x85"]
_yaml_text = st.lists(st.sampled_from(_TOKENS) | st.text(max_size=4), max_size=60).map("".join)
_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
            | st.sampled_from(["198.18.0.11", "198.19.1.0/26", "auto", "Always", "64512:100", "/tmp/x"]))
_keys = st.sampled_from(["nodeName", "nodeIP", "asn", "routerID", "podCIDRs", "ipPools", "mtu", "peers",
                         "address", "holdTime", "passive", "port", "password", "passwordFile", "cidr",
                         "blockSize", "ipipMode", "listen", "paths", "runDir", "serviceCIDRs",
                         "communities", "clusterFile", "resyncInterval"]) | st.text(max_size=8)
_trees = st.recursive(_scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_keys, kids, max_size=5),
                      max_leaves=25)


def _check(f: Path) -> None:
    try:
        load(f)
    except ConfigError as e:
        text = str(e)
        assert text.startswith(f"{f}: ") and text.isprintable() and len(text) < 2500, text


@FUZZ
@given(data=st.binary(max_size=3000))
@example(data="nodeName: n1\n".encode("utf-32"))
@example(data=b"\xef\xbb\xbf" + GOOD.encode())
def test_fuzz_loader_on_arbitrary_bytes(tmp_path_factory, data):
    f = tmp_path_factory.mktemp("fuzz") / "node.yaml"
    f.write_bytes(data)
    _check(f)


@FUZZ
@given(text=_yaml_text)
def test_fuzz_loader_on_yaml_shaped_text(tmp_path_factory, text):
    f = tmp_path_factory.mktemp("fuzz") / "node.yaml"
    f.write_text(text, encoding="utf-8", errors="surrogatepass")
    _check(f)


@FUZZ
@given(tree=_trees, where=st.lists(_keys | st.integers(0, 3), max_size=3), value=_trees)
def test_fuzz_loader_on_structures(tmp_path_factory, tree, where, value):
    raw = yaml.safe_load(GOOD + "peers: [{address: 198.18.0.1, asn: 1}]\n")
    cur = raw  # graft ``value`` somewhere in a valid config, and try ``tree`` on its own
    for step in where[:-1]:
        nxt = cur.get(step) if isinstance(cur, dict) else (cur[step] if isinstance(cur, list) and isinstance(step, int) and step < len(cur) else None)
        if not isinstance(nxt, (dict, list)):
            break
        cur = nxt
    if where and isinstance(cur, dict) and not isinstance(where[-1], int):
        cur[where[-1]] = value
    for doc in (raw, tree):
        f = tmp_path_factory.mktemp("fuzz") / "node.yaml"
        f.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8", errors="surrogatepass")
        _check(f)

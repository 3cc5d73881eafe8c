"""The shim as the runtime runs it: ``/usr/bin/python3 -I -S cni/shim.py`` in a subprocess."""
from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cni.install import install_shim

ROOT = Path(__file__).resolve().parents[2]
SHIM = ROOT / "cni" / "shim.py"
PY = "/usr/bin/python3"

pytestmark = pytest.mark.skipif(not Path(PY).exists(), reason="needs /usr/bin/python3")


def run_shim(env: dict[str, str], stdin: str = "", argv: list[str] | None = None,
             timeout: float = 20) -> tuple[int, dict | None, str]:
    proc = subprocess.run(argv or [PY, "-I", "-S", str(SHIM)], input=stdin, env=env,
                          capture_output=True, text=True, timeout=timeout)
    out = proc.stdout.strip()
    return proc.returncode, (json.loads(out) if out else None), proc.stderr


def base_env(**kw: str) -> dict[str, str]:
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/var/run/netns/x",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni",
           "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"}
    env.update(kw)
    return {k: v for k, v in env.items() if v is not None}


def conf(sock: Path | str, **kw) -> str:
    c = {"cniVersion": "1.0.0", "name": "podnet", "type": "podroute", "agentSocket": str(sock)}
    c.update(kw)
    return json.dumps(c)


class FakeAgent:
    """Accepts connections on a unix socket, records the request line, answers ``reply``."""

    def __init__(self, path: Path, reply: dict | bytes, delay: float = 0.0) -> None:
        self.path = path
        self.reply = reply
        self.delay = delay
        self.requests: list[dict] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.sock.settimeout(10)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            buf = b""
            while b"\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                buf += chunk
            self.requests.append(json.loads(buf))
            time.sleep(self.delay)
            data = self.reply if isinstance(self.reply, bytes) else json.dumps(self.reply).encode() + b"\n"
            try:
                conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def sockdir():
    # unix socket paths are limited to 108 bytes; tmp_path can be longer
    import tempfile
    with tempfile.TemporaryDirectory(prefix="cnis-", dir="/tmp") as d:
        yield Path(d)


def test_version_answered_locally():
    rc, out, _ = run_shim({"CNI_COMMAND": "VERSION"}, '{"cniVersion":"1.0.0"}')
    assert rc == 0
    assert out == {"cniVersion": "1.1.0",
                   "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


def test_malformed_json_is_code_6(sockdir):
    rc, out, _ = run_shim(base_env(), "{not json")
    assert rc == 1
    assert out["code"] == 6 and out["cniVersion"] == "1.1.0" and out["msg"]


def test_non_object_json_is_code_6(sockdir):
    rc, out, _ = run_shim(base_env(), "[1, 2]")
    assert (rc, out["code"]) == (1, 6)


@pytest.mark.parametrize("missing", ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])
def test_missing_env_is_code_4(sockdir, missing):
    env = base_env()
    del env[missing]
    rc, out, _ = run_shim(env, conf(sockdir / "agent.sock"))
    assert rc == 1
    assert out["code"] == 4
    assert missing in out["msg"]


def test_del_without_netns_is_forwarded(sockdir):
    agent = FakeAgent(sockdir / "agent.sock", {"ok": True, "result": None})
    try:
        rc, out, _ = run_shim(base_env(CNI_COMMAND="DEL", CNI_NETNS=None), conf(agent.path))
    finally:
        agent.close()
    assert rc == 0 and out is None  # DEL prints nothing on success
    assert agent.requests[0]["command"] == "DEL" and agent.requests[0]["netns"] == ""


def test_unknown_command_is_code_4(sockdir):
    rc, out, _ = run_shim(base_env(CNI_COMMAND="FOO"), conf(sockdir / "agent.sock"))
    assert (rc, out["code"]) == (1, 4)


def test_unsupported_version_is_code_1(sockdir):
    rc, out, _ = run_shim(base_env(), conf(sockdir / "agent.sock", cniVersion="2.0.0"))
    assert rc == 1 and out["code"] == 1
    assert "2.0.0" in out["msg"]


def test_check_on_old_config_is_code_1(sockdir):
    rc, out, _ = run_shim(base_env(CNI_COMMAND="CHECK"), conf(sockdir / "a.sock", cniVersion="0.3.1"))
    assert (rc, out["code"]) == (1, 1)


def test_missing_name_is_code_7(sockdir):
    rc, out, _ = run_shim(base_env(), json.dumps({"cniVersion": "1.0.0", "agentSocket": "/x"}))
    assert (rc, out["code"]) == (1, 7)


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_unreachable_agent_is_code_11(sockdir, command):
    path = sockdir / "nobody.sock"
    rc, out, _ = run_shim(base_env(CNI_COMMAND=command), conf(path))
    assert rc == 1
    assert out["code"] == 11
    assert str(path) in out["msg"] and "not reachable" in out["msg"]


def test_refused_connection_is_code_11(sockdir):
    path = sockdir / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))  # bound, never listening -> ECONNREFUSED
    try:
        rc, out, _ = run_shim(base_env(), conf(path))
    finally:
        s.close()
    assert (rc, out["code"]) == (1, 11) and str(path) in out["msg"]


def test_agent_timeout_is_code_11(sockdir):
    agent = FakeAgent(sockdir / "slow.sock", {"ok": True, "result": {}}, delay=3)
    try:
        t0 = time.monotonic()
        rc, out, _ = run_shim(base_env(), conf(agent.path, agentTimeout=0.5))
        assert time.monotonic() - t0 < 2.5
    finally:
        agent.close()
    assert (rc, out["code"]) == (1, 11)


def test_result_passthrough_and_request_shape(sockdir):
    result = {"cniVersion": "1.0.0", "interfaces": [{"name": "prtx", "mac": "02:00:00:00:00:01"}],
              "ips": [{"address": "198.19.0.5/32", "gateway": "169.254.1.1", "interface": 1}],
              "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}
    agent = FakeAgent(sockdir / "agent.sock", {"ok": True, "result": result})
    try:
        rc, out, _ = run_shim(base_env(), conf(agent.path, mtu=1400))
    finally:
        agent.close()
    assert rc == 0 and out == result
    req = agent.requests[0]
    assert req["command"] == "ADD" and req["containerID"] == "abc123"
    assert req["netns"] == "/var/run/netns/x" and req["ifName"] == "eth0"
    assert req["args"] == {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "default",
                           "K8S_POD_NAME": "web-0"}
    assert req["config"]["mtu"] == 1400 and req["path"] == "/usr/lib/cni"


def test_agent_error_becomes_spec_error(sockdir):
    agent = FakeAgent(sockdir / "agent.sock",
                      {"ok": False, "code": 7, "msg": "bad mtu", "details": "mtu 5"})
    try:
        rc, out, _ = run_shim(base_env(), conf(agent.path, cniVersion="0.4.0"))
    finally:
        agent.close()
    assert rc == 1
    assert out == {"cniVersion": "0.4.0", "code": 7, "msg": "bad mtu", "details": "mtu 5"}


def test_agent_garbage_is_code_999(sockdir):
    agent = FakeAgent(sockdir / "agent.sock", b"hello\n")
    try:
        rc, out, _ = run_shim(base_env(), conf(agent.path))
    finally:
        agent.close()
    assert (rc, out["code"]) == (1, 999)


def test_shim_imports_only_stdlib():
    """The shim, run as the runtime runs it (-I -S) through its VERSION path, leaves only
    standard-library modules in sys.modules: nothing of pyroute2, yaml, cni or podroute.
    (Its exec cost, as the runtime pays it, is measured in bench/cni.py's podroute side.)"""
    code = (
        "import runpy, sys, io\n"
        "sys.stdin = io.TextIOWrapper(io.BytesIO(b''))\n"
        "sys.argv = ['shim']\n"
        "try:\n"
        f"    runpy.run_path({str(SHIM)!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pyroute2', 'yaml', 'cni', 'podroute'))\n"
        "print(repr(bad), file=sys.stderr)\n"
        "non_std = sorted(m for m in sys.modules if m.split('.')[0] not in sys.stdlib_module_names\n"
        "                 and m not in ('__main__', '__mp_main__'))\n"
        "print(repr(non_std), file=sys.stderr)\n"
    )
    proc = subprocess.run([PY, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=20,
                          env={"CNI_COMMAND": "VERSION"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 0, proc.stderr
    assert "supportedVersions" in json.loads(proc.stdout), proc.stdout  # it ran VERSION
    assert lines[-2] == "[]" and lines[-1] == "[]", proc.stderr


def test_installed_copy_runs_with_shebang(tmp_path):
    target = install_shim(tmp_path / "bin")
    assert target == tmp_path / "bin" / "podroute"
    assert target.read_text().startswith("#!/usr/bin/python3 -IS\n")
    assert (target.stat().st_mode & 0o777) == 0o755
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]
    rc, out, _ = run_shim({"CNI_COMMAND": "VERSION"}, argv=[str(target)])
    assert rc == 0 and out["cniVersion"] == "1.1.0"
    assert "marshal" in target.read_text()  # pre-compiled for this interpreter
    # the fallback for another interpreter version runs the embedded source
    text = target.read_text()
    tag = text.split("cache_tag == ", 1)[1].split(":", 1)[0]
    other = tmp_path / "other"
    other.write_text(text.replace(tag, "'cpython-0'"))
    rc, out, _ = run_shim({"CNI_COMMAND": "VERSION"}, argv=[PY, "-IS", str(other)])
    assert rc == 0 and out["cniVersion"] == "1.1.0"
    # reinstall over an existing file is atomic and keeps the mode
    install_shim(tmp_path / "bin")
    assert (target.stat().st_mode & 0o777) == 0o755


# -- the shim's stdlib-C JSON codec agrees with the json module ------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

from cni import shim as shim_mod  # noqa: E402

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_shim_codec_roundtrips_like_json(value):
    text = shim_mod.dumps(value)
    assert json.loads(text) == value
    assert shim_mod.loads(text) == value
    assert shim_mod.loads(" \n" + json.dumps(value) + "\n") == value
    assert shim_mod.loads(text.encode()) == value


@pytest.mark.parametrize("bad", ["", "{", '{"a":1} x', "[1,]", b"\xff\xfe", "nul"])
def test_shim_codec_rejects_garbage(bad):
    with pytest.raises(ValueError):
        shim_mod.loads(bad)

"""Hostile stdin and CNI_* values: the shim answers with a spec error code, never a traceback
or a retryable 11 (issue 14 item 6). Runtime-style subprocess runs for the repros, in-process
hypothesis fuzzing of the same input path for the bulk."""
from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
import threading
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, example, given, settings, strategies as st

from cni import server as server_mod, shim
from cni.model import CNIRequest
from cni.server import CNIServer

ROOT = Path(__file__).resolve().parents[2]
SHIM = ROOT / "cni" / "shim.py"
PY = "/usr/bin/python3"
SPEC_CODES = {1, 2, 3, 4, 5, 6, 7, 11, 50, 51}  # CNI spec "Well-known Error Codes" (999 is "generic")

pytestmark = pytest.mark.skipif(not Path(PY).exists(), reason="needs /usr/bin/python3")


def env(**kw: str | bytes | None) -> dict:
    e = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/var/run/netns/x",
         "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni", "CNI_ARGS": "K8S_POD_NAME=web-0"}
    e.update(kw)
    return {k: v for k, v in e.items() if v is not None}


def conf(sock: Path | str, **kw) -> dict:
    return {"cniVersion": "1.0.0", "name": "podnet", "type": "podroute", "agentSocket": str(sock), **kw}


class Handler:
    def __init__(self) -> None:
        self.requests: list[CNIRequest] = []

    async def handle(self, req: CNIRequest):
        self.requests.append(req)
        return None


@pytest.fixture
def agent():
    """A real CNIServer on a temporary socket, run in its own thread and event loop."""
    with tempfile.TemporaryDirectory(prefix="cnin-", dir="/tmp") as d:
        handler = Handler()
        srv = CNIServer(Path(d) / "cni.sock", handler)
        loop = asyncio.new_event_loop()
        task = loop.create_task(srv.run())
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        asyncio.run_coroutine_threadsafe(asyncio.wait_for(srv.ready.wait(), 5), loop).result(10)
        srv.handler_ = handler
        try:
            yield srv
        finally:
            loop.call_soon_threadsafe(task.cancel)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()


def run(environ: dict, stdin: bytes) -> tuple[int, dict, str]:
    """The shim as the runtime runs it; asserts one JSON line on stdout and nothing on stderr."""
    proc = subprocess.run([PY, "-I", "-S", str(SHIM)], input=stdin, env=environ, capture_output=True,
                          timeout=30)
    out = proc.stdout.decode()
    assert out.count("\n") == 1 and proc.stderr == b"", (out, proc.stderr)
    return proc.returncode, json.loads(out), out


def test_10mb_config_is_code_6_naming_the_limit_and_never_reaches_the_agent(agent):
    big = json.dumps(conf(agent.socket_path, pad="x" * 10_000_000)).encode()
    rc, out, _ = run(env(), big)
    assert (rc, out["code"]) == (1, 6), out
    assert f"larger than the {shim.MAX_CONFIG}-byte limit" in out["msg"]
    assert agent.handler_.requests == []


@pytest.mark.parametrize("stdin,details", [
    (b'{"cniVersion":"1.0.0","name":"n"', "Expecting ',' delimiter: line 1 column 33 (char 32)"),
    (b'{"cniVersion" "1.0.0"}', "Expecting ':' delimiter: line 1 column 15 (char 14)"),
    (b'{"a":1', "Expecting ',' delimiter: line 1 column 7 (char 6)"),
    (b'"abc', "Unterminated string starting at: line 1 column 1 (char 0)"),
    (b'{"a": "\x01"}', "Invalid control character at: line 1 column 8 (char 7)"),
    (b"[" * 100_000, f"nested deeper than {shim.MAX_DEPTH} levels"),
    (b"\xff\xfe{}", "not UTF-8 (RFC 8259 section 8.1): byte 0xff at offset 0"),
    (b"", "Expecting value: line 1 column 1 (char 0)"),
    (b'{"a":1}\n{}', "Extra data: line 2 column 1 (char 8)"),
])
def test_invalid_json_is_code_6_with_a_clean_detail(stdin, details):
    rc, out, _ = run(env(), stdin)
    assert (rc, out["code"], out["details"]) == (1, 6, details), out


def test_deep_but_valid_config_is_code_6_not_999(agent):
    deep = json.dumps(conf(agent.socket_path)).encode()[:-1] + b',"x":' + b"[" * 600 + b"]" * 600 + b"}"
    rc, out, _ = run(env(), deep)
    assert (rc, out["code"]) == (1, 6) and "nested deeper" in out["details"], out
    assert agent.handler_.requests == []


def test_closed_stdin_is_code_5():
    proc = subprocess.run(["/bin/sh", "-c", f'exec {PY} -I -S "$0" <&-', str(SHIM)], env=env(),
                          capture_output=True, timeout=30)
    out = json.loads(proc.stdout)
    assert (proc.returncode, out["code"], proc.stderr) == (1, 5, b""), out


def test_environment_that_overflows_the_request_is_code_4(agent):
    wide = "\u00e9" * 60_000  # 120 kB of UTF-8 each (under the kernel's 128 KiB per string), 360 kB escaped
    rc, out, _ = run(env(CNI_ARGS="A=" + wide, CNI_PATH=wide, CNI_NETNS="/" + wide),
                     json.dumps(conf(agent.socket_path)).encode())
    assert (rc, out["code"]) == (1, 4) and "CNI_" in out["msg"] and str(shim.MAX_REQUEST) in out["msg"], out
    assert agent.handler_.requests == []


def test_non_utf8_environment_values_reach_the_agent_as_escapes(agent):
    raw = {k.encode(): v.encode() for k, v in env().items()}
    raw[b"CNI_ARGS"] = b"K8S_POD_NAME=\xff\xfe"
    proc = subprocess.run([PY, "-I", "-S", str(SHIM)], input=json.dumps(conf(agent.socket_path)).encode(),
                          env=raw, capture_output=True, timeout=30)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")  # the fake handler's result is None
    assert agent.handler_.requests[0].args["K8S_POD_NAME"] == "\udcff\udcfe"


def test_server_limit_is_the_shims_and_overlong_or_deep_lines_get_code_6(agent):
    assert server_mod.MAX_REQUEST is shim.MAX_REQUEST

    async def roundtrip(data: bytes) -> dict:
        r, w = await asyncio.open_unix_connection(str(agent.socket_path))
        try:
            w.write(data)
            await w.drain()
        except ConnectionError:
            pass
        line = await r.readline()
        w.close()
        return json.loads(line)

    big = asyncio.run(roundtrip(b'"' + b"x" * shim.MAX_REQUEST + b'"\n'))
    assert big["code"] == 6 and f"larger than {shim.MAX_REQUEST} bytes" in big["msg"]
    deep = asyncio.run(roundtrip(b"[" * 100_000 + b"\n"))
    assert deep["code"] == 6 and deep["msg"] == "request is not valid JSON"


def test_bad_agent_socket_is_code_7_not_11():
    for sock in ["relative.sock", "/tmp/a\0b", "\0abstract", "/tmp/" + "x" * 200, "/tmp/\ud800"]:
        out, status = shim.dispatch(env(), json.dumps(conf(sock)).encode())
        assert (status, json.loads(out)["code"]) == (1, 7), (sock, out)


def test_float_heavy_config_that_outgrows_the_request_limit_is_code_7():
    data = json.dumps(conf("/tmp/x.sock")).encode()[:-1] + b',"x":[' + b",".join([b"9e15"] * 52_000) + b"]}"
    assert len(data) <= shim.MAX_CONFIG  # 9e15 is re-encoded as 9000000000000000.0: 988 kB
    out, status = shim.dispatch(env(CNI_ARGS="A=" + "a" * 100_000), data)
    err = json.loads(out)
    assert (status, err["code"]) == (1, 7) and f"over the {shim.MAX_REQUEST}-byte request limit" in err["msg"]


# -- fuzz: stdin bytes and CNI_* values, in process, against a fake agent that decodes like the server --

class _FakeAgentSocket:
    """Stands in for ``_socket.socket``: records the request line, answers as CNIServer would."""
    lines: list[bytes] = []

    def __init__(self, *a) -> None:
        self.reply = b""

    def settimeout(self, t) -> None:
        assert t > 0

    def connect(self, path) -> None:
        assert path.startswith("/") and "\0" not in path  # parse_config's checks held

    def sendall(self, line: bytes) -> None:
        assert line.endswith(b"\n") and len(line) <= shim.MAX_REQUEST
        _FakeAgentSocket.lines.append(line)
        try:
            CNIRequest.from_wire(json.loads(line))  # the agent can decode what the shim sends
            self.reply = b'{"ok":true,"result":null}\n'
        except server_mod.CNIError as e:
            self.reply = json.dumps(e.to_wire()).encode() + b"\n"

    def recv(self, n: int) -> bytes:
        out, self.reply = self.reply, b""
        return out

    def close(self) -> None:
        pass


class _FakeSocketModule:
    socket = _FakeAgentSocket


_RANDOM_ENV = st.none() | st.binary(max_size=40).filter(lambda b: b"\0" not in b).map(
    lambda b: b.decode("utf-8", "surrogateescape"))


def _env_value(*good: str):
    """Mostly a valid value, so that the fuzz also reaches the agent, else anything an env can hold."""
    return st.one_of(st.sampled_from(good), st.sampled_from(good), _RANDOM_ENV)


_COMMAND = st.one_of(st.sampled_from(["ADD", "DEL", "CHECK"]), st.sampled_from(["VERSION", "STATUS", "GC", "", "add"]),
                     _RANDOM_ENV)
_JSON_TOKENS = ['{', '}', '[', ']', ',', ':', '"', '"cniVersion"', '"name"', '"agentSocket"', '"agentTimeout"',
                '"1.0.0"', '"0.3.1"', '"n"', '"/tmp/a.sock"', '0', '-1', '1e999', '1.5', 'true', 'null', 'NaN',
                '-Infinity', '"\\ud800"', '"\\u0000"', '"\\x"', ' ', '\n', '\x01', '\u00e9', '9' * 5000]
_json_ish = st.lists(st.sampled_from(_JSON_TOKENS) | st.text(max_size=3), max_size=40).map("".join).map(
    lambda t: t.encode("utf-8", "surrogatepass"))
_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
_value = st.recursive(_leaf, lambda k: st.lists(k, max_size=3) | st.dictionaries(st.text(max_size=6), k, max_size=3),
                      max_leaves=12)
_deep = (st.sampled_from([63, 64, 65, 600, 1200]) | st.integers(1, 1200)).map(lambda n: json.loads("[" * n + "]" * n))  # valid JSON, deeper than dumps() recursion
_config = st.fixed_dictionaries(
    {"cniVersion": st.one_of(st.sampled_from(["1.0.0", "0.4.0", "0.3.1"]), st.sampled_from(["1.1.0", "2.0", ""]), _value),
     "name": st.one_of(st.just("podnet"), _value)},
    optional={"agentSocket": st.one_of(st.just("/tmp/fuzz.sock"), _value), "agentTimeout": st.one_of(st.just(1), _value),
              "prevResult": _value, "mtu": _value, "args": _deep, "type": st.just("podroute")}).map(
    lambda c: json.dumps(c, allow_nan=True).encode())
_stdin = st.one_of(_config, _config, st.binary(max_size=600), _json_ish, _config.flatmap(
    lambda b: st.integers(0, len(b)).map(lambda n: b[:n])))  # truncated configs


@settings(max_examples=600, deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow])
@given(stdin=_stdin, command=_COMMAND, cid=_env_value("abc123", "0123456789abcdef" * 4),
       netns=_env_value("/var/run/netns/x", "/proc/1/ns/net"), ifname=_env_value("eth0", "net1"),
       path=_env_value("/opt/cni/bin", "/usr/lib/cni:/opt/cni/bin"),
       args=_env_value("K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0", "IgnoreUnknown=1", ""))
@example(stdin=b'{"a":1', command="ADD", cid="a", netns="/x", ifname="eth0", path="/p", args=None)
@example(stdin=b"[" * 50_000, command="ADD", cid="a", netns="/x", ifname="eth0", path="/p", args=None)
@example(stdin=b'{"cniVersion":"1.0.0","name":"n","x":' + b"[" * 600 + b"]" * 600 + b"}", command="ADD",
         cid="a", netns="/x", ifname="eth0", path="/p", args=None)
def test_fuzz_shim_input_path(stdin, command, cid, netns, ifname, path, args):
    environ = {k: v for k, v in {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
                                 "CNI_IFNAME": ifname, "CNI_PATH": path, "CNI_ARGS": args}.items()
               if v is not None}
    with mock.patch.object(shim, "_socket", _FakeSocketModule):
        out, status = shim.dispatch(environ, stdin)
    _check_answer(out, status)


def _check_answer(out: str, status: int) -> None:
    assert out.isascii() and "\n" not in out
    event("exit 0" if status == 0 else f"code {json.loads(out).get('code')}")  # --hypothesis-show-statistics
    if status == 0:
        assert out == "" or isinstance(json.loads(out), dict)
        return
    assert status == 1
    err = json.loads(out)
    assert set(err) <= {"cniVersion", "code", "msg", "details"} and isinstance(err["cniVersion"], str)
    assert err["code"] in SPEC_CODES, err  # 999 here would be the shim's own crash
    assert isinstance(err["msg"], str) and err["msg"] and "Scanner" not in err.get("details", "")


def _nowhere(stdin: bytes, sock: str) -> bytes:
    """``stdin`` with any agentSocket pointed at ``sock``, so that no fuzz input can reach a real agent
    (the shim decodes exactly as json does: same C scanner)."""
    try:
        conf = json.loads(stdin)
    except (ValueError, RecursionError):
        return stdin
    if not isinstance(conf, dict):
        return stdin
    if not conf:
        return json.dumps({"agentSocket": sock}).encode()
    body = stdin.rstrip()  # an object ends with "}"; a repeated key takes the last value
    return body[:-1] + b',"agentSocket":' + json.dumps(sock).encode() + b"}"


@settings(max_examples=40, deadline=timedelta(seconds=10), suppress_health_check=[HealthCheck.too_slow])
@given(stdin=_stdin, command=st.sampled_from(["ADD", "DEL", "CHECK"]))
@example(stdin=b'{"cniVersion":"1.0.0","name":"n"', command="ADD")
@example(stdin=b'{"cniVersion":"1.0.0","name":"n","x":' + b"[" * 600 + b"]" * 600 + b"}", command="ADD")
def test_fuzz_shim_as_the_runtime_runs_it(stdin, command):
    """A smaller batch through a real ``python3 -I -S`` process: no ``json`` module loaded there."""
    with tempfile.TemporaryDirectory(prefix="cnif-", dir="/tmp") as d:
        proc = subprocess.run([PY, "-I", "-S", str(SHIM)], input=_nowhere(stdin, f"{d}/none.sock"),
                              env=env(CNI_COMMAND=command), capture_output=True, timeout=30)
    assert proc.stderr == b"" and proc.stdout.endswith(b"\n"), proc
    _check_answer(proc.stdout.decode()[:-1], proc.returncode)

"""podroute CNI shim: the executable the container runtime runs (stdlib only).

The runtime execs this file (installed as ``<cni bin dir>/podroute`` with the first
line ``#!/usr/bin/python3 -IS``, see :mod:`cni.install`) with the CNI_* environment
and the network configuration JSON on stdin (CNI spec 1.0.0, "Section 3: Execution
Protocol"). It imports only the standard library so that starting it costs a few
tens of milliseconds; all real work happens in the podroute agent.

One file on purpose, over the ~400-line guideline: :mod:`cni.install` copies and pre-compiles
this single stdlib-only file as the plugin executable; a split would put a package on the CNI
bin path and imports on the start-up path every pod pays twice.

Behaviour (mirrors the reference plugins' ``skel`` package):

* ``VERSION`` is answered locally: ``{"cniVersion": "1.1.0", "supportedVersions": [...]}``.
* ``ADD``/``DEL``/``CHECK``/``STATUS``: the environment and config are validated, then ONE
  request line is sent over the unix socket named by the config's ``"agentSocket"`` (default
  ``/run/podroute/cni.sock``) and the agent's answer is relayed:
  success -> the result JSON on stdout (nothing for DEL/CHECK/STATUS), exit 0;
  failure -> the spec's error JSON ``{"cniVersion", "code", "msg", "details"}`` on
  stdout, exit 1 (CNI spec 1.0.0 "Error" section).
* STATUS (CNI 1.1 "STATUS: Check plugin status") needs only CNI_COMMAND and CNI_PATH and a
  config of cniVersion 1.1.0 or later (libcni's skel rules); an agent that cannot be reached
  is code 50 (plugin not available) with the reason, not 11.
* ``GC`` (CNI 1.1 "GC: Clean up any stale resources", only for a 1.1.0 config, else code 1):
  forwarded like the others; the config carries ``cni.dev/valid-attachments`` and only
  CNI_PATH is required.
* Anything else -> code 4.

CNI_CONTAINERID and CNI_IFNAME are checked here with libcni's rules before the agent is
contacted (the agent checks them again, :mod:`cni.validate`, whose rules these mirror): ID
``^[A-Za-z0-9][A-Za-z0-9_.-]*$``, at most 255 characters; interface name 1-15 bytes, not
``.``/``..``, no ``/``, ``:``, whitespace or control character.

Error codes produced here (CNI spec 1.1 "Well-known Error Codes"):
1 unsupported ``cniVersion`` (or CHECK on a config older than 0.4.0, STATUS or GC older than
1.1.0), 4 missing/invalid CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS (ADD/CHECK), CNI_IFNAME,
CNI_PATH, malformed CNI_ARGS, 5 stdin cannot be read, 6 stdin is not a JSON object (not
UTF-8, invalid JSON, nested deeper than ``MAX_DEPTH``, or over ``MAX_CONFIG`` bytes: see
:func:`parse_config`), 7 config lacks
``cniVersion``/``name`` or has a bad ``agentSocket``/``agentTimeout``, 11 the agent is
not reachable (missing socket, connection refused, timeout, connection dropped: the
runtime retries; this includes DEL), 50 the same for STATUS, 999 the agent answered garbage.

Input bounds: stdin is read up to ``MAX_CONFIG`` bytes and never further (a larger or endless
stdin is refused unread); the request line sent to the agent is at most ``MAX_REQUEST``
bytes, the agent's read limit (:mod:`cni.server` takes it from here).

Wire format (UTF-8 JSON, one line each way, one request per connection)::

    shim -> agent  {"command": "ADD", "containerID": "<id>", "netns": "/var/run/netns/x",
                    "ifName": "eth0", "args": {"K8S_POD_NAMESPACE": "default",
                    "K8S_POD_NAME": "web-0", ...every CNI_ARGS pair...},
                    "path": "<CNI_PATH>", "config": {...stdin config...}}\\n
    agent -> shim  {"ok": true, "result": {...CNI result...} | null}\\n
                 | {"ok": false, "code": 7, "msg": "...", "details": "..."}\\n

Config keys read here: ``cniVersion`` (required), ``name`` (required), ``agentSocket``
(path, default ``/run/podroute/cni.sock``), ``agentTimeout`` (seconds, default 30).
"""
import sys

# Built-in and C modules only: ``import json, socket`` pulls in re, enum, selectors and costs
# ~15 ms of a ~25 ms start, ``import os`` ~1 ms (posix is built in); the runtime pays the
# shim's start twice per pod.
import _json
import _socket
import posix

_AF_UNIX = _socket.AF_UNIX
_SOCK_STREAM = _socket.SOCK_STREAM
_WS = " \t\n\r"


class _ScanContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # "NaN", "Infinity", "-Infinity"
    memo = {}


_scan = _json.make_scanner(_ScanContext())


def _where(msg, text, pos):
    """``msg`` with json's position wording: ``msg: line L column C (char N)``."""
    line = text.count("\n", 0, pos) + 1
    return "%s: line %d column %d (char %d)" % (msg, line, pos - text.rfind("\n", 0, pos), pos)


def _scan_error(text, idx):
    """The message of the error that scanning ``text`` from ``idx`` hits.

    The C scanner builds its errors with ``json.decoder.JSONDecodeError`` only if that
    module is already imported (CPython 3.11 ``_json.c`` ``raise_errmsg``); otherwise it
    returns NULL with no exception set, which surfaces as ``SystemError: <_json.Scanner
    object at 0x...> returned NULL without setting an exception``. The shim does not import
    ``json`` on the success path (~15 ms), so on failure it imports it and scans again.
    """
    try:
        import json.decoder  # noqa: F401  (read by the C scanner)
        _scan(text, idx)
    except StopIteration as e:
        return _where("Expecting value", text, e.value)
    except RecursionError:
        return "nested deeper than %d levels" % MAX_DEPTH
    except Exception as e:  # json.decoder.JSONDecodeError, or the integer digit limit
        return str(e) or type(e).__name__
    return "invalid JSON"


def _check_depth(obj):
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError("nested deeper than %d levels" % MAX_DEPTH)
        for child in (node.values() if isinstance(node, dict) else node):
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))


def loads(text):
    """Decode one JSON document (str or UTF-8 bytes) of at most ``MAX_DEPTH`` nested
    arrays/objects. Raises ValueError with one line saying what is wrong and where."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError("not UTF-8 (RFC 8259 section 8.1): byte 0x%02x at offset %d"
                             % (text[e.start], e.start))
    end = len(text)
    idx = 0
    while idx < end and text[idx] in _WS:
        idx += 1
    try:
        obj, idx = _scan(text, idx)
    except StopIteration as e:
        raise ValueError(_where("Expecting value", text, e.value))
    except RecursionError:
        raise ValueError("nested deeper than %d levels" % MAX_DEPTH)
    except Exception:
        raise ValueError(_scan_error(text, idx))
    while idx < end and text[idx] in _WS:
        idx += 1
    if idx != end:
        raise ValueError(_where("Extra data", text, idx))
    if isinstance(obj, (dict, list)):
        _check_depth(obj)
    return obj


def dumps(obj):
    """Encode dict/list/str/int/float/bool/None as compact ASCII JSON. Raises TypeError."""
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, str):
        return _json.encode_basestring_ascii(obj)
    if isinstance(obj, int):
        return int.__repr__(obj)
    if isinstance(obj, float):
        if obj != obj:
            return "NaN"
        if obj in (float("inf"), float("-inf")):
            return "Infinity" if obj > 0 else "-Infinity"
        return float.__repr__(obj)
    if isinstance(obj, dict):
        return "{" + ",".join(_json.encode_basestring_ascii(str(k)) + ":" + dumps(v)
                              for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(dumps(v) for v in obj) + "]"
    raise TypeError("cannot encode %r as JSON" % type(obj).__name__)

SPEC_VERSION = "1.1.0"
SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
DEFAULT_SOCKET = "/run/podroute/cni.sock"
DEFAULT_TIMEOUT = 30.0
CONNECT_TIMEOUT = 2.0
MAX_RESPONSE = 1 << 20
MAX_CONFIG = 256 << 10   # stdin bytes; a network configuration with prevResult is a few KiB
MAX_REQUEST = 1 << 20    # one request line to the agent, newline included (the agent's limit)
MAX_DEPTH = 64           # nested arrays/objects; dumps() recurses once per level
SUN_PATH_MAX = 107       # sockaddr_un.sun_path is 108 bytes with the terminating NUL (unix(7))

E_INCOMPATIBLE_VERSION = 1
E_INVALID_ENV = 4
E_IO = 5
E_DECODE = 6
E_INVALID_CONFIG = 7
E_TRY_AGAIN = 11
E_PLUGIN_NOT_AVAILABLE = 50
E_INTERNAL = 999

_ATTACHMENT_COMMANDS = ("ADD", "DEL", "CHECK")
# CNI_NETNS is optional for DEL (skel's reqForCmd): the netns may already be gone.
_REQUIRED_ENV = {
    "CNI_CONTAINERID": _ATTACHMENT_COMMANDS,
    "CNI_NETNS": ("ADD", "CHECK"),
    "CNI_IFNAME": _ATTACHMENT_COMMANDS,
    "CNI_PATH": _ATTACHMENT_COMMANDS + ("STATUS", "GC"),
}
MAX_CONTAINER_ID = 255
MAX_IFNAME = 15
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_CHARS = _ALNUM | frozenset("_.-")


class ShimError(Exception):
    def __init__(self, code, msg, details=""):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


def parse_cni_args(raw):
    """``"K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"`` -> dict. Raises ShimError 4."""
    out = {}
    if not raw:
        return out
    for pair in raw.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ShimError(E_INVALID_ENV, "invalid CNI_ARGS pair %r" % pair)
        out[key] = value
    return out


def _shown(value):
    return repr(value[:40]) + ("... (%d characters)" % len(value) if len(value) > 40 else "")


def validate_container_id(cid):
    """Raise ShimError 4 unless ``cid`` is a valid CNI_CONTAINERID (see the module doc)."""
    if len(cid) > MAX_CONTAINER_ID:
        raise ShimError(E_INVALID_ENV, "CNI_CONTAINERID is longer than %d characters"
                        % MAX_CONTAINER_ID, "%d characters" % len(cid))
    if not cid or cid[0] not in _ALNUM or not _ID_CHARS.issuperset(cid):
        raise ShimError(E_INVALID_ENV, "CNI_CONTAINERID %s has invalid characters: it must "
                        "match ^[A-Za-z0-9][A-Za-z0-9_.-]*$" % _shown(cid))


def validate_ifname(name):
    """Raise ShimError 4 unless ``name`` is a valid CNI_IFNAME (see the module doc)."""
    what = "CNI_IFNAME %s" % _shown(name)
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ShimError(E_INVALID_ENV, what + " is not valid UTF-8")
    if not size:
        raise ShimError(E_INVALID_ENV, "CNI_IFNAME is required")
    if size > MAX_IFNAME:
        raise ShimError(E_INVALID_ENV, "%s is too long: %d bytes, at most %d"
                        % (what, size, MAX_IFNAME))
    if name in (".", ".."):
        raise ShimError(E_INVALID_ENV, what + " is not a valid interface name")
    for c in name:
        if c in "/:" or c.isspace() or ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0:
            raise ShimError(E_INVALID_ENV, what + " contains '/', ':', whitespace or a "
                            "control character")


def _version_tuple(v):
    try:
        return tuple(int(p) for p in v.split("."))
    except (AttributeError, ValueError):
        return None


def parse_config(data):
    """Decode stdin as :func:`read_stdin` returns it: bytes, or the OSError reading raised.

    Raises ShimError 5 (stdin unreadable), 6 (more than ``MAX_CONFIG`` bytes, not UTF-8 JSON,
    not an object) or 7/1 (bad fields). An oversized config is 6, not 5 or 11: the bytes
    arrived, podroute refuses to decode them, and the same bytes always get the same answer
    (CNI spec "Well-known Error Codes": 6 "failed to decode content"; only 11 asks the
    runtime to try again later).
    """
    if isinstance(data, OSError):
        raise ShimError(E_IO, "failed to read network configuration from stdin", str(data))
    if len(data) > MAX_CONFIG:
        raise ShimError(E_DECODE, "network configuration on stdin is larger than the %d-byte "
                        "limit of the podroute CNI plugin" % MAX_CONFIG)
    try:
        conf = loads(data)
    except ValueError as e:
        raise ShimError(E_DECODE, "failed to decode network configuration", str(e))
    if not isinstance(conf, dict):
        raise ShimError(E_DECODE, "network configuration is not a JSON object")
    version = conf.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise ShimError(E_INVALID_CONFIG, "network configuration has no cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise ShimError(E_INCOMPATIBLE_VERSION,
                        "incompatible CNI versions; config is %r, plugin supports %s"
                        % (version, SUPPORTED_VERSIONS))
    if not isinstance(conf.get("name"), str) or not conf.get("name"):
        raise ShimError(E_INVALID_CONFIG, "network configuration has no name")
    sock = conf.get("agentSocket", DEFAULT_SOCKET)
    if not isinstance(sock, str) or not sock:
        raise ShimError(E_INVALID_CONFIG, "agentSocket must be a non-empty string")
    # The kernel would cut a path at a NUL, read a leading NUL as the abstract namespace and
    # refuse one longer than sun_path: each of those is a config error, not "try again".
    try:
        encoded = sock.encode("utf-8", "surrogateescape")  # as the socket module encodes it
    except UnicodeEncodeError:
        encoded = None
    if encoded is None or not sock.startswith("/") or "\0" in sock or len(encoded) > SUN_PATH_MAX:
        raise ShimError(E_INVALID_CONFIG, "agentSocket must be an absolute path of at most %d "
                        "bytes without NUL (unix(7) sun_path)" % SUN_PATH_MAX)
    timeout = conf.get("agentTimeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ShimError(E_INVALID_CONFIG, "agentTimeout must be a positive number of seconds")
    return conf


def build_request(env, conf):
    """Validate env for the command and return the request object (dict). Raises ShimError 4/1."""
    command = env.get("CNI_COMMAND", "")
    for var, cmds in _REQUIRED_ENV.items():
        if command in cmds and not env.get(var):
            raise ShimError(E_INVALID_ENV, "required environment variable %s is missing" % var)
    if command == "STATUS":
        if _version_tuple(conf["cniVersion"]) < (1, 1, 0):
            raise ShimError(E_INCOMPATIBLE_VERSION,
                            "config version %s does not allow STATUS" % conf["cniVersion"])
        return {"command": command, "containerID": "", "netns": "", "ifName": "", "args": {},
                "path": env.get("CNI_PATH", ""), "config": conf}
    if command == "GC":
        if _version_tuple(conf["cniVersion"]) < (1, 1, 0):
            raise ShimError(E_INCOMPATIBLE_VERSION,
                            "config version %s does not allow GC" % conf["cniVersion"])
        return {"command": command, "containerID": "", "netns": "", "ifName": "",
                "args": parse_cni_args(env.get("CNI_ARGS", "")),
                "path": env.get("CNI_PATH", ""), "config": conf}
    ifname = env.get("CNI_IFNAME", "")
    validate_container_id(env.get("CNI_CONTAINERID", ""))
    validate_ifname(ifname)
    if command == "CHECK" and _version_tuple(conf["cniVersion"]) < (0, 4, 0):
        raise ShimError(E_INCOMPATIBLE_VERSION,
                        "config version %s does not allow CHECK" % conf["cniVersion"])
    return {
        "command": command,
        "containerID": env.get("CNI_CONTAINERID", ""),
        "netns": env.get("CNI_NETNS", ""),
        "ifName": ifname,
        "args": parse_cni_args(env.get("CNI_ARGS", "")),
        "path": env.get("CNI_PATH", ""),
        "config": conf,
    }


_ENV_OF_FIELD = {"containerID": "CNI_CONTAINERID", "netns": "CNI_NETNS", "ifName": "CNI_IFNAME",
                 "args": "CNI_ARGS", "path": "CNI_PATH"}


def encode_request(request):
    """The request line (bytes, newline-terminated). Raises ShimError 7 if the configuration,
    or 4 if the CNI_* environment, makes it longer than ``MAX_REQUEST`` (checked before
    connecting: the agent would refuse it, and a retry would not help)."""
    line = dumps(request).encode() + b"\n"
    if len(line) <= MAX_REQUEST:
        return line
    sizes = {k: len(dumps(v)) for k, v in request.items()}
    config = sizes.pop("config", 0)
    if config >= sum(sizes.values()):
        raise ShimError(E_INVALID_CONFIG, "network configuration is %d bytes once encoded for the "
                        "agent, over the %d-byte request limit" % (config, MAX_REQUEST))
    biggest = max(sizes, key=sizes.get)
    raise ShimError(E_INVALID_ENV, "%s is too long: the request to the agent would be %d bytes, "
                    "over the %d-byte limit" % (_ENV_OF_FIELD.get(biggest, biggest), len(line),
                                                MAX_REQUEST))


def call_agent(path, request, timeout):
    """Send one request line, return the decoded response object. Raises ShimError 11/999
    (or 4/7 from :func:`encode_request`)."""
    line = encode_request(request)
    unreachable = "podroute agent at %s is not reachable" % path
    s = _socket.socket(_AF_UNIX, _SOCK_STREAM)
    try:
        s.settimeout(min(CONNECT_TIMEOUT, timeout))
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError, TimeoutError) as e:
            raise ShimError(E_TRY_AGAIN, unreachable, "%s: %s" % (type(e).__name__, e))
        except OSError as e:
            raise ShimError(E_TRY_AGAIN, unreachable, str(e))
        s.settimeout(timeout)
        buf = b""
        try:
            s.sendall(line)
            while b"\n" not in buf and len(buf) <= MAX_RESPONSE:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except TimeoutError:
            raise ShimError(E_TRY_AGAIN, "podroute agent at %s did not answer within %ss"
                            % (path, timeout))
        except OSError as e:
            raise ShimError(E_TRY_AGAIN, unreachable, str(e))
    finally:
        s.close()
    if not buf:
        raise ShimError(E_TRY_AGAIN, "podroute agent at %s closed the connection without "
                        "an answer" % path)
    try:
        resp = loads(buf.split(b"\n", 1)[0])
    except ValueError as e:
        raise ShimError(E_INTERNAL, "podroute agent at %s sent an invalid response" % path,
                        str(e))
    if not isinstance(resp, dict) or not isinstance(resp.get("ok"), bool):
        raise ShimError(E_INTERNAL, "podroute agent at %s sent an invalid response" % path)
    return resp


def dispatch(env, stdin_data):
    """The one place that decides output and exit status: returns ``(stdout_text, exit)``."""
    version = SPEC_VERSION
    try:
        command = env.get("CNI_COMMAND", "")
        if not command:
            raise ShimError(E_INVALID_ENV, "required environment variable CNI_COMMAND is missing")
        if command == "VERSION":
            return dumps({"cniVersion": SPEC_VERSION,
                               "supportedVersions": SUPPORTED_VERSIONS}), 0
        if command not in _ATTACHMENT_COMMANDS + ("STATUS", "GC"):
            raise ShimError(E_INVALID_ENV, "unknown CNI_COMMAND: %s" % command)
        conf = parse_config(stdin_data)
        version = conf["cniVersion"]
        request = build_request(env, conf)
        try:
            resp = call_agent(conf.get("agentSocket", DEFAULT_SOCKET), request,
                              float(conf.get("agentTimeout", DEFAULT_TIMEOUT)))
        except ShimError as e:
            if command == "STATUS" and e.code == E_TRY_AGAIN:  # no agent: cannot ADD
                raise ShimError(E_PLUGIN_NOT_AVAILABLE, e.msg, e.details)
            raise
        if resp["ok"]:
            result = resp.get("result")
            return ("" if result is None else dumps(result)), 0
        code = resp.get("code")
        if isinstance(code, bool) or not isinstance(code, int):
            code = E_INTERNAL
        raise ShimError(code, str(resp.get("msg") or "podroute agent reported an error"),
                        str(resp.get("details") or ""))
    except ShimError as e:
        err = {"cniVersion": version, "code": e.code, "msg": e.msg}
        if e.details:
            err["details"] = e.details
        return dumps(err), 1
    except Exception as e:  # never a traceback instead of the error JSON
        return dumps({"cniVersion": version, "code": E_INTERNAL,
                           "msg": "podroute shim failed", "details": repr(e)}), 1


def environ():
    """The process environment as ``os.environ`` would give it (str, surrogateescape)."""
    return {k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
            for k, v in posix.environ.items()}


def read_stdin():
    """At most ``MAX_CONFIG + 1`` bytes of stdin (enough to tell that it is too long; the
    rest is never read, so an endless stdin cannot hang the shim), or the OSError that
    reading raised (fd 0 closed, EIO...), for :func:`parse_config` to report as code 5."""
    try:
        return sys.stdin.buffer.read(MAX_CONFIG + 1)
    except OSError as e:
        return e
    except (AttributeError, ValueError) as e:  # sys.stdin is None (fd 0 closed) or detached
        return OSError("stdin is not open (%s)" % type(e).__name__)


def main():
    out, status = dispatch(environ(), read_stdin())
    try:
        if out:
            sys.stdout.write(out + "\n")
        sys.stdout.flush()
    except (AttributeError, OSError, ValueError):
        pass  # stdout closed: nobody reads the answer; the exit status still carries it
    return status


if __name__ == "__main__":
    sys.exit(main())

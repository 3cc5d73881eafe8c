"""The README's "Running it on a node" steps, run verbatim on a lab node, up to a wired pod.

The shell block is read from README.md at test time, so the README cannot drift from what
is tested. Node n2 of a 2-node lab (BIRD route reflector 198.18.0.1) has its lab agent
stopped and becomes a node installed by those steps, from ``pip install .`` of a copy of
this checkout to a pod wired through the conflist the installed unit wrote.

How the steps' paths are kept in the test's directory without changing their text: the
block runs in one shell inside the node's network namespace and in a mount namespace of
its own (``ip netns exec`` makes one), where /etc, /opt, /usr/local, /var/lib and /run are
overlay mounts whose upper (written) layer is in the test's directory: everything the steps
write (/opt/podroute/venv, /etc/podroute, /etc/systemd/system, /etc/cni/net.d,
/opt/cni/bin, /var/lib/podroute, /run/podroute) lands there and the host's files are never
touched. /run/netns is carried into the new /run so the agent sees pod namespaces made
later. Other differences from a fresh root shell, all through documented settings:
PATH is Debian's default plus a ``systemctl`` stand-in (tests/e2e/systemctl_standin.py;
this machine has no systemd as PID 1), and pip installs offline from the wheelhouse
scripts/setup fills (PIP_NO_INDEX, PIP_FIND_LINKS). The "edit:" the README asks for after
installing node.yaml is made by the test on exactly the keys the README names.
"""
from __future__ import annotations

import ipaddress
import json
import re
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from labutil import REPO, fib, lab, wait_for

from podroute.lab import control, netns

pytestmark = pytest.mark.e2e
WHEELHOUSE = REPO / ".venv" / "wheelhouse"
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OVERLAID = ("etc", "opt", "usr/local", "var/lib")
NODE = "n2"


# Sets each "key" or "section.key" of node.yaml (argv[1]) to its value in the JSON file argv[2].
EDITOR = """import json, sys, yaml
path = sys.argv[1]
doc = yaml.safe_load(open(path))
for key, value in json.load(open(sys.argv[2])).items():
    *parents, leaf = key.split(".")
    node = doc
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
open(path, "w").write(yaml.safe_dump(doc, sort_keys=False))
"""


def readme_steps() -> list[str]:
    """The lines of the first ``sh`` block under "## Running it on a node" in README.md."""
    text = (REPO / "README.md").read_text()
    m = re.search(r"^## Running it on a node\n(.*?)^```sh\n(.*?)^```", text, re.S | re.M)
    assert m, "README.md has no sh block under '## Running it on a node'"
    return [line for line in m.group(2).splitlines() if line.strip()]


def edit_keys(steps: list[str]) -> list[str]:
    """The node.yaml keys the README's ``# edit:`` comment asks the user to change."""
    edits = [line.split("# edit:", 1)[1] for line in steps if "# edit:" in line]
    assert len(edits) == 1, "the README should ask for exactly one node.yaml edit"
    return [k.strip() for k in edits[0].split(",")]


def _copy_checkout(dest: Path) -> None:
    """The checkout as a user has it (tracked and new files, nothing ignored): pip builds in it."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        if (REPO / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dest / f)


def _mounts_script(t: Path) -> str:
    lines = ["set -e"]
    for d in OVERLAID + ("run",):
        lines.append(f"mkdir -p {t}/upper/{d} {t}/work/{d}")
    for d in OVERLAID:
        lines.append(f"mount -t overlay overlay -o lowerdir=/{d},upperdir={t}/upper/{d},workdir={t}/work/{d} /{d}")
    lines += [f"mkdir -p {t}/keep-netns", f"mount --rbind /run/netns {t}/keep-netns",
              f"mount -t overlay overlay -o lowerdir=/run,upperdir={t}/upper/run,workdir={t}/work/run /run",
              f"mount --move {t}/keep-netns /run/netns"]
    return "\n".join(lines) + "\n"


def _in_node(pid: int, ns: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in the installed node's mount namespace (that of its agent, ``pid``) and netns."""
    return subprocess.run(["nsenter", f"--mount=/proc/{pid}/ns/mnt", f"--net=/run/netns/{ns}", *argv],
                          capture_output=True, text=True, timeout=timeout)


def test_readme_node_steps_verbatim(tmp_path):
    steps = readme_steps()
    keys = edit_keys(steps)
    assert WHEELHOUSE.is_dir(), "no wheelhouse: run scripts/setup"
    with lab(tmp_path, "--nodes", "2", "--pods", "1") as (name, state, report):
        the_lab = control.load(name, state)
        node = control.node(the_lab, NODE)
        peer = next(n for n in report["nodes"] if n["name"] != NODE)
        remote_pod = next(p for p in report["pods"] if p["node"] == peer["name"])
        control.kill_agent(the_lab, NODE, signal.SIGTERM)  # n2 is now a bare node

        t = tmp_path / "node"
        _copy_checkout(t / "src")
        (t / "bin").mkdir()
        standin = t / "bin" / "systemctl"
        standin.write_text(f"#!/bin/sh\nexec /usr/bin/python3 {REPO / 'tests/e2e/systemctl_standin.py'} \"$@\"\n")
        standin.chmod(0o755)
        edit = {"nodeName": f"{name}-{NODE}", "nodeIP": node.ip, "podCIDRs": [node.block],
                "peers": [{"address": "198.18.0.1", "asn": 64512, "holdTime": 30}], "listen.address": node.ip}
        assert set(keys) <= set(edit), f"the README asks to edit {keys}; the test knows {sorted(edit)}"
        (t / "edit.json").write_text(json.dumps({k: edit[k] for k in keys}))
        (t / "edit.py").write_text(EDITOR)
        editor = f"{sys.executable} {t / 'edit.py'} /etc/podroute/node.yaml {t / 'edit.json'}"
        script = [f"cd {t / 'src'}"]
        for line in steps:
            script.append(line)
            if "# edit:" in line:
                script.append(editor + "   # the edit the README asks for")
        (t / "mounts.sh").write_text(_mounts_script(t))
        (t / "steps.sh").write_text("set -ex\n" + "\n".join(script) + "\n")
        env = {"PATH": f"{t / 'bin'}:{DEBIAN_PATH}", "HOME": str(t / "home"), "LANG": "C.UTF-8",
               "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(WHEELHOUSE), "PIP_DISABLE_PIP_VERSION_CHECK": "1",
               "STANDIN_LOG_DIR": str(t)}
        pid = None
        try:
            run = subprocess.run(["ip", "netns", "exec", node.ns, "sh", "-c", f". {t}/mounts.sh && sh {t}/steps.sh"],
                                 capture_output=True, text=True, env=env, timeout=600)
            if (t / "podroute.service.pid").exists():
                pid = int((t / "podroute.service.pid").read_text())
            assert run.returncode == 0, f"README steps failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
            assert pid is not None and netns._alive(pid)
            assert f"podroute agent is running on {name}-{NODE}" in run.stdout  # `podroute status`
            # the host's own directories got nothing: it all went to the overlays' upper layers
            for written in ("opt/podroute/venv/bin/podroute", "etc/podroute/node.yaml", "opt/cni/bin/podroute",
                            "etc/cni/net.d/10-podroute.conflist", "etc/systemd/system/podroute.service"):
                assert (t / "upper" / written).exists() and not (Path("/") / written).exists(), written

            def established() -> bool:
                p = _in_node(pid, node.ns, "/opt/podroute/venv/bin/podroute", "status", "--json")
                return p.returncode == 0 and all(s["state"] == "established" for s in json.loads(p.stdout)["bgp"]["peers"])
            wait_for(f"{NODE}'s session to the route reflector", established, 60)
            peer_ns = f"prl-{name}-{peer['name']}"
            wait_for(f"{node.block} in {peer['name']}'s FIB", lambda: node.block in fib(peer_ns), 60)

            # a pod, wired as a runtime does through the first conflist in /etc/cni/net.d
            pod_ns = f"prl-{name}-{NODE}readme"
            netns.add(pod_ns)
            cni = [sys.executable, "-m", "podroute.lab.libcni", "--conf-dir", "/etc/cni/net.d",
                   "--cni-path", "/opt/cni/bin:/usr/lib/cni", "--netns", f"/run/netns/{pod_ns}",
                   "--container-id", "readme" + secrets.token_hex(6), "--cache-dir", str(t / "cni-cache"),
                   "--arg", "K8S_POD_NAMESPACE=default", "--arg", "K8S_POD_NAME=readme"]
            add = _in_node(pid, node.ns, *cni[:3], "ADD", *cni[3:])
            assert add.returncode == 0, add.stderr
            ip = json.loads(add.stdout)["ips"][0]["address"].split("/")[0]
            assert ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(node.block)
            ping = subprocess.run(["ip", "netns", "exec", pod_ns, "ping", "-c", "2", "-W", "2", remote_pod["ip"]],
                                  capture_output=True, text=True, timeout=30)
            assert ping.returncode == 0, f"pod {ip} on {NODE} cannot reach {remote_pod['ip']}: {ping.stdout}"
            assert _in_node(pid, node.ns, *cni[:3], "CHECK", *cni[3:]).returncode == 0
            assert _in_node(pid, node.ns, *cni[:3], "DEL", *cni[3:]).returncode == 0
            st = json.loads(_in_node(pid, node.ns, "/opt/podroute/venv/bin/podroute", "status", "--json").stdout)
            assert st["workloads"] == 0
        finally:
            if pid is not None:
                netns.kill_pids([pid], grace=15)

"""End to end with a real container runtime: podman 4.3 (Debian) with its CNI backend and runc,
on two lab nodes, through the conflist and plugin ``podroute cni install`` put on each node.

Podman runs in the node's network namespace with ``nsenter --net`` only (``ip netns exec``
would give it a private mount namespace, and the agent could not open the netns bind mount
podman makes under /run/netns). Its configuration (CONTAINERS_CONF: network_backend "cni",
cni_plugin_dirs = the node's bin dir + /usr/lib/cni, network_config_dir = the node's conf
dir), its registries file (none) and its storage (--root/--runroot, vfs) live in the test's
own directory; the host's /etc/containers is never read. The image is a busybox-static root
brought in with ``podman import``. What podman 4.3 itself still writes to fixed host paths:
libcni's result cache (/var/lib/cni/results) and runc's state (/run/runc), whose entries go
with ``podman rm`` (the test checks the cache entry does), and the image blob-info cache
/var/lib/containers/cache/blob-info-cache-v1.boltdb, which ``podman import`` creates.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest
from labutil import lab, status, wait_for

pytestmark = pytest.mark.e2e
BUSYBOX = "/bin/busybox"
IMAGE = "localhost/podroute-busybox:test"
APPLETS = ("sh", "sleep", "httpd", "nc", "ping", "cat", "printf")
RUN_FLAGS = ("--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
             "--network", "podroute")
LIBCNI_CACHE = Path("/var/lib/cni/results")
HOST_PORT = 8080


class Node:
    """One lab node as podman sees it: its netns, its CNI dirs, podman's own dirs."""

    def __init__(self, work: Path, lab_dir: Path, name: str, ns: str, ip: str, block: str) -> None:
        self.name, self.ns, self.ip, self.block = name, ns, ip, block
        self.node_dir = lab_dir / name
        self.dir = work / name
        self.dir.mkdir(parents=True)
        (self.dir / "containers.conf").write_text(
            "[network]\n"
            'network_backend = "cni"\n'
            f'cni_plugin_dirs = ["{self.node_dir / "cni" / "bin"}", "/usr/lib/cni"]\n'
            f'network_config_dir = "{self.node_dir / "cni" / "net.d"}"\n'
            'default_network = "podroute"\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{self.dir / "events.log"}"\n'
            f'tmp_dir = "{self.dir / "tmp"}"\n')
        (self.dir / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\nrunroot = "{self.dir / "runroot"}"\ngraphroot = "{self.dir / "root"}"\n')
        (self.dir / "registries.conf").write_text("unqualified-search-registries = []\n")

    def podman(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CONTAINERS_CONF": str(self.dir / "containers.conf"),
               "CONTAINERS_STORAGE_CONF": str(self.dir / "storage.conf"),
               "CONTAINERS_REGISTRIES_CONF": str(self.dir / "registries.conf")}
        argv = ["nsenter", f"--net=/run/netns/{self.ns}", "podman", "--root", str(self.dir / "root"),
                "--runroot", str(self.dir / "runroot"), "--storage-driver", "vfs", *args]
        p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
        if check:
            assert p.returncode == 0, f"podman {' '.join(args)} on {self.name}: {p.stderr.strip()}"
        return p

    def run(self, name: str, *cmd: str, ports: tuple[str, ...] = ()) -> str:
        """Start container ``name`` running ``cmd``; returns its IP on the podroute network."""
        pub = [a for p in ports for a in ("-p", p)]
        self.podman("run", "-d", "--name", name, *RUN_FLAGS, *pub, IMAGE, *cmd)
        return self.inspect(name)["NetworkSettings"]["Networks"]["podroute"]["IPAddress"]

    def inspect(self, name: str) -> dict[str, Any]:
        return json.loads(self.podman("inspect", name).stdout)[0]

    def exec(self, name: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self.podman("exec", name, *cmd, check=False, timeout=timeout)

    def nat_rules(self) -> str:
        return subprocess.run(["ip", "netns", "exec", self.ns, "iptables-save", "-t", "nat"],
                              capture_output=True, text=True, check=True).stdout

    def routes(self) -> str:
        return subprocess.run(["ip", "-n", self.ns, "route", "show"], capture_output=True, text=True).stdout

    def links(self) -> list[str]:
        out = subprocess.run(["ip", "-n", self.ns, "-j", "link", "show"], capture_output=True, text=True).stdout
        return [link["ifname"] for link in json.loads(out or "[]")]


def _rootfs_tar(work: Path) -> Path:
    """A busybox-static root (the applets the tests use, /www/index.html) as a tarball."""
    tar = work / "rootfs.tar"
    with tarfile.open(tar, "w") as tf:
        for d in ("bin", "tmp", "www"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tf.addfile(info)
        tf.add(BUSYBOX, "bin/busybox")
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tf.addfile(info)
        page = work / "index.html"
        page.write_text("hello from podroute\n")
        tf.add(page, "www/index.html")
    return tar


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A 2-node lab (one lab pod each) and podman set up on both nodes."""
    for tool in ("podman", "runc", "nsenter", "iptables-save"):
        assert shutil.which(tool), f"{tool} not installed: run scripts/setup"
    assert Path(BUSYBOX).exists(), "busybox-static not installed: run scripts/setup"
    tmp = tmp_path_factory.mktemp("podman")
    with lab(tmp, "--nodes", "2", "--pods", "1") as (name, state, report):
        # podman refuses a runroot longer than 50 characters: a short directory of our own
        work = Path(tempfile.mkdtemp(prefix="prp-", dir="/tmp"))
        nodes: dict[str, Node] = {}
        try:
            tar = _rootfs_tar(work)
            for n in report["nodes"]:
                nodes[n["name"]] = Node(work, state / name, n["name"], f"prl-{name}-{n['name']}", n["ip"], n["block"])
                nodes[n["name"]].podman("import", str(tar), IMAGE)
            yield nodes, state, name
        finally:
            for n in nodes.values():
                n.podman("rm", "-af", "-t", "0", check=False)
            shutil.rmtree(work, ignore_errors=True)


def _http_get(ip: str, port: int) -> str:
    """A shell line fetching /index.html from ``ip:port`` with busybox nc (its wget crashes here)."""
    return f"printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 {ip} {port}"


def _fetch_from_node(ns: str, ip: str, port: int) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", _http_get(ip, port)], capture_output=True,
                          text=True, timeout=20).stdout


def _ipam(state_dir: Path) -> dict[str, str]:
    """``{ip: handle}`` of every allocation in the agent's IPAM block files."""
    out: dict[str, str] = {}
    for path in state_dir.rglob("block-*.json"):
        out.update({ip: a["handle"] for ip, a in json.loads(path.read_text())["allocations"].items()})
    return out


def test_containers_on_two_nodes_ping_each_other(cluster):
    nodes, _, _ = cluster
    n1, n2 = nodes["n1"], nodes["n2"]
    ip1 = n1.run("ping1", "sleep", "600")
    ip2 = n2.run("ping2", "sleep", "600")
    assert ipaddress.IPv4Address(ip1) in ipaddress.IPv4Network(n1.block)
    assert ipaddress.IPv4Address(ip2) in ipaddress.IPv4Network(n2.block)
    for node, name, dst in ((n1, "ping1", ip2), (n2, "ping2", ip1)):
        p = node.exec(name, "ping", "-c", "2", "-W", "2", dst)
        assert p.returncode == 0, f"{name} on {node.name} cannot ping {dst}: {p.stdout} {p.stderr}"
    n1.podman("rm", "-f", "-t", "0", "ping1")
    n2.podman("rm", "-f", "-t", "0", "ping2")


def test_port_mapping_from_other_node_and_hairpin(cluster):
    nodes, _, _ = cluster
    n1, n2 = nodes["n1"], nodes["n2"]
    n1.run("web", "httpd", "-f", "-p", "80", "-h", "/www", ports=(f"{HOST_PORT}:80",))
    # from another node: n2's own namespace to n1's node IP and host port (DNAT by portmap)
    wait_for("the web container's host port from n2",
             lambda: "hello from podroute" in _fetch_from_node(n2.ns, n1.ip, HOST_PORT), 30)
    # hairpin: a container on n1 reaches the web container through n1's host port
    n1.run("client", "sleep", "600")
    p = n1.exec("client", "sh", "-c", _http_get(n1.ip, HOST_PORT))
    assert p.returncode == 0 and "hello from podroute" in p.stdout, (p.stdout, p.stderr)
    n1.podman("rm", "-f", "-t", "0", "web", "client")


def test_rm_leaves_no_ip_veth_route_or_chain(cluster):
    nodes, state, name = cluster
    n1 = nodes["n1"]
    lab_pods = status(state, name, "n1")["workloads"]
    ip = n1.run("gone", "httpd", "-f", "-p", "80", "-h", "/www", ports=("8081:80",))
    cid = n1.inspect("gone")["Id"]
    host_if = next(line.split()[2] for line in n1.routes().splitlines() if line.startswith(f"{ip} dev "))
    nat = n1.nat_rules()
    mine = {line.split()[1] for line in nat.splitlines() if line.startswith("-A CNI-DN-") and f"{ip}:80" in line}
    assert mine and cid in nat, f"portmap set up no DNAT chain for the container:\n{nat}"
    assert status(state, name, "n1")["workloads"] == lab_pods + 1
    assert _ipam(state / name / "n1" / "state").get(ip, "").endswith(f".{cid}.eth0")
    assert (LIBCNI_CACHE / f"podroute-{cid}-eth0").exists()
    assert host_if in n1.links()

    n1.podman("rm", "-f", "-t", "0", "gone")
    assert status(state, name, "n1")["workloads"] == lab_pods  # the IP is back in the IPAM pool
    ipam = _ipam(state / name / "n1" / "state")
    assert ip not in ipam and not any(cid in h for h in ipam.values())
    assert not any(line.startswith(f"{ip} ") for line in n1.routes().splitlines())
    wait_for(f"host veth {host_if} to be reaped", lambda: host_if not in n1.links(), 10)
    nat = n1.nat_rules()
    assert cid not in nat and not any(f":{c} " in nat for c in mine), nat
    assert not (LIBCNI_CACHE / f"podroute-{cid}-eth0").exists()

"""The Kubernetes control plane of a lab on the kubernetes datastore (``podroute lab up
--datastore kubernetes``).

The lab's etcd (:mod:`podroute.lab.etcd`, namespace ``prl-<name>-etcd`` at 198.18.0.3) is
joined in the same namespace by a real kube-apiserver (the binary ``scripts/setup`` builds
from Go modules, ``tests/kube-apiserver/``; ``PODROUTE_KUBE_APISERVER`` overrides where it is)
serving ``https://198.18.0.3:6443`` with RBAC on. Nothing listens in the root namespace.

:func:`start` makes the service-account key pair and a token file with two users, ``admin``
(``system:masters``) and ``podroute-agent`` (group ``podroute:nodes``, which
``configs/rbac.yaml`` binds to the agent's ClusterRole: the agents run with exactly the shipped
verbs), waits for ``/readyz``, writes a kubeconfig per user (``<root>/kube/<user>.kubeconfig``,
the API server's self-signed CA included), applies ``configs/crds/`` and ``configs/rbac.yaml``
with the machine's ``kubectl`` and waits until the CRDs are Established. :func:`seed` writes
the pool, BGP configuration and peers (:func:`podroute.lab.etcd.resources`) and registers a Node
per lab node as kubelet would (the joining last node's when it joins: a mesh peers with every
registered Node) (:func:`kubelet_node`: InternalIP and the well-known labels,
``topology.kubernetes.io/zone`` = ``zone-<subnet>``), through
:class:`podroute.datastore.kubestore.KubeDatastore` in a child process inside the namespace.
The agents then claim their blocks as IPAMBlock objects themselves.

lab.json records ``{"pid", "url", "dir", "ns"}`` under ``kube``; ``lab down``
(podroute.lab.runner) stops it by PID before etcd. ``kubectl`` from the root namespace cannot reach the API server: :func:`usage`
prints the ``ip netns exec`` line that can.
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from podroute.datastore.model import Node as ModelNode
from podroute.datastore.model import Resource, labels
from podroute.lab import adminjob, etcd, netns
from podroute.lab.model import ETCD_IP, Lab, Node
from podroute.lab.netns import LabError

API_PORT = 6443                 # kube-apiserver's customary secure port
START_TIMEOUT_S = 120.0         # a cold start on a busy 2-core machine
APPLY_TIMEOUT_S = 60.0
SERVICE_RANGE = "198.18.128.0/24"
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
USERS = {"admin": ("admin", "system:masters"), "agent": ("podroute-agent", "podroute:nodes")}
AUDIENCE = "https://kubernetes.default.svc.cluster.local"


def binary() -> Path:
    """The kube-apiserver ``scripts/setup`` built (linked into the venv's bin directory)."""
    env = os.environ.get("PODROUTE_KUBE_APISERVER")
    if env:
        return Path(env)
    return Path(sys.prefix) / "bin" / "kube-apiserver"


def kubectl_bin() -> str:
    return shutil.which("kubectl") or "/usr/bin/kubectl"


def url() -> str:
    return f"https://{ETCD_IP}:{API_PORT}"


def kube_dir(lab: Lab) -> Path:
    return lab.path / "kube"


def kubeconfig(lab: Lab, user: str = "admin") -> Path:
    """The kubeconfig of ``user`` (``admin`` or ``agent``)."""
    return kube_dir(lab) / f"{user}.kubeconfig"


def _ns(lab: Lab) -> str:
    return lab.etcd.get("ns") or lab.prefix + "etcd"


def _prepare(lab: Lab) -> dict[str, str]:
    d = kube_dir(lab)
    d.mkdir(parents=True, exist_ok=True)
    key, pub = d / "sa.key", d / "sa.pub"
    for argv in (["openssl", "genrsa", "-out", str(key), "2048"], ["openssl", "rsa", "-in", str(key), "-pubout",
                                                                   "-out", str(pub)]):
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise LabError(f"{' '.join(argv[:2])} failed: {p.stderr.strip()[-300:]}")
    tokens = {u: os.urandom(16).hex() for u in USERS}
    (d / "tokens.csv").write_text("".join(f'{tokens[u]},{name},{name},"{group}"\n'
                                          for u, (name, group) in USERS.items()))
    (d / "tokens.csv").chmod(0o600)
    return tokens


def argv(lab: Lab) -> list[str]:
    d = kube_dir(lab)
    return [str(binary()), f"--etcd-servers={lab.etcd_endpoint}", f"--bind-address={ETCD_IP}",
            f"--advertise-address={ETCD_IP}", f"--secure-port={API_PORT}", f"--cert-dir={d / 'certs'}",
            f"--service-account-issuer={AUDIENCE}", f"--service-account-key-file={d / 'sa.pub'}",
            f"--service-account-signing-key-file={d / 'sa.key'}", f"--api-audiences={AUDIENCE}",
            f"--service-cluster-ip-range={SERVICE_RANGE}", "--authorization-mode=RBAC",
            f"--token-auth-file={d / 'tokens.csv'}", "--shutdown-delay-duration=0s", "-v=1"]


def _write_kubeconfigs(lab: Lab, tokens: dict[str, str]) -> None:
    ca = kube_dir(lab) / "certs" / "apiserver.crt"    # self-signed: the certificate is its own CA
    for user, token in tokens.items():
        doc = {"apiVersion": "v1", "kind": "Config", "current-context": lab.name,
               "clusters": [{"name": lab.name, "cluster": {"server": url(), "certificate-authority": str(ca)}}],
               "users": [{"name": USERS[user][0], "user": {"token": token}}],
               "contexts": [{"name": lab.name, "context": {"cluster": lab.name, "user": USERS[user][0]}}]}
        path = kubeconfig(lab, user)
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)


def kubectl(lab: Lab, *args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """The machine's ``kubectl`` as the lab's admin, inside the control-plane namespace."""
    return netns.run([kubectl_bin(), "--kubeconfig", str(kubeconfig(lab)), "--request-timeout=10s", *args],
                     ns=_ns(lab), check=check, timeout=timeout)


def running(lab: Lab) -> bool:
    pid = lab.kube.get("pid")
    return bool(pid) and netns._alive(pid)


def start(lab: Lab) -> int:
    """Start kube-apiserver next to the lab's (running) etcd, wait for ``/readyz``, write the
    kubeconfigs and apply the CRDs and the agent's role. Returns its PID; raises LabError with
    the end of its log when it exits or is not ready within START_TIMEOUT_S."""
    if not binary().exists():
        raise LabError(f"no kube-apiserver at {binary()} (scripts/setup builds it)")
    tokens = _prepare(lab)
    d = kube_dir(lab)
    with open(d / "kube-apiserver.log", "ab") as log:
        proc = subprocess.Popen(["ip", "netns", "exec", _ns(lab), *argv(lab)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    lab.kube.update({"pid": proc.pid, "url": url(), "dir": str(d), "ns": _ns(lab)})
    lab.save()
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if (d / "certs" / "apiserver.crt").exists():
            _write_kubeconfigs(lab, tokens)
            if kubectl(lab, "get", "--raw", "/readyz", check=False).stdout.strip() == "ok":
                break
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (d / "kube-apiserver.log").read_text(errors="replace")[-1500:]
            raise LabError(f"kube-apiserver in {_ns(lab)} not ready (exit {proc.poll()}); its log ends:\n{tail}")
        time.sleep(0.3)
    manifests = [*sorted((CONFIGS / "crds").glob("*.yaml")), CONFIGS / "rbac.yaml"]
    kubectl(lab, "apply", *(a for m in manifests for a in ("-f", str(m))), timeout=APPLY_TIMEOUT_S)
    kubectl(lab, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s", timeout=APPLY_TIMEOUT_S)
    return proc.pid


def kubelet_node(lab: Lab, node: Node) -> ModelNode:
    """``node``'s Node object as kubelet registers it: InternalIP and the well-known labels."""
    name = lab.node_name(node)
    return ModelNode(name, ipaddress.IPv4Address(node.ip),
                     labels=labels({"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                    "topology.kubernetes.io/zone": f"zone-{node.subnet}"}))


def apply(lab: Lab, puts: Sequence[Resource] = (), deletes: Sequence[str] = ()) -> dict[str, Any]:
    """Write ``puts`` and delete ``deletes`` (datastore keys) as the lab's admin through
    KubeDatastore, from a child process inside the control-plane namespace. Returns ``{"put":
    n, "deleted": [keys that existed]}``; raises LabError with the child's message."""
    return adminjob.run(_ns(lab), {"type": "kubernetes", "kubeconfig": str(kubeconfig(lab))}, puts, deletes,
                        what=f"the lab's kube-apiserver at {url()}", timeout_s=APPLY_TIMEOUT_S)


def seed(lab: Lab, nodes: Sequence[Node]) -> None:
    """The pool, BGP configuration and peers, and a Node for each of ``nodes`` (as kubelet
    would; a node that joins later is registered when it does, :func:`register`)."""
    apply(lab, puts=[*etcd.resources(lab), *(kubelet_node(lab, n) for n in nodes)])


def register(lab: Lab, node: Node) -> None:
    """``node``'s Node object, as its kubelet creates it when the node boots."""
    apply(lab, puts=[kubelet_node(lab, node)])


def usage(lab: Lab) -> list[str]:
    """How to reach the lab's API server with kubectl (it listens only inside the lab)."""
    return [f"kube-apiserver: {url()} in {_ns(lab)} (pid {lab.kube.get('pid')}); admin kubeconfig {kubeconfig(lab)}",
            f"  ip netns exec {_ns(lab)} kubectl --kubeconfig {kubeconfig(lab)} get nodes,ippools,bgppeers,ipamblocks"]

"""A real kube-apiserver on loopback for tests: its own etcd (tests/etcdutil.py), generated
service-account keys, a token file with an admin and an agent user, RBAC on; bounded start-up
(waits for ``/readyz``), kubeconfigs written for both users, podroute's CRDs and ClusterRole
applied; stop and restart by PID for outage tests.

The binary is the one ``scripts/setup`` builds from ``tests/kube-apiserver`` (linked as
``.venv/bin/kube-apiserver``; ``PODROUTE_KUBE_APISERVER`` overrides). Nothing here mocks it.

Users (``--token-auth-file``): ``admin`` in ``system:masters``; ``podroute-agent`` in
``podroute:nodes``, the group ``configs/rbac.yaml`` binds to the agent's ClusterRole, so a
client with :meth:`KubeAPIServer.kubeconfig` ``("agent")`` has exactly the shipped verbs.
"""
from __future__ import annotations

import os
import secrets
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from etcdutil import EtcdServer, free_port, spawn, terminate

REPO = Path(__file__).resolve().parent.parent
CRDS = REPO / "configs" / "crds"
RBAC = REPO / "configs" / "rbac.yaml"
START_TIMEOUT_S = 90.0       # a cold start on a busy 2-core machine: ~4 s idle, much more under load
STOP_TIMEOUT_S = 5.0         # SIGTERM, then SIGKILL (its graceful shutdown can take >10 s)
ESTABLISHED_TIMEOUT_S = 30.0
SERVICE_RANGE = "198.18.128.0/24"
AGENT_USER, AGENT_GROUP = "podroute-agent", "podroute:nodes"


def binary() -> Path:
    return Path(os.environ.get("PODROUTE_KUBE_APISERVER") or Path(sys.prefix) / "bin" / "kube-apiserver")


class KubeAPIServer:
    """etcd + kube-apiserver under ``workdir``. ``start()`` blocks until ``/readyz`` answers ok
    (at most START_TIMEOUT_S) and the manifests are applied; ``stop()`` stops both by PID;
    ``stop_apiserver()``/``start_apiserver()`` cut the API server alone (same port, same data).
    ``extra_args``: more kube-apiserver flags, appended.
    ``host``: its address; to serve a test's namespaces, call :meth:`start` from a thread inside
    one of them (``nlcore.netns.call_in_netns``): etcd, the API server and every check then run
    there, and only that namespace's addresses are used."""

    def __init__(self, workdir: Path, host: str = "127.0.0.1", extra_args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.host = host      # bind and advertise address (in its serving certificate)
        self.extra_args = extra_args   # more kube-apiserver flags (bench/scale.py: its audit log)
        self.etcd = EtcdServer(workdir / "etcd", name="podroute-kube")
        self.port = free_port()
        self.tokens = {"admin": secrets.token_hex(16), "agent": secrets.token_hex(16)}
        self.log_path = workdir / "kube-apiserver.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def ca_file(self) -> Path:
        # kube-apiserver's self-signed serving certificate, its CA after it in the same file
        return self.workdir / "certs" / "apiserver.crt"

    def kubeconfig(self, user: str = "agent") -> Path:
        return self.workdir / f"kubeconfig-{user}.yaml"

    # --- set-up ----------------------------------------------------------------------------------
    def _prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        key, pub = self.workdir / "sa.key", self.workdir / "sa.pub"
        if not key.exists():
            subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True, timeout=30)
            subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)], check=True,
                           capture_output=True, timeout=30)
        (self.workdir / "tokens.csv").write_text(
            f'{self.tokens["admin"]},admin,admin,"system:masters"\n'
            f'{self.tokens["agent"]},{AGENT_USER},{AGENT_USER},"{AGENT_GROUP}"\n')

    def argv(self) -> list[str]:
        w = self.workdir
        return [str(binary()), f"--etcd-servers={self.etcd.endpoint}", f"--bind-address={self.host}",
                f"--advertise-address={self.host}", f"--secure-port={self.port}", f"--cert-dir={w / 'certs'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={w / 'sa.pub'}", f"--service-account-signing-key-file={w / 'sa.key'}",
                "--api-audiences=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_RANGE}", "--authorization-mode=RBAC",
                f"--token-auth-file={w / 'tokens.csv'}", "--shutdown-delay-duration=0s", "-v=1",
                *self.extra_args]

    def start(self) -> None:
        self._prepare()
        self.etcd.start()
        try:
            self.start_apiserver()
            for user in self.tokens:
                self._write_kubeconfig(user)
            self.apply(*sorted(CRDS.glob("*.yaml")), RBAC)
        except BaseException:
            self.stop()
            raise

    def start_apiserver(self) -> None:
        if self.running():
            raise RuntimeError(f"kube-apiserver already running as pid {self.proc.pid}")
        self.proc = spawn(self.argv(), self.log_path, name="kube-apiserver", ready=self.ready, log_tail=self.log_tail,
                          timeout_s=START_TIMEOUT_S, step_s=0.2)

    def _ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def ready(self) -> bool:
        if not self.ca_file.exists():
            return False
        req = urllib.request.Request(f"{self.url}/readyz", headers={"Authorization": f"Bearer {self.tokens['admin']}"})
        try:
            with urllib.request.urlopen(req, timeout=2.0, context=self._ssl()) as r:
                return r.read().strip() == b"ok"
        except (OSError, urllib.error.URLError, ssl.SSLError):
            return False

    def _write_kubeconfig(self, user: str) -> None:
        doc = {"apiVersion": "v1", "kind": "Config", "current-context": "podroute",
               "clusters": [{"name": "podroute", "cluster": {"server": self.url,
                                                             "certificate-authority": str(self.ca_file)}}],
               "users": [{"name": user, "user": {"token": self.tokens[user]}}],
               "contexts": [{"name": "podroute", "context": {"cluster": "podroute", "user": user}}]}
        path = self.kubeconfig(user)
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)

    def apply(self, *manifests: Path) -> None:
        """Create every object in ``manifests`` as admin (an existing one is left as it is) and
        wait until the CRDs among them are Established (bounded)."""
        from kubernetes import client, config, utils
        from kubernetes.utils import FailToCreateError

        api = config.new_client_from_config(config_file=str(self.kubeconfig("admin")))
        try:
            crds = []
            for path in manifests:
                docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
                try:
                    utils.create_from_yaml(api, yaml_objects=docs)
                except FailToCreateError as e:
                    if any(getattr(x, "status", None) != 409 for x in e.api_exceptions):
                        raise
                crds += [d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"]
            ext = client.ApiextensionsV1Api(api)
            deadline = time.monotonic() + ESTABLISHED_TIMEOUT_S
            for name in crds:
                while not any(c.type == "Established" and c.status == "True"
                              for c in ext.read_custom_resource_definition(name).status.conditions or ()):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"CRD {name} not Established within {ESTABLISHED_TIMEOUT_S} s")
                    time.sleep(0.1)
        finally:
            api.close()

    # --- tear-down, outages ------------------------------------------------------------------------
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop_apiserver(self) -> None:
        """SIGTERM by PID, SIGKILL after STOP_TIMEOUT_S. Idempotent."""
        terminate(self.proc, STOP_TIMEOUT_S)
        self.proc = None

    def restart_apiserver(self) -> None:
        self.stop_apiserver()
        self.start_apiserver()

    def stop(self) -> None:
        self.stop_apiserver()
        self.etcd.stop()

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no kube-apiserver log)"

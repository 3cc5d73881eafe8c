"""Blocking REST calls to kube-apiserver through the official ``kubernetes`` client, with every
failure mapped onto the datastore seam's errors (:mod:`podroute.datastore.api`).

Credentials come from a kubeconfig file or, without one, the in-cluster service account
(``KUBERNETES_SERVICE_HOST`` and ``/var/run/secrets/kubernetes.io/serviceaccount``), both loaded
by the client's own loaders. Responses are read as JSON dicts (``_preload_content=False``).

Error mapping (:func:`map_error`):

- connection refused/reset, a timeout, HTTP 429 and 5xx -> :class:`Unavailable` (transient);
- 401 and 403 -> :class:`Forbidden` (an :class:`Unavailable`: the agent keeps its state and
  retries, so a fixed ClusterRole takes effect without a restart) naming the verb and the
  resource, e.g. ``list ipamblocks.podroute.io``, and the role that should grant it;
- 409 -> :class:`Conflict`; 400/422 (the object fails validation) -> :class:`InvalidData`
  naming the object and the API server's reason; 404 of a collection -> :class:`Unavailable`
  saying the CRDs are not installed.

Calls run on the caller's thread: :mod:`podroute.datastore.kubestore` calls them off the event
loop.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Iterator

from podroute.datastore.api import Conflict, DatastoreError, InvalidData, Unavailable
from podroute.kube.codec import GROUP, Kind

CRDS_HINT = "configs/crds/"
RBAC_HINT = "configs/rbac.yaml"
MERGE_PATCH = "application/merge-patch+json"


class Forbidden(Unavailable):
    """kube-apiserver refused ``verb`` on ``resource`` (HTTP 403; 401 for bad credentials)."""

    def __init__(self, verb: str, resource: str, detail: str) -> None:
        super().__init__(f"kube-apiserver denied {verb} {resource}: {detail}")
        self.verb, self.resource = verb, resource


def resource_name(kind: Kind, subresource: str = "") -> str:
    """RBAC's spelling: ``nodes``, ``nodes/status``, ``ipamblocks.podroute.io``."""
    base = kind.plural if kind.api_version == "v1" else f"{kind.plural}.{GROUP}"
    return f"{base}/{subresource}" if subresource else base


def _status_message(body: Any) -> str:
    try:
        status = json.loads(body)
        return str(status.get("message") or status.get("reason") or "")[:500]
    except (TypeError, ValueError, AttributeError):
        return ""


def map_error(e: Exception, verb: str, kind: Kind, key: str, subresource: str = "") -> DatastoreError:
    """The seam's error for ``e``, raised by ``verb`` on ``key`` (of ``kind``)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    if isinstance(e, DatastoreError):
        return e
    if isinstance(e, ApiException):
        status = e.status or 0
        detail = _status_message(e.body) or str(e.reason)
        if status == 401:
            return Forbidden(verb, resource_name(kind, subresource),
                             f"the credentials were rejected (401 Unauthorized): check the kubeconfig's token")
        if status == 403:
            return Forbidden(verb, resource_name(kind, subresource),
                             f"{detail} (the ClusterRole in {RBAC_HINT} grants the agent what it needs)")
        if status == 404 and "/" not in key:
            return Unavailable(f"kube-apiserver has no {resource_name(kind)} (404): "
                               f"apply the CustomResourceDefinitions in {CRDS_HINT}")
        if status == 409:
            return Conflict(key, detail)
        if status in (400, 422):
            return InvalidData(key, detail)
        return Unavailable(f"kube-apiserver: {verb} {key}: HTTP {status} {detail}".rstrip())
    if isinstance(e, (HTTPError, OSError)):
        return Unavailable(f"kube-apiserver: {verb} {key}: {type(e).__name__}: {e}"[:500])
    if isinstance(e, ValueError):          # a 2xx body that is not JSON: not an API server answering
        return Unavailable(f"kube-apiserver: {verb} {key}: the answer is not JSON ({e})"[:500])
    raise e


class Rest:
    """One API server connection (a urllib3 pool inside the client's ApiClient; thread-safe).

    ``Rest(kubeconfig)`` does no I/O; :meth:`connect` loads the credentials (blocking) and is
    called by the first request."""

    def __init__(self, kubeconfig: Path | None, timeout_s: float) -> None:
        self.kubeconfig = kubeconfig
        self.timeout_s = timeout_s
        self.host = str(kubeconfig) if kubeconfig is not None else "in-cluster"
        self._api: Any = None
        self._lock = threading.Lock()

    def connect(self) -> Any:
        with self._lock:
            if self._api is None:
                from kubernetes import client, config
                from kubernetes.config.config_exception import ConfigException

                cfg = client.Configuration()
                source = str(self.kubeconfig) if self.kubeconfig is not None else "in-cluster service account"
                try:
                    if self.kubeconfig is not None:
                        config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=cfg,
                                                persist_config=False)
                    else:
                        config.load_incluster_config(client_configuration=cfg)
                except (ConfigException, OSError, ValueError, TypeError) as e:
                    raise InvalidData(source, f"cannot load Kubernetes credentials: {e}"[:500]) from None
                # One attempt per call: the caller's backoff decides when to try again.
                cfg.retries = False
                self._api = client.ApiClient(cfg)
                self.host = cfg.host
        return self._api

    def open(self, method: str, path: str, *, query: dict[str, Any] | None = None, body: Any = None,
             content_type: str = "application/json", read_timeout_s: float | None = None) -> Any:
        """The raw urllib3 response of one call (the caller reads and releases it). Raises the
        client's ApiException for a non-2xx status, urllib3/OS errors for transport failures."""
        from kubernetes.client.exceptions import ApiException

        api = self.connect()
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        request = api.param_serialize(method, path, query_params=list((query or {}).items()), header_params=headers,
                                      body=body, auth_settings=["BearerToken"])
        resp = api.call_api(*request, _request_timeout=(self.timeout_s, read_timeout_s or self.timeout_s))
        if not 200 <= resp.status <= 299:
            resp.read()
            resp.response.release_conn()
            raise ApiException.from_response(http_resp=resp, body=None, data=None)
        return resp.response

    def call(self, method: str, path: str, *, query: dict[str, Any] | None = None, body: Any = None,
             content_type: str = "application/json") -> dict[str, Any]:
        """One call's JSON body (see :meth:`open` for what it raises)."""
        resp = self.open(method, path, query=query, body=body, content_type=content_type)
        try:
            return json.loads(resp.data)
        finally:
            resp.release_conn()

    def close(self) -> None:
        with self._lock:
            if self._api is not None:
                self._api.close()
                self._api = None


def lines(resp: Any) -> Iterator[bytes]:
    """The newline-delimited JSON documents of a watch response, as they arrive."""
    buf = b""
    for chunk in resp.stream(amt=None, decode_content=True):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield line
    if buf.strip():
        yield buf

"""The lab's administrative writes to its datastore (etcd or kube-apiserver), run in a child
process inside the namespace the datastore's address is reachable from: the lab's own process
stays in the root namespace, which has no route to the lab's underlay (and must get none).

:func:`run` pickles the job to ``python -m podroute.lab.adminjob`` in that namespace; the
child opens the store (``{"type": "etcd", "endpoint", "prefix"}`` -> EtcdDatastore;
``{"type": "kubernetes", "kubeconfig"}`` -> KubeDatastore as the lab's admin), puts each
resource (create or replace), deletes each key that exists, and answers ``{"put": n,
"deleted": [keys that existed]}``. A store's refusal or a timeout is a LabError naming the
datastore and carrying the child's message.
"""
from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from podroute.datastore.model import Resource
from podroute.lab.netns import LabError


def run(ns: str, store: dict[str, str], puts: Sequence[Resource], deletes: Sequence[str], *,
        what: str, timeout_s: float) -> dict[str, Any]:
    """Apply ``puts`` and ``deletes`` to ``store`` from namespace ``ns`` (see module doc);
    ``what`` names the datastore in errors ("the lab's etcd at http://...")."""
    job = pickle.dumps({"store": store, "puts": list(puts), "deletes": list(deletes)})
    try:
        p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "podroute.lab.adminjob"], input=job,
                           capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise LabError(f"writing to {what} timed out") from None
    if p.returncode != 0:
        raise LabError(f"writing to {what} failed: {p.stderr.decode(errors='replace').strip()[-800:]}")
    return pickle.loads(p.stdout)


def _open(store: dict[str, str]) -> Any:
    if store["type"] == "etcd":
        from podroute.datastore.etcdstore import EtcdDatastore
        return EtcdDatastore([store["endpoint"]], prefix=store["prefix"])
    from podroute.datastore.kubestore import KubeDatastore
    return KubeDatastore(Path(store["kubeconfig"]))


async def _run_job(job: dict[str, Any]) -> dict[str, Any]:
    store = _open(job["store"])
    try:
        for r in job["puts"]:
            await store.put_resource(r)
        deleted = [k for k in job["deletes"] if await store.delete_resource(k)]
    finally:
        await store.close()
    return {"put": len(job["puts"]), "deleted": deleted}


def _main() -> int:
    from podroute.datastore.api import DatastoreError
    job = pickle.loads(sys.stdin.buffer.read())
    try:
        out = asyncio.run(_run_job(job))
    except DatastoreError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(pickle.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(_main())

"""podroute's own etcd errors: the client library's exceptions are mapped to these at the seam
(podroute/etcd/client.py), so nothing above this package imports aetcd or grpc."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from podroute.etcd.types import KeyValue


class EtcdError(Exception):
    """Any etcd failure that is not one of the more specific ones below (etcd said no, e.g. a bad
    request, or the client library failed in an unexpected way)."""


class EtcdUnavailable(EtcdError):
    """etcd did not answer: connection refused or reset, gRPC UNAVAILABLE, or the call's deadline
    (the client's ``timeout_s``) passed. Retry later; the store's state is unknown for writes."""


class EtcdConflict(EtcdError):
    """A compare-and-swap lost: ``create`` found the key present (Version != 0), or ``update``/``delete``
    found a ModRevision other than the one given. ``current`` is the key as the same transaction read
    it (None when it does not exist), so a caller can name the holder without another read."""

    def __init__(self, key: str, current: KeyValue | None, expected_mod_revision: int | None = None) -> None:
        self.key = key
        self.current = current
        self.expected_mod_revision = expected_mod_revision
        if expected_mod_revision is None:
            what = "exists already" if current is not None else "conflict"
        else:
            have = current.mod_revision if current is not None else "absent"
            what = f"mod_revision is {have}, expected {expected_mod_revision}"
        super().__init__(f"etcd key {key!r}: {what}")


class EtcdCompacted(EtcdError):
    """A watch asked for revisions that etcd has compacted away (``compact_revision`` is the oldest
    revision still kept). The caller must list again (``get_prefix``) and diff, then watch from the
    new listing's revision + 1, as Kubernetes reflectors and Calico's watchersyncer do."""

    def __init__(self, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(f"etcd revision compacted: oldest kept revision is {compact_revision}")


class EtcdLeaseNotFound(EtcdError):
    """The lease named in a put or keep-alive does not exist (expired or revoked): the keys under it
    are gone."""

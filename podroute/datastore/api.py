"""The datastore seam: the :class:`Datastore` Protocol, its events and its errors.

Every implementation maps its own failures onto :class:`DatastoreError` subclasses at this
seam, so callers never see an etcd, HTTP or YAML exception:

- :class:`Unavailable`: the store cannot be reached now (etcd Unavailable/DeadlineExceeded, an
  HTTP 5xx or connection error, the cluster file missing). Retry with backoff; keep the last state.
- :class:`Conflict`: a compare-and-swap lost (etcd txn compare failed; Kubernetes 409
  AlreadyExists / Conflict). ``key`` names what was contended, ``holder`` who has it if known.
- :class:`InvalidData`: a stored value that does not parse or breaks a rule; ``key`` names it.
- :class:`Unsupported`: the implementation cannot do this at all (the file datastore cannot
  claim blocks); a configuration error, not a transient one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import AsyncIterator, Mapping, Protocol, Union

from podroute.datastore.model import IPAMBlock, Node, Resource, Stored


class DatastoreError(Exception):
    """Base of every error raised across the seam."""


class Unavailable(DatastoreError):
    """The datastore cannot be reached now; transient."""


class Conflict(DatastoreError):
    """A compare-and-swap write lost: ``key`` was created or changed by someone else
    (``holder``: the node holding it, when the key is an affine block)."""

    def __init__(self, key: str, detail: str, holder: str | None = None) -> None:
        super().__init__(f"{key}: {detail}")
        self.key, self.holder = key, holder


class InvalidData(DatastoreError):
    """The value at ``key`` is malformed or breaks a rule (``reason``)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


class Unsupported(DatastoreError):
    """The implementation cannot perform this operation (a configuration error)."""


@dataclass(frozen=True)
class Snapshot:
    """A consistent list: every valid item at ``revision`` by key, and the keys whose values
    were rejected (``invalid``)."""
    revision: int
    items: Mapping[str, Stored]
    invalid: tuple[InvalidData, ...] = ()


@dataclass(frozen=True)
class Put:
    """``stored`` was created or replaced."""
    stored: Stored


@dataclass(frozen=True)
class Delete:
    """``key`` was deleted (or its lease expired) at ``revision``."""
    key: str
    revision: int


@dataclass(frozen=True)
class Invalid:
    """A write at ``revision`` left a value that does not parse; the key's last good value
    stays in force for consumers."""
    error: InvalidData
    revision: int


Event = Union[Put, Delete, Invalid]


@dataclass(frozen=True)
class Changes:
    """Events that became visible together (one etcd WatchResponse; one Kubernetes watch
    event), up to and including ``revision``."""
    revision: int
    events: tuple[Event, ...] = field(default=())


@dataclass(frozen=True)
class Resync:
    """The watch could not continue from the requested revision (etcd compacted it;
    Kubernetes answered 410 Gone): ``snapshot`` replaces everything the consumer knew."""
    snapshot: Snapshot


WatchItem = Union[Changes, Resync]


class Datastore(Protocol):
    """What podroute needs of a cluster datastore. Every method may raise :class:`Unavailable`.

    ``snapshot()`` then ``watch(snapshot.revision)`` is list-then-watch: the watch yields every
    change after that revision, in order, and a :class:`Resync` instead when it cannot (then
    continues after the resync's revision). A broken watch raises :class:`Unavailable`; the
    caller watches again from the last revision it saw.
    """

    name: str                    # "file", "fake", "etcd", "kubernetes"
    location: str                # for messages: the file's path, the endpoints, the API server
    supports_claims: bool        # False: block claims raise Unsupported (static blocks only)
    # True: a node's record is the node's own write (etcd: under its lease), so a node counts
    # itself in from the start and writes it again if it disappears. False: someone else owns
    # the record (Kubernetes: kubelet creates Nodes, `kubectl delete node` means the node left,
    # labels are set with kubectl) or the file does.
    self_registering: bool

    async def snapshot(self) -> Snapshot: ...

    def watch(self, revision: int) -> AsyncIterator[WatchItem]: ...

    async def register_node(self, node: Node, ttl_s: float) -> Stored:
        """Create or update this node's registration under a lease of ``ttl_s`` seconds that
        the implementation keeps alive until :meth:`close`; once the lease lapses the node is
        deleted for everyone (a Delete event). Raises Conflict when another node has the name
        with another address, InvalidData when the store disagrees with ``node`` and cannot
        be written (the file datastore)."""
        ...

    async def claim_block(self, block: IPAMBlock) -> Stored:
        """Create ``block`` atomically if no block has its key (etcd ``Version(key) == 0``;
        Kubernetes create). Returns the stored block, also when it is already ``block.affinity``'s.
        Raises Conflict (with ``holder``) when another node holds it, Unsupported when the
        store cannot claim."""
        ...

    async def release_block(self, cidr: IPv4Network, revision: int) -> None:
        """Delete the block at ``cidr`` if it is still at ``revision`` (etcd ModRevision compare;
        Kubernetes delete with a resourceVersion precondition). Raises Conflict when it changed
        or is gone: someone else released or re-claimed it."""
        ...

    async def close(self) -> None:
        """Stop keeping leases alive (registrations then lapse after their TTL)."""
        ...


def resources(snapshot: Snapshot) -> Mapping[str, Resource]:
    """The snapshot's values by key."""
    return {k: s.value for k, s in snapshot.items.items()}

"""The :class:`Store` contract: where tasks live between the 202 and the result.

A store holds one :class:`~wsgi_deferred.task.TaskRecord` per task and, once a task is done,
its buffered response body. The middleware talks to stores only through the methods below, so
every backend (memory, SQLite, Redis, or your own) must behave exactly as written here; the
shared suite in ``tests/store_contract.py`` checks it for each of them.

Rules common to every method:

* Ids are already checked against the id format before a store is called.
* Records handed out are copies; changing them changes nothing in the store.
* Times are Unix timestamps in seconds (``time.time()``); durations are seconds.
* A backend that cannot be reached raises :class:`~wsgi_deferred.errors.StoreUnavailable`
  (and nothing else) within a few seconds; it never hangs and never raises a driver error.
* State changes are atomic: when two processes race (two claimers, a cancel racing a finish),
  exactly one transition wins and the loser gets ``False``.
* A record whose ``expires`` has passed is gone: ``get`` returns None for it, and
  :meth:`purge` removes it (with its body) for good. Unfinished records have
  ``expires=None``; the end-state methods set it.
* A record that is ``queued`` or ``running`` and whose ``lease_expires`` has passed is
  reported by :meth:`get` and :meth:`wait` as ``lost`` (and the store may persist that), so
  that no client ever polls a task that will never finish. Every other method treats it as
  ``lost`` too: it cannot be claimed, renewed or finished, and ``cancel`` deletes it.
  One exception (retries, docs/execution.md): a ``running`` task with ``max_attempts > 1``
  and ``attempts < max_attempts`` whose lease passed becomes ``queued`` again instead,
  with ``lease_expires = now + RETRY_WINDOW`` (:meth:`TaskRecord.may_run_again`).
"""

from __future__ import annotations

import abc
import heapq
from collections.abc import Collection, Iterable
from typing import BinaryIO

from ..buffers import SpooledBody
from ..task import TaskRecord, TaskState

__all__ = [
    "DEFAULT_LIST_LIMIT",
    "LIST_SCAN_MAX",
    "ORPHAN_GRACE",
    "REQUEST_TTL",
    "RETRY_WINDOW",
    "STALE_RETENTION",
    "Store",
    "listed",
]

#: Seconds a cancelled record, or an unfinished one whose lease ran out, is kept before
#: :meth:`Store.purge` removes it (long enough for every poller to read ``lost``).
STALE_RETENTION = 3600.0
#: Tasks :meth:`Store.list_tasks` returns unless asked for another number.
DEFAULT_LIST_LIMIT = 1000
#: Records :meth:`Store.list_tasks` examines at most in one call (a bound on its time and
#: memory when a store holds many tasks; the newest of those examined are returned).
LIST_SCAN_MAX = 100_000
#: The message of a task reported ``lost`` because its lease ran out.
LOST_MESSAGE = "the process running this task stopped renewing its lease"
#: Seconds a task re-queued after its runner died waits for a new runner (a delivery or the
#: retry sweeper) before it reads ``lost`` after all.
RETRY_WINDOW = 300.0
#: Seconds a captured request may exist without its task's record (it is saved just before
#: the record is created) before a sweep takes it for an orphan.
ORPHAN_GRACE = 60.0
#: Seconds a captured request kept in a shared store lives at most (a safety net: it is
#: deleted when its task ends).
REQUEST_TTL = 24 * 3600.0


class Store(abc.ABC):
    """Abstract base class of every task store."""

    #: True when every process (and host) that can reach the store sees the same tasks.
    shared: bool = False

    # -- creating and running --------------------------------------------------------------

    @abc.abstractmethod
    def create(self, record: TaskRecord) -> None:
        """Add a new task. *record* carries its id, state (``queued`` or, when a task that
        started inline is handed over, ``running``), ``lease_expires`` and ``expires``.
        Creating an id that already exists is a programming error (ids are 128 random bits):
        it raises ``ValueError``."""

    @abc.abstractmethod
    def claim(self, task_id: str, lease_expires: float) -> bool:
        """Move a ``queued`` task to ``running``: set ``started`` and ``lease_expires``.
        Return True for the one caller that made that move; False when the task is not
        (or no longer) queued, e.g. cancelled, deleted or already claimed."""

    @abc.abstractmethod
    def renew(self, task_ids: Iterable[str], lease_expires: float) -> set[str]:
        """Heartbeat: push ``lease_expires`` of each unfinished task in *task_ids* forward,
        except a task re-queued for another runner (``TaskRecord.requeued``: queued after a
        run): its first runner, late but alive, must not keep it from its retry.
        Return the ids that were renewed; an id missing from the answer is finished,
        cancelled, deleted or expired, and its runner should stop caring about it."""

    @abc.abstractmethod
    def set_progress(self, task_id: str, progress: float | None, message: str | None) -> None:
        """Record the app's latest progress (0..1 or None) and message for an unfinished
        task. Ignored for an unknown or finished task."""

    # -- ending ----------------------------------------------------------------------------

    @abc.abstractmethod
    def finish(
        self,
        task_id: str,
        status: str,
        headers: list[tuple[str, str]],
        body: SpooledBody,
        expires: float,
    ) -> bool:
        """Move a ``queued``/``running`` task to ``done`` with the app's response.

        The store takes ownership of *body*: it keeps it, or copies it (in chunks, never the
        whole body in memory) and calls ``body.discard()``. Return True when the result was
        stored; False (and the body discarded) when the task was cancelled, deleted, lost or
        already finished."""

    @abc.abstractmethod
    def fail(self, task_id: str, state: str, message: str | None, expires: float) -> bool:
        """Move a ``queued``/``running`` task to the end state *state* (``"failed"`` or
        ``"lost"``; anything else may raise ``ValueError``) with a short *message* (never a
        traceback). Return True when this call made the move, False when the task was
        already final (a lapsed lease counts as final), cancelled or gone."""

    @abc.abstractmethod
    def cancel(self, task_id: str) -> bool:
        """The client's ``DELETE``. A ``queued`` or ``running`` task becomes ``cancelled``
        (its runner sees that through :meth:`get` or :meth:`renew` and its result will be
        refused by :meth:`finish`), with ``expires = now + STALE_RETENTION``; a finished task
        is deleted with its body. Return True if
        the task existed (in any state but ``cancelled``), False otherwise."""

    # -- reading ---------------------------------------------------------------------------

    @abc.abstractmethod
    def get(self, task_id: str) -> TaskRecord | None:
        """The task's record, or None when it is unknown, expired or deleted. A cancelled
        task may still be returned (state ``cancelled``); the status URL treats it as 404."""

    @abc.abstractmethod
    def open_body(self, task_id: str) -> BinaryIO | None:
        """A new binary reader over a ``done`` task's body, positioned at its start, or None
        when there is no such body. The caller closes it. Reading must not load the whole
        body into memory. If the result is deleted while it is being read, the reader either
        goes on serving the old bytes (files) or raises ``StoreUnavailable``; it never
        returns a silently truncated body."""

    @abc.abstractmethod
    def wait(self, task_id: str, timeout: float) -> TaskRecord | None:
        """Block up to *timeout* seconds until the task is in a final state (or its lease
        ran out, or it disappeared), then return :meth:`get`'s answer. Returns sooner when
        that happens sooner; returns the current record at the timeout."""

    # -- housekeeping ----------------------------------------------------------------------

    @abc.abstractmethod
    def purge(self, now: float | None = None) -> int:
        """Remove every record (and body) whose ``expires`` is before *now* (default: the
        current time), and every unfinished one whose lease ran out more than
        ``STALE_RETENTION`` seconds before *now*. Return how many were removed."""

    @abc.abstractmethod
    def secret(self) -> bytes:
        """A random key, the same for every process sharing this store, created on first
        use. It keys the hash of a ``bind`` credential so the credential is never stored."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release what this store holds for the calling thread or process (a per-thread
        connection, a connection pool it created; never a client it was given).
        Idempotent; the store may be used again afterwards and reconnects."""

    # -- per-client admission (docs/security.md, "Limits") ---------------------------------
    # Not abstract: a store without them still works; the middleware then counts per
    # process (wsgi_deferred.admission). *client* is an opaque key of at most 64 characters
    # from [0-9a-f]; a slot is one pending task of that client, named by its task id.

    def acquire_slot(self, client: str, task_id: str, limit: int, expires: float) -> bool:
        """Atomically: forget *client*'s slots whose ``expires`` has passed; then, if
        *task_id* already has a slot, move its expiry to *expires* and return True; else
        if fewer than *limit* slots remain, add one for *task_id* until *expires* and
        return True; else return False. Two racing callers can never both take the last
        slot."""
        raise NotImplementedError

    def release_slot(self, client: str, task_id: str) -> None:
        """Give back *task_id*'s slot (the task ended, any way). Idempotent."""
        raise NotImplementedError

    def renew_slots(self, slots: Iterable[tuple[str, str]], expires: float) -> None:
        """Heartbeat: move the expiry of each existing ``(client, task_id)`` slot to
        *expires* if that is later; never sooner (a slot taken for a task's queued lease
        outlives the leases of its client's running tasks), and never another slot's. A
        slot that is gone stays gone (its task ended or its process died)."""
        raise NotImplementedError

    def client_slots(self, client: str) -> int:
        """How many unexpired slots *client* holds."""
        raise NotImplementedError

    # -- listing (the operator's view: ``wsgi-deferred tasks``) ------------------------------

    def list_tasks(
        self, states: Collection[str] | None = None, limit: int = DEFAULT_LIST_LIMIT
    ) -> list[TaskRecord]:
        """Up to *limit* tasks, newest (``created``) first, each as :meth:`get` would return
        it: expired ones absent, unfinished ones whose lease ran out reported ``lost``.
        *states* (state names) keeps only tasks in those states. Bounded: a store examines at
        most ``LIST_SCAN_MAX`` records, and never blocks other clients for long (Redis pages
        through its keys with ``SCAN``, never ``KEYS``). A store that cannot list raises
        ``NotImplementedError``; one that cannot be reached, ``StoreUnavailable``."""
        raise NotImplementedError(f"{type(self).__name__} cannot list its tasks")

    # -- execution tier: captured requests, the delivery gate, retries --------------------
    # Non-abstract, so stores written before them keep working (without retries or remote
    # executors). Shared stores implement them; see docs/execution.md, "Execution tier".

    def deliver(self, task_id: str, lease_expires: float) -> TaskRecord | None:
        """The gate every delivery passes: a final task, or one whose lease is held and live,
        is skipped (None); a ``queued`` one (new, or re-queued after its runner died) moves to
        ``running`` with *lease_expires*, ``started`` now and ``attempts`` + 1, atomically, and
        its record is returned. The default builds on :meth:`claim` (which counts attempts
        too in the bundled stores)."""
        if not self.claim(task_id, lease_expires):
            return None
        return self.get(task_id)

    def save_request(self, task_id: str, meta: bytes, body: SpooledBody) -> None:
        """Keep a task's captured request (*meta*: its variables as JSON; *body*: copied in
        chunks, never whole in memory; the caller keeps ownership of *body*) until
        :meth:`delete_request`, or :data:`REQUEST_TTL` at most."""
        raise NotImplementedError(f"{type(self).__name__} cannot keep captured requests")

    def load_request(self, task_id: str) -> tuple[bytes, BinaryIO] | None:
        """``(meta, reader over the body)`` saved by :meth:`save_request`, or None. The
        caller closes the reader; reading never loads the whole body into memory."""
        return None

    def delete_request(self, task_id: str) -> None:  # noqa: B027 - optional, a no-op
        """Forget a task's captured request (its task ended). No error if there is none."""

    def retry_candidates(self, limit: int) -> list[str]:
        """At most *limit* ids of tasks whose captured request is kept and that need a look:
        re-queued after a run (``TaskRecord.requeued``) or running on a lapsed lease. The
        retry sweeper reads each with :meth:`get` (which applies the lease rules, re-queueing
        what may run again) and re-submits the re-queued ones. Healthy queued or running tasks
        are left out, so a backlog of them never hides one whose runner died (a store may also
        page through its candidates over successive calls). A hint: it may name tasks that
        ended meanwhile."""
        return []


def listed(
    records: Iterable[TaskRecord], states: Collection[str] | None, limit: int, now: float
) -> list[TaskRecord]:
    """Shared tail of :meth:`Store.list_tasks`: the store rules (expired: absent; lapsed
    lease: ``lost``, or ``queued`` when it may run again), the *states* filter, newest
    first, at most *limit*."""
    wanted = None if states is None else {str(s) for s in states}
    kept: list[TaskRecord] = []
    for record in records:
        if record.expires is not None and record.expires < now:
            continue
        if record.lease_ran_out(now) and record.may_run_again():
            record = record.copy(state=TaskState.QUEUED)  # as get() reads it: re-queued
        elif record.lease_ran_out(now):
            record = record.copy(state=TaskState.LOST, finished=record.lease_expires,
                                 message=LOST_MESSAGE)  # fmt: skip
        if wanted is None or record.state.value in wanted:
            kept.append(record)
    return heapq.nlargest(max(0, limit), kept, key=lambda r: r.created)

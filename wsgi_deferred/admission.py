"""Per-client admission: how many tasks one client may have pending, across the deployment.

``max_pending`` bounds one process's queue (``503`` past it). Without more, one client could
fill it for everyone, and a per-client count kept in each process's memory lets ``-w N``
processes admit N times the limit (issue 8, finding 5). So each client's pending tasks are
counted *in the store* (:meth:`Store.acquire_slot`, atomic there), which every process and host
of a deployment shares, and the default per-client cap is a fair share of ``max_pending``
(``DEFAULT_CLIENT_SHARE``), so no single client can take the whole queue. See
docs/security.md, "Limits".

A slot is taken before the task exists and given back when it ends in any way (done, failed,
cancelled, abandoned at shutdown: :meth:`Admission.release`). A process that dies cannot give
its slots back, so slots expire like leases (``lease_timeout``) unless the heartbeat renews them
(:meth:`Admission.renew`): a lost task frees its slot within one lease. A task sent to a
remote engine takes its slot for its queued lease instead; the captured request names the
client, and the worker that runs it renews and releases it (executors/delivery.py).

A store that does not implement the slot methods (a third-party one) falls back to a count in
this process, the old behaviour.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from .errors import StoreUnavailable
from .executors.snapshots import stored_text
from .stores.base import Store
from .tasklog import task_extra

__all__ = [
    "DEFAULT_CLIENT_SHARE",
    "Admission",
    "default_client_limit",
    "release_kept_slot",
    "release_slot",
    "slot_client",
]

logger = logging.getLogger("wsgi_deferred")

#: Default ``max_pending_per_client`` as a fraction of ``max_pending``: with the defaults
#: (1000), 100 pending tasks per client, so at least ten clients always find room.
DEFAULT_CLIENT_SHARE = 0.1


#: Held slots between two prunes on acquire (the heartbeat prunes too, while tasks run here).
PRUNE_EVERY = 256


def default_client_limit(max_pending: int) -> int:
    """The fair-share ``max_pending_per_client`` used when none is given (at least 1)."""
    return max(1, math.floor(max_pending * DEFAULT_CLIENT_SHARE))


def slot_client(client_key: str | None) -> str | None:
    """The store's key for a client: a fixed-size hash, so an address or an owner hash of any
    shape makes a valid key (and a Redis hash tag without braces). None for no client."""
    if client_key is None:
        return None
    return hashlib.sha256(client_key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def release_slot(store: Store, client: str, task_id: str) -> None:
    """Give a slot back from a process that never took it (a worker that ran the task).
    Never raises: a slot the store cannot take back now expires by itself."""
    try:
        store.release_slot(client, task_id)
    except NotImplementedError:
        pass
    except StoreUnavailable as exc:
        logger.warning(
            "task %s: client slot not released (%s); it expires",
            task_id,
            exc,
            extra=task_extra(task_id),
        )


def release_kept_slot(store: Store, task_id: str) -> None:
    """Give back *task_id*'s slot from any process: its client is named in the task's
    captured request, when the store keeps one (a remote executor, a ``retry`` rule).
    Never raises; without a kept request the slot expires by itself."""
    try:
        kept = store.load_request(task_id)
    except (StoreUnavailable, NotImplementedError):
        return
    if kept is None:
        return
    meta, reader = kept
    reader.close()
    client = stored_text(meta, "client")
    if client is not None:
        release_slot(store, client, task_id)


class Admission:
    """Takes, renews and gives back per-client slots for one middleware."""

    def __init__(
        self,
        limit: int,
        lease_timeout: float,
        store: Callable[[], Store],
        running_here: Callable[[str], object] = lambda task_id: True,
    ) -> None:
        self.limit = limit
        self._store = store  # the middleware's store getter (the store is chosen lazily)
        self.lease_timeout = lease_timeout  # seconds a slot lives without a renewal
        #: Whether a task is still in this process's pool (``WorkerPool.find``). Only those
        #: slots are renewed: a task handed to another process or executor keeps its slot
        #: for one lease, then the slot lapses, never stuck for good.
        self._running_here = running_here
        self._lock = threading.Lock()
        #: task id -> (client, when taken: monotonic seconds), the slots this process took
        self._held: dict[str, tuple[str, float]] = {}
        self._local: dict[str, set[str]] = {}  # fallback: client -> task ids, this process

    def acquire(self, client_key: str | None, task_id: str, lease: float | None = None) -> bool:
        """Take a slot for *task_id* for *lease* seconds (default ``lease_timeout``); False
        when the client is at its limit. Raises StoreUnavailable when the store cannot be
        asked. A task sent to a remote engine takes one for as long as it may wait in the
        engine's queue; the worker that runs it renews it from then on."""
        client = slot_client(client_key)
        if client is None:
            return True
        expires = time.time() + (lease or self.lease_timeout)
        try:
            taken = self._store().acquire_slot(client, task_id, self.limit, expires)
        except NotImplementedError:
            with self._lock:
                held = self._local.setdefault(client, set())
                if len(held) >= self.limit:
                    self._prune()  # no heartbeat may run here (a remote executor's web tier)
                    held = self._local.setdefault(client, set())
                taken = len(held) < self.limit
                if taken:
                    held.add(task_id)
        if taken:
            with self._lock:
                self._held[task_id] = (client, time.monotonic())
                if len(self._held) % PRUNE_EVERY == 0:  # the heartbeat may not be running
                    self._prune()
        return taken

    def holds(self, task_id: str) -> bool:
        return task_id in self._held

    def release(self, task_id: str) -> None:
        """Give *task_id*'s slot back, if it holds one (no store trip otherwise). Never
        raises: a slot the store cannot take back now expires within ``lease_timeout``."""
        with self._lock:
            entry = self._held.pop(task_id, None)
            if entry is None:
                return
            client = entry[0]
            held = self._local.get(client)
            if held is not None:
                held.discard(task_id)
                if not held:
                    del self._local[client]
        try:
            store = self._store()
        except StoreUnavailable:
            return  # it expires
        release_slot(store, client, task_id)

    def release_cancelled(self, task_id: str) -> None:
        """Give back the slot of a queued task cancelled by this process, whichever process
        took it: the client is named in the task's captured request, when the store keeps
        one (a remote executor, a ``retry`` rule). Never raises."""
        if task_id in self._held:
            self.release(task_id)
            return
        try:
            store = self._store()
        except StoreUnavailable:
            return
        release_kept_slot(store, task_id)

    def _prune(self) -> list[tuple[str, str]]:
        """Drop held slots of tasks gone from this process for over a lease; return those of
        tasks still in this pool as ``(client, task id)``, the ones to renew. Caller holds
        the lock. A task sent to a remote engine is never renewed here: its slot was taken
        for its queued lease, and the worker that runs it renews it (executors/delivery.py);
        a renewal from here would cut it short."""
        young = time.monotonic() - self.lease_timeout
        running = []
        for task_id, (client, taken) in list(self._held.items()):
            if self._running_here(task_id):
                running.append((client, task_id))
            elif taken <= young:
                del self._held[task_id]
                local = self._local.get(client)
                if local is not None:  # the per-process fallback forgets it too
                    local.discard(task_id)
                    if not local:
                        del self._local[client]
        return running

    def release_job(self, job: Any) -> None:
        """``WorkerPool(on_release=...)``: a job left the pool, however it ended."""
        self.release(job.id)

    def renew(self) -> None:
        """Heartbeat: keep alive the slots of this process's unfinished tasks, and forget
        (let lapse) those of tasks that left this process without passing through the pool's
        release (the store's copy expires by itself)."""
        with self._lock:
            slots = self._prune()
        if not slots:
            return
        try:
            self._store().renew_slots(slots, time.time() + self.lease_timeout)
        except NotImplementedError:
            pass  # the local fallback does not expire

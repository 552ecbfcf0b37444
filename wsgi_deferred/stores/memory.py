"""The in-process store: ``memory://``.

Fast and dependency-free, but one process only: the development server, or
``gunicorn -w 1 --threads N``. With several worker processes a status poll can land on a
process that never saw the task; use the SQLite or Redis store there (``store=None`` picks
SQLite by itself when the server says it runs several processes).

Usage::

    from wsgi_deferred import DeferredMiddleware
    from wsgi_deferred.stores.memory import MemoryStore

    app = DeferredMiddleware(app, routes=["POST /render/<id>"], store=MemoryStore())
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Collection, Iterable
from typing import BinaryIO

from ..buffers import SpooledBody
from ..task import TaskRecord, TaskState
from .base import DEFAULT_LIST_LIMIT, LIST_SCAN_MAX, RETRY_WINDOW, STALE_RETENTION, Store, listed

__all__ = ["DEFAULT_MAX_RECORDS", "MemoryStore"]

#: Records kept at most; past it the oldest finished ones are evicted first.
DEFAULT_MAX_RECORDS = 10_000


class MemoryStore(Store):
    """Tasks in a dict guarded by one lock; :meth:`wait` sleeps on a per-task event, so a
    finish wakes only the long polls of that task (not every waiter in the process)."""

    shared = False

    def __init__(self, max_records: int = DEFAULT_MAX_RECORDS) -> None:
        self.max_records = max_records
        self._records: dict[str, TaskRecord] = {}
        self._bodies: dict[str, SpooledBody] = {}
        self._lock = threading.Lock()
        #: task id -> event set (and dropped) at the task's next end transition
        self._ended: dict[str, threading.Event] = {}
        self._secret = secrets.token_bytes(32)
        self._requests: dict[str, tuple[bytes, SpooledBody]] = {}

    # -- creating and running --------------------------------------------------------------

    def create(self, record: TaskRecord) -> None:
        with self._lock:
            if record.id in self._records:
                raise ValueError(f"task {record.id} already exists")
            if len(self._records) >= self.max_records:
                self._make_room()
            self._records[record.id] = record.copy()

    def _make_room(self) -> None:
        self._purge_locked(time.time())
        if len(self._records) < self.max_records:
            return
        finished = sorted(
            (r for r in self._records.values() if r.state.is_final),
            key=lambda r: r.finished or r.created,
        )
        # Evict a tenth at once, so a full store sorts once per many creates, not per create.
        excess = len(self._records) - self.max_records + 1
        for record in finished[: max(excess, self.max_records // 10, 1)]:
            self._drop(record.id)

    def claim(self, task_id: str, lease_expires: float) -> bool:
        return self.deliver(task_id, lease_expires) is not None

    def renew(self, task_ids: Iterable[str], lease_expires: float) -> set[str]:
        renewed = set()
        with self._lock:
            for task_id in task_ids:
                record = self._live(task_id)
                if record is None or record.state.is_final or record.requeued:
                    continue  # a re-queued task belongs to its next runner (store contract)
                record.lease_expires = lease_expires
                renewed.add(task_id)
        return renewed

    def set_progress(self, task_id: str, progress: float | None, message: str | None) -> None:
        with self._lock:
            record = self._live(task_id)
            if record is not None and not record.state.is_final:
                record.progress = progress
                record.message = message

    # -- ending ----------------------------------------------------------------------------

    def finish(
        self,
        task_id: str,
        status: str,
        headers: list[tuple[str, str]],
        body: SpooledBody,
        expires: float,
    ) -> bool:
        with self._lock:
            record = self._live(task_id)
            if record is None or record.state.is_final:
                body.discard()
                return False
            record.state = TaskState.DONE
            record.finished = time.time()
            record.status = status
            record.headers = list(headers)
            record.body_size = body.size
            record.expires = expires
            self._bodies[task_id] = body
            self._wake(task_id)
            return True

    def fail(self, task_id: str, state: str, message: str | None, expires: float) -> bool:
        end_state = TaskState(state)
        with self._lock:
            record = self._live(task_id)
            if record is None or record.state.is_final:
                return False
            record.state = end_state
            record.finished = time.time()
            record.message = message
            record.expires = expires
            self._wake(task_id)
            return True

    def cancel(self, task_id: str) -> bool:
        with self._lock:
            record = self._live(task_id)
            if record is None or record.state is TaskState.CANCELLED:
                return False
            if record.state.is_final:
                self._drop(task_id)
            else:
                record.state = TaskState.CANCELLED
                record.finished = time.time()
                record.expires = record.finished + STALE_RETENTION
            self._wake(task_id)
            return True

    # -- reading ---------------------------------------------------------------------------

    def get(self, task_id: str) -> TaskRecord | None:
        with self._lock:
            record = self._live(task_id)
            return record.copy() if record is not None else None

    def open_body(self, task_id: str) -> BinaryIO | None:
        with self._lock:
            record = self._live(task_id)
            body = self._bodies.get(task_id)
            if record is None or record.state is not TaskState.DONE or body is None:
                return None
            try:
                return body.open()
            except ValueError:  # discarded by a concurrent delete
                return None

    def wait(self, task_id: str, timeout: float) -> TaskRecord | None:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            with self._lock:
                record = self._live(task_id)
                if record is None or record.state.is_final:
                    return record.copy() if record is not None else None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return record.copy()
                if record.lease_expires is not None:
                    # Wake when the lease would run out, so `lost` is reported on time.
                    remaining = min(remaining, max(0.01, record.lease_expires - time.time()))
                ended = self._ended.setdefault(task_id, threading.Event())
            ended.wait(remaining)

    # -- housekeeping ----------------------------------------------------------------------

    def purge(self, now: float | None = None) -> int:
        with self._lock:
            return self._purge_locked(time.time() if now is None else now)

    def _purge_locked(self, now: float) -> int:
        stale = [
            r.id
            for r in self._records.values()
            if (r.expires is not None and r.expires < now)
            or (
                not r.state.is_final
                and r.lease_expires is not None
                and r.lease_expires < now - STALE_RETENTION
            )
        ]
        for task_id in stale:
            self._drop(task_id)
        return len(stale)

    def secret(self) -> bytes:
        return self._secret

    def close(self) -> None:
        with self._lock:
            for task_id in list(self._records):
                self._drop(task_id)

    # -- internals (caller holds the lock) -------------------------------------------------

    def _live(self, task_id: str) -> TaskRecord | None:
        """The stored record, with expiry and lease rules applied; None when gone."""
        record = self._records.get(task_id)
        if record is None:
            return None
        now = time.time()
        if record.expires is not None and record.expires < now:
            self._drop(task_id)
            return None
        if record.lease_ran_out(now) and record.may_run_again():
            record.state = TaskState.QUEUED  # its runner died: it may run again (retry rule)
            record.lease_expires = now + RETRY_WINDOW
        elif record.lease_ran_out(now):
            record.state = TaskState.LOST
            record.finished = now
            record.message = "the process running this task stopped renewing its lease"
            record.expires = now + STALE_RETENTION
        return record

    def _wake(self, task_id: str) -> None:
        """Wake every :meth:`wait` on *task_id* (it ended, or is gone)."""
        event = self._ended.pop(task_id, None)
        if event is not None:
            event.set()

    def _drop(self, task_id: str) -> None:
        self._wake(task_id)
        self._records.pop(task_id, None)
        body = self._bodies.pop(task_id, None)
        if body is not None:
            body.discard()
        self._drop_request(task_id)

    # -- per-client admission (docs/security.md, "Limits") ---------------------------------

    #: client -> {task id: slot expiry}; created on first use (guarded by ``_lock``).
    _client_slots: dict[str, dict[str, float]] | None = None

    def _slots_of(self, client: str, now: float) -> dict[str, float]:
        """*client*'s live slots (caller holds the lock); expired ones are dropped."""
        if self._client_slots is None:
            self._client_slots = {}
        mine = self._client_slots.setdefault(client, {})
        for task_id in [t for t, until in mine.items() if until < now]:
            del mine[task_id]
        return mine

    def acquire_slot(self, client: str, task_id: str, limit: int, expires: float) -> bool:
        with self._lock:
            mine = self._slots_of(client, time.time())
            if task_id not in mine and len(mine) >= limit:
                return False
            mine[task_id] = expires
            return True

    def release_slot(self, client: str, task_id: str) -> None:
        with self._lock:
            mine = self._slots_of(client, time.time())
            mine.pop(task_id, None)
            if not mine and self._client_slots is not None:
                self._client_slots.pop(client, None)

    def renew_slots(self, slots: Iterable[tuple[str, str]], expires: float) -> None:
        with self._lock:
            now = time.time()
            for client, task_id in slots:
                mine = self._slots_of(client, now)
                if task_id in mine:
                    mine[task_id] = max(mine[task_id], expires)  # never sooner

    def client_slots(self, client: str) -> int:
        with self._lock:
            return len(self._slots_of(client, time.time()))

    # -- listing (Store.list_tasks) ------------------------------------------------------------

    def list_tasks(
        self, states: Collection[str] | None = None, limit: int = DEFAULT_LIST_LIMIT
    ) -> list[TaskRecord]:
        with self._lock:
            ids = list(self._records)[-LIST_SCAN_MAX:]  # insertion order: the newest
            records = [r.copy() for r in map(self._live, ids) if r is not None]
        return listed(records, states, limit, time.time())

    # -- execution tier: captured requests, the delivery gate, retries --------------------
    # One process only, so nothing else could run a task: these exist for the contract.

    def deliver(self, task_id: str, lease_expires: float) -> TaskRecord | None:
        with self._lock:
            record = self._live(task_id)
            if record is None or record.state is not TaskState.QUEUED:
                return None
            record.state = TaskState.RUNNING
            record.started = time.time()
            record.lease_expires = lease_expires
            record.attempts += 1
            return record.copy()

    def save_request(self, task_id: str, meta: bytes, body: SpooledBody) -> None:
        copy = SpooledBody(threshold=body.threshold)
        for chunk in body.iter_chunks():
            copy.write(chunk)
        with self._lock:
            self._drop_request(task_id)
            self._requests[task_id] = (bytes(meta), copy)

    def load_request(self, task_id: str) -> tuple[bytes, BinaryIO] | None:
        with self._lock:
            kept = self._requests.get(task_id)
            if kept is None:
                return None
            try:
                return kept[0], kept[1].open()
            except ValueError:  # discarded meanwhile
                return None

    def delete_request(self, task_id: str) -> None:
        with self._lock:
            self._drop_request(task_id)

    def retry_candidates(self, limit: int) -> list[str]:
        with self._lock:
            return [
                task_id
                for task_id in list(self._requests)
                if (record := self._live(task_id)) is not None
                and (record.requeued or record.lease_ran_out())
            ][: max(0, limit)]

    def _drop_request(self, task_id: str) -> None:
        kept = self._requests.pop(task_id, None)
        if kept is not None:
            kept[1].discard()

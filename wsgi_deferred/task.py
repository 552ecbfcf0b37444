"""Task ids, states and the record a store keeps for each task."""

from __future__ import annotations

import copy
import re
import secrets
import time
from dataclasses import dataclass, field
from enum import Enum

__all__ = ["TASK_ID_LENGTH", "TaskRecord", "TaskState", "is_task_id", "new_task_id"]

#: Length of an id: ``secrets.token_urlsafe(16)`` is 128 random bits in 22 base64url chars.
TASK_ID_LENGTH = 22
_TASK_ID_RE = re.compile(rf"[A-Za-z0-9_-]{{{TASK_ID_LENGTH}}}\Z")


def new_task_id() -> str:
    """A fresh, unguessable task id (128 bits from :mod:`secrets`)."""
    return secrets.token_urlsafe(16)


def is_task_id(value: str) -> bool:
    """True when *value* has the id format. Checked before any store is touched."""
    return len(value) == TASK_ID_LENGTH and _TASK_ID_RE.match(value) is not None


class TaskState(str, Enum):
    """Life cycle of a task: ``queued`` → ``running`` → one of the end states."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    LOST = "lost"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """True for the states a task never leaves."""
        return self not in (TaskState.QUEUED, TaskState.RUNNING)

    def __str__(self) -> str:  # so f-strings and logs show "queued", not "TaskState.QUEUED"
        return self.value


@dataclass
class TaskRecord:
    """Everything a store knows about one task.

    Times are Unix timestamps in seconds (``time.time()``), so they mean the same in every
    process and on every host that shares a store.
    """

    id: str
    state: TaskState = TaskState.QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    #: Fraction 0..1 last reported through ``environ["wsgi_deferred.progress"]``, or None.
    progress: float | None = None
    #: Message last reported by the app, or a short reason for ``failed``/``lost``.
    message: str | None = None
    #: Keyed hash of the requester's credential when ``bind`` is set (never the credential).
    owner: str | None = None
    #: Human name for the work, e.g. ``"POST /render/42"``, shown on the waiting page.
    label: str | None = None
    #: Until when the running process vouches for the task (heartbeat); past it: ``lost``.
    lease_expires: float | None = None
    #: When the record (and its result) may be forgotten.
    expires: float | None = None
    #: The buffered response, set when ``state`` is ``done``.
    status: str | None = None
    headers: list[tuple[str, str]] | None = None
    body_size: int | None = None
    #: Runs started so far (each delivery that took the lease counts one).
    attempts: int = 0
    #: Runs allowed in all: 1 off the ``retry`` rules, ``max_attempts`` on them.
    max_attempts: int = 1

    def copy(self, **changes: object) -> TaskRecord:
        """A shallow copy with *changes* applied (stores hand out copies, never their own)."""
        # copy.copy, not dataclasses.replace: stores copy on every read, and replace() runs
        # __init__ over all fields, several times slower.
        record = copy.copy(self)
        for name, value in changes.items():
            setattr(record, name, value)
        if record.headers is not None:
            record.headers = list(record.headers)
        return record

    def lease_ran_out(self, now: float | None = None) -> bool:
        """True when the task is unfinished and nobody renewed its lease in time."""
        if self.state.is_final or self.lease_expires is None:
            return False
        return (time.time() if now is None else now) > self.lease_expires

    @property
    def requeued(self) -> bool:
        """True for a task queued again after a run whose runner died: it waits for its next
        runner, and its first one may no longer renew it."""
        return self.state is TaskState.QUEUED and self.attempts > 0

    def may_run_again(self) -> bool:
        """True when a running task whose lease lapsed is re-queued instead of ``lost``:
        it is on a ``retry`` rule and has runs left (docs/execution.md, "Retries")."""
        return (
            self.state is TaskState.RUNNING
            and self.max_attempts > 1
            and self.attempts < self.max_attempts
        )

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able form (used by the SQLite and Redis stores)."""
        return {
            "id": self.id,
            "state": self.state.value,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "progress": self.progress,
            "message": self.message,
            "owner": self.owner,
            "label": self.label,
            "lease_expires": self.lease_expires,
            "expires": self.expires,
            "status": self.status,
            "headers": [list(h) for h in self.headers] if self.headers is not None else None,
            "body_size": self.body_size,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> TaskRecord:
        """Inverse of :meth:`to_dict`."""
        values = dict(data)
        values["state"] = TaskState(values["state"])
        headers = values.get("headers")
        if headers is not None:
            values["headers"] = [(str(k), str(v)) for k, v in headers]  # type: ignore[union-attr]
        for name in ("attempts", "max_attempts"):  # absent from records written before them
            if values.get(name) is None:
                values.pop(name, None)
            else:
                values[name] = int(values[name])  # type: ignore[call-overload]
        return cls(**values)  # type: ignore[arg-type]

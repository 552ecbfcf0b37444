"""Task ids in log records: the current task, and :class:`TaskIdFilter` for the app's lines.

Every record the library logs about a task carries the id twice: as text in the message
(``task <id>: ...``) and as a ``task_id`` attribute of the record (``extra=``), so a
structured formatter (JSON logs) can index it. While a task is replayed, :func:`current_task_id`
returns its id in the thread that runs the app; :class:`TaskIdFilter` copies it onto every
record that does not name a task already, including the application's own::

    import logging
    from wsgi_deferred import TaskIdFilter

    handler = logging.StreamHandler()
    handler.addFilter(TaskIdFilter())  # on the handler: it sees records of every logger
    handler.setFormatter(logging.Formatter("%(asctime)s %(task_id)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)

Outside a replay the attribute is ``default`` (``"-"``), so the format string always works.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

__all__ = ["TaskIdFilter", "current_task_id", "task_extra"]

#: The id of the task whose replay runs in this context (set by the runner, inside the copy
#: of the accepting request's context the replay runs in, so it never leaks to other work).
_current: ContextVar[str | None] = ContextVar("wsgi_deferred_task_id", default=None)

#: Name of the record attribute (``%(task_id)s`` in a format string).
ATTRIBUTE = "task_id"


def current_task_id() -> str | None:
    """The id of the task being replayed in this thread now, or None."""
    return _current.get()


def set_current_task_id(task_id: str | None) -> None:
    """Mark this context as running *task_id* (the runner calls it inside the replay's
    own context copy, which ends with the replay)."""
    _current.set(task_id)


def task_extra(task_id: str) -> dict[str, str]:
    """``extra=`` for a library log call about *task_id*."""
    return {ATTRIBUTE: task_id}


class TaskIdFilter(logging.Filter):
    """Adds ``record.task_id``: the current task's id during a replay, else *default*.

    A record that already has one (the library's own, logged with ``extra=``) keeps it.
    Attach it to a handler, not a logger: a logger's filters only see records logged to that
    very logger, a handler's see everything that reaches it. It never drops a record.
    """

    def __init__(self, default: str = "-") -> None:
        super().__init__()
        self.default = default

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, ATTRIBUTE, None) is None:
            setattr(record, ATTRIBUTE, _current.get() or self.default)
        return True

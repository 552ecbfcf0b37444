"""``wsgi-deferred tasks``: the operator's view of a store, and cancelling one task.

Reads the store directly (:meth:`Store.list_tasks`), so it sees the tasks of every process
and host sharing it: run it anywhere the store URL reaches (a SQLite file on the host, a Redis
server from anywhere). One line per task, newest first::

    Xf3...id  running     4m12s   25%  POST /render/42
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from ..config import option_named, options_from_env
from ..errors import StoreUnavailable
from ..stores import open_store
from ..stores.base import DEFAULT_LIST_LIMIT, LIST_SCAN_MAX, Store
from ..task import TaskRecord, TaskState, is_task_id
from .options import PROG, UsageError, _option_type, _Parser

__all__ = ["build_tasks_parser", "format_age", "format_line", "tasks"]

#: Exit status of ``--cancel ID`` when the store has no such task (argparse's 2 is usage).
NOT_FOUND = 1

TASKS_DESCRIPTION = """\
List the tasks of a store: one line per task, newest first, with its id, state, age (since it
was accepted), progress (as last reported by the application) and label (method and path).
The store is read directly, so the list covers every process and host that shares it; run it
on a host of the deployment for a SQLite store, from anywhere that reaches Redis for a Redis
store. --cancel ID cancels one task, as a client's DELETE on its status URL would: a queued
task never starts, a running one is told through environ["wsgi_deferred.cancelled"]() and its
result is refused, a finished one's result is deleted.
"""

TASKS_EPILOG = f"""\
output:
  ID STATE AGE PROGRESS LABEL, separated by spaces; PROGRESS is "-" when none was reported.
  With --json, one JSON object per line instead (JSON Lines): id, state, created, started,
  finished (Unix times), age (seconds), progress (0..1 or null), message, label.

exit status:
  0 on success; 1 when --cancel names no task the store knows (unknown, expired or already
  cancelled); 2 for a usage error, a bad store URL or a store that cannot be reached (one line
  on stderr).

examples:
  {PROG} tasks --store redis://redis.internal:6379/0
  {PROG} tasks --store sqlite:///var/tmp/deferred.db --state running --state queued
  {PROG} tasks --store redis://redis.internal:6379/0 --json | jq -r 'select(.age > 600).id'
  {PROG} tasks --store redis://redis.internal:6379/0 --cancel Xf3kT0b7kQy1cE4ZzZ9wNw
"""

_STATES = [state.value for state in TaskState]


def glue_task_ids(argv: list[str]) -> list[str]:
    """``--cancel -hQ6...`` -> ``--cancel=-hQ6...``. A task id is base64url and one in 32
    starts with ``-``, which argparse would take for an option ("expected one argument")."""
    glued: list[str] = []
    values = iter(argv)
    for arg in values:
        if arg == "--cancel":
            value = next(values, None)
            glued.append(arg if value is None else f"--cancel={value}")
        else:
            glued.append(arg)
    return glued


def build_tasks_parser() -> _Parser:
    parser = _Parser(
        prog=f"{PROG} tasks",
        usage=f"{PROG} tasks --store URL [--state STATE]... [--json] [--limit N] [--cancel ID]",
        description=TASKS_DESCRIPTION,
        epilog=TASKS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    store = option_named("store")
    parser.add_argument(
        "--store",
        dest="store",
        type=_option_type("store"),
        metavar=store.metavar,
        default=argparse.SUPPRESS,
        help=f"the deployment's store: sqlite:///path/to.db or redis://host:6379/0 [{store.env}]",
    )
    parser.add_argument(
        "--state",
        dest="states",
        action="append",
        choices=_STATES,
        metavar="STATE",
        help=f"only tasks in STATE, one of {', '.join(_STATES)} (repeatable)",
    )
    parser.add_argument(
        "--limit",
        type=_limit,
        default=DEFAULT_LIST_LIMIT,
        metavar="N",
        help=f"show at most the N newest tasks (default: {DEFAULT_LIST_LIMIT})",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--cancel", metavar="ID", help="cancel the task ID instead of listing")
    return parser


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number (got {text!r})") from None
    if not 1 <= value <= LIST_SCAN_MAX:
        raise argparse.ArgumentTypeError(f"expected 1 to {LIST_SCAN_MAX} (got {text!r})")
    return value


def open_operator_store(url: str) -> Store:
    """The store at *url*, for reading it from outside the deployment: never creates one."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() == "memory":
        raise UsageError(
            "a memory:// store lives inside one server process; "
            "give the deployment's sqlite:// or redis:// URL"
        )
    if scheme.lower() == "sqlite":
        path = "/" + rest.lstrip("/") if rest.startswith("//") else rest
        if not os.path.isfile(path):
            raise UsageError(f"no SQLite store at {os.path.abspath(path)!r} ({url})")
    return open_store(url)


def format_age(seconds: float) -> str:
    """``42s``, ``4m12s``, ``3h05m``, ``2d07h``."""
    total = max(0, int(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86400}d{total % 86400 // 3600:02d}h"


def _printable(text: str) -> str:
    """A label as one terminal-safe line: control characters escaped, never interpreted."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def format_line(record: TaskRecord, now: float) -> str:
    progress = "-" if record.progress is None else f"{record.progress:.0%}"
    label = _printable(record.label or "-")
    age = format_age(now - record.created)
    return f"{record.id} {record.state.value:<9} {age:>6} {progress:>4} {label}"


def _as_json(record: TaskRecord, now: float) -> str:
    data: dict[str, Any] = {
        "id": record.id,
        "state": record.state.value,
        "created": record.created,
        "started": record.started,
        "finished": record.finished,
        "age": round(now - record.created, 3),
        "progress": record.progress,
        "message": record.message,
        "label": record.label,
    }
    return json.dumps(data, ensure_ascii=True)


def tasks(args: argparse.Namespace) -> int:
    url = getattr(args, "store", None) or options_from_env(dict(os.environ)).get("store")
    if not url:
        raise UsageError(f"which store? give --store URL (or {option_named('store').env})")
    try:
        store = open_operator_store(url)
    except StoreUnavailable as exc:
        raise UsageError(f"store unavailable: {exc}") from None
    except ValueError as exc:  # redis-py's from_url on a malformed URL (a bad port)
        raise UsageError(f"bad store URL {url!r}: {exc}") from None
    except ImportError as exc:
        raise UsageError(
            f"cannot open {url!r}: {exc} (pip install 'wsgi_deferred[redis]')"
        ) from None
    try:
        if args.cancel is not None:
            return _cancel(store, args.cancel)
        records = store.list_tasks(states=args.states, limit=args.limit)
        now = time.time()
        out = sys.stdout
        try:
            for record in records:
                out.write((_as_json(record, now) if args.json else format_line(record, now)) + "\n")
            out.flush()
        except BrokenPipeError:  # `| head`: the reader has what it wanted
            # Python would report the pipe again when it flushes stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except StoreUnavailable as exc:
        raise UsageError(f"store unavailable: {exc}") from None
    finally:
        store.close()


def _cancel(store: Store, task_id: str) -> int:
    if not is_task_id(task_id):
        raise UsageError(
            f"--cancel {task_id!r} is not a task id (22 characters of A-Z a-z 0-9 _ -)"
        )
    record = store.get(task_id)
    if record is None or record.state is TaskState.CANCELLED or not store.cancel(task_id):
        print(
            f"{PROG} tasks: no task {task_id} (unknown, expired or already cancelled)",
            file=sys.stderr,
        )
        return NOT_FOUND
    if record.state.is_final:
        print(f"task {task_id}: was {record.state.value}; its result is deleted")
    else:
        print(f"task {task_id}: cancelled (was {record.state.value})")
    return 0

"""SQLite connections for :class:`~wsgi_deferred.stores.sqlite.SQLiteStore`: one per thread
and per process, created with the schema, retried while the database is busy.

SQLite connections must not cross a ``fork()`` (gunicorn ``--preload``): each thread of each
process opens its own, remembers the pid it was opened in, and a child never touches (not
even closes) one it inherited. Every error is turned into
:class:`~wsgi_deferred.errors.StoreUnavailable` once ``busy_timeout`` has passed.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import StoreUnavailable

__all__ = ["POLL_MAX", "POLL_MIN", "ConnectionPerThread"]

T = TypeVar("T")

POLL_MIN, POLL_MAX = 0.005, 0.1  # seconds between polls in wait(), growing
# No secondary index: the table only holds unexpired tasks, and purge's OR would scan anyway.
# A done task has one of body (inline, <= INLINE_BODY_MAX_BYTES) and body_file. Schema version
# (PRAGMA user_version) 2 added `body`, 3 `attempts`, `max_attempts` and the `requests` table
# (captured requests kept for the execution tier); 0 is a new or a version-1 database.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, created REAL NOT NULL, started REAL,
    finished REAL, progress REAL, message TEXT, owner TEXT, label TEXT, lease_expires REAL,
    expires REAL, status TEXT, headers TEXT, body_size INTEGER, body_file TEXT, body BLOB
)""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
    """CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY, meta BLOB NOT NULL, body BLOB, body_file TEXT, saved REAL NOT NULL
)""",
)
SCHEMA_VERSION = 3
_ADDED_COLUMNS = (
    ("body", "BLOB"),
    ("attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("max_attempts", "INTEGER NOT NULL DEFAULT 1"),
)
# Connections inherited through fork(). SQLite forbids using them in the child, and closing
# them there could checkpoint or unlink the parent's WAL, so they are parked here for good
# (a garbage-collected Connection closes itself).
_INHERITED: list[sqlite3.Connection] = []


def _immediate(conn: sqlite3.Connection, operation: Callable[[sqlite3.Connection], T]) -> T:
    """*operation* inside BEGIN IMMEDIATE: the write lock is taken up front, so a
    read-then-write never fails halfway on a lock upgrade."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = operation(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _create_schema(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA:
        conn.execute(statement)
    present = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
    for name, declaration in _ADDED_COLUMNS:  # an older database
        if name not in present:
            conn.execute(f"ALTER TABLE tasks ADD COLUMN {name} {declaration}")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


class _Handle:
    """One thread's connection; closed when the thread ends and its ``threading.local`` dies."""

    __slots__ = ("conn", "pid")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn, self.pid = conn, os.getpid()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # may run at interpreter exit
            if self.pid == os.getpid():
                self.conn.close()
            else:
                _INHERITED.append(self.conn)


class ConnectionPerThread:
    """This thread's connection to the database at *path*, and retries around it."""

    def __init__(self, path: str, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout  # seconds
        self._local = threading.local()
        self._ready = False  # schema checked by this instance

    def connection(self) -> sqlite3.Connection:
        handle: _Handle | None = getattr(self._local, "handle", None)
        if handle is not None and handle.pid == os.getpid():
            return handle.conn
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves. check_same_thread=False only
        # so _Handle.__del__ may close it from whichever thread runs the finalizer.
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # results are ephemeral: no fsync per commit
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if not self._ready and version < SCHEMA_VERSION:
                _immediate(conn, _create_schema)  # racing processes take turns
        except BaseException:
            conn.close()
            raise
        self._ready = True
        self._local.handle = _Handle(conn)  # an inherited handle is parked by its __del__
        return conn

    def run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run *operation* on this thread's connection. SQLite's busy handler already waits
        up to busy_timeout; the loop retries the BUSY errors it returns early (WAL recovery,
        stale snapshots) until the deadline. Nothing sqlite3 escapes: StoreUnavailable."""
        deadline = time.monotonic() + self.busy_timeout
        pause = POLL_MIN
        while True:
            try:
                return operation(self.connection())
            except sqlite3.Error as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not (busy and time.monotonic() + pause < deadline):
                    raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from exc
            time.sleep(pause)
            pause = min(pause * 2, POLL_MAX)

    def transaction(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """*operation* inside BEGIN IMMEDIATE (see :func:`_immediate`), retried like _run."""
        return self.run(lambda conn: _immediate(conn, operation))

    def count(self, sql: str, **params: object) -> int:
        """Rows changed by one autocommitted (so atomic) statement."""
        return self.run(lambda conn: conn.execute(sql, params).rowcount)

    def rows(self, sql: str, **params: object) -> list[tuple[Any, ...]]:
        return self.run(lambda conn: conn.execute(sql, params).fetchall())

    def close(self) -> None:
        """Close the calling thread's connection (if it was opened in this process)."""
        handle: _Handle | None = getattr(self._local, "handle", None)
        self._local.handle = None
        if handle is not None and handle.pid == os.getpid():
            with contextlib.suppress(sqlite3.Error):
                handle.conn.close()

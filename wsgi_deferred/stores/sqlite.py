"""The single-host, multi-process store: ``sqlite:///path/to.db``.

Every worker process of one deployment (``gunicorn -w N``) opens the same database file, so a
status poll can land on any of them. The database runs in WAL mode (readers never wait for the
writer) with ``synchronous=NORMAL``; each thread of each process has its own connection, and a
process forked after the store was used (``gunicorn --preload``) opens fresh ones. A result body
of at most ``INLINE_BODY_MAX_BYTES`` (64 KiB) is a BLOB in its task's row, written by the same
conditional UPDATE that marks the task done; a larger one is a file in ``<database>.bodies/``
beside the database, streamed from disk and never held in memory or in the database. Long
polls are woken by datagrams between the processes (:mod:`.sqlite_wake`), not by re-reading.

Schema version 2 (``PRAGMA user_version``) added the ``body`` column; a version-1 database gets
it when first opened. Older processes cannot serve inline bodies (404): upgrade them all at once.

URL rule: the text after ``sqlite://`` is the path. ``sqlite:///var/tmp/d.db`` is the absolute
path ``/var/tmp/d.db``; SQLAlchemy's absolute form ``sqlite:////var/tmp/d.db`` means the same;
``sqlite://relative/d.db`` is ``relative/d.db`` under the current directory (resolved once, when
the store is made). Missing parent directories are created.

Usage::

    from wsgi_deferred import DeferredMiddleware
    from wsgi_deferred.stores.sqlite import SQLiteStore

    store = SQLiteStore("/var/lib/myapp/deferred.db", busy_timeout=5.0)
    # or: SQLiteStore.from_url("sqlite:///var/lib/myapp/deferred.db")
    app = DeferredMiddleware(app, routes=["POST /render/<id>"], store=store)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import sqlite3
import tempfile
import threading
import time
from collections.abc import Collection, Iterable
from typing import BinaryIO, TypeVar

from ..buffers import SpooledBody
from ..errors import ConfigurationError, StoreUnavailable
from ..task import TaskRecord, TaskState
from . import sqlite_slots
from .base import (
    DEFAULT_LIST_LIMIT,
    LIST_SCAN_MAX,
    STALE_RETENTION,
    Store,
    listed,
)
from .private import PRIVATE_DIR_MODE, create_private_file
from .sqlite_db import POLL_MAX, POLL_MIN, ConnectionPerThread
from .sqlite_requests import SQLiteRequests
from .sqlite_wake import FALLBACK_SECONDS, WakeChannel

__all__ = ["INLINE_BODY_MAX_BYTES", "SQLiteStore"]

#: Bodies up to this many bytes live in the task's row; larger ones are files. Small enough
#: to hold in memory while copying, large enough that a typical JSON result needs no file.
INLINE_BODY_MAX_BYTES = 64 * 1024

T = TypeVar("T")

_COLUMNS = (
    "id", "state", "created", "started", "finished", "progress", "message", "owner", "label",
    "lease_expires", "expires", "status", "headers", "body_size", "attempts", "max_attempts",
)  # fmt: skip
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM tasks WHERE id = :id"
# A task that may still change: unfinished, lease not run out, not expired. Every transition
# is one UPDATE guarded by this, so of two racing processes exactly one sees rowcount 1.
_LIVE = (
    "state IN ('queued', 'running') AND (lease_expires IS NULL OR lease_expires >= :now)"
    " AND (expires IS NULL OR expires >= :now)"
)
_LOST_MESSAGE = "the process running this task stopped renewing its lease"
# Unreferenced body files younger than this (real seconds) may belong to a finish() that has
# written its file but not yet committed its row; purge() leaves them alone.
_ORPHAN_GRACE = 600.0


class SQLiteStore(SQLiteRequests, Store):
    """Tasks in a SQLite database shared by the processes of one host; bodies as files."""

    shared = True

    def __init__(self, path: str, *, busy_timeout: float = 5.0) -> None:
        # Absolute now, so a later chdir (daemonizing) cannot point the store elsewhere.
        self.path = os.path.abspath(path)
        self.busy_timeout = busy_timeout
        self.bodies_dir = self.path + ".bodies"
        try:
            # Also creates the db's parents. Bodies are results: private (docs/security.md).
            os.makedirs(self.bodies_dir, mode=PRIVATE_DIR_MODE, exist_ok=True)
            # Created 0600 before SQLite opens it: SQLite gives -wal and -shm the database's
            # mode. An existing file keeps the mode its owner chose.
            create_private_file(self.path)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create the store at {self.path}: {exc}") from exc
        self._db = ConnectionPerThread(self.path, busy_timeout)
        self._secret: bytes | None = None
        self._generation = 0  # bumped by every final transition made through this instance
        self._cond_pid = os.getpid()
        self._changed = threading.Condition()
        #: Wake-ups from the other processes of this database (docs/protocol.md, "Holds").
        self._wake = WakeChannel(self.path, self._wake_local)

    @classmethod
    def from_url(cls, url: str, *, busy_timeout: float = 5.0) -> SQLiteStore:
        """The store named by ``sqlite://PATH`` (see the module docstring for PATH)."""
        scheme, sep, path = url.partition("://")
        if scheme.lower() != "sqlite" or not sep:
            raise ConfigurationError(f"not a sqlite:// URL: {url!r}")
        if path.startswith("//"):  # SQLAlchemy's sqlite:////abs/path
            path = "/" + path.lstrip("/")
        if path in ("", "/", ":memory:"):  # :memory: would be a private database per thread
            raise ConfigurationError(f"sqlite URL {url!r} names no database file")
        return cls(path, busy_timeout=busy_timeout)

    # -- connections and change notification ------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (see :class:`ConnectionPerThread`)."""
        return self._db.connection()

    def _condition(self) -> threading.Condition:
        # A Condition copied by fork may be held by a thread that no longer exists: renew it.
        if self._cond_pid != os.getpid():
            self._cond_pid, self._changed = os.getpid(), threading.Condition()
        return self._changed

    def _notify(self) -> None:
        """A task ended through this instance: wake this process's waiters, and the others'."""
        self._wake_local()
        self._wake.broadcast()

    def _wake_local(self) -> None:
        changed = self._condition()
        with changed:
            self._generation += 1
            changed.notify_all()

    # -- creating and running --------------------------------------------------------------

    def create(self, record: TaskRecord) -> None:
        values = record.to_dict()
        values["headers"] = json.dumps(values["headers"]) if record.headers is not None else None
        sql = f"INSERT INTO tasks ({', '.join(_COLUMNS)}) VALUES (:{', :'.join(_COLUMNS)})"

        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(sql, values)
            except sqlite3.IntegrityError:
                raise ValueError(f"task {record.id} already exists") from None

        self._db.run(insert)

    def claim(self, task_id: str, lease_expires: float) -> bool:
        sql = (
            "UPDATE tasks SET state = 'running', started = :now, lease_expires = :lease,"
            f" attempts = attempts + 1 WHERE id = :id AND state = 'queued' AND {_LIVE}"
        )
        return self._db.count(sql, id=task_id, now=time.time(), lease=lease_expires) == 1

    def renew(self, task_ids: Iterable[str], lease_expires: float) -> set[str]:
        ids, now = list(task_ids), time.time()
        # Not a task re-queued for another runner (queued after a run): see Store.renew.
        sql = (
            f"UPDATE tasks SET lease_expires = :lease WHERE id = :id AND {_LIVE}"
            " AND NOT (state = 'queued' AND attempts > 0)"
        )

        def renew_all(conn: sqlite3.Connection) -> set[str]:
            params = {"now": now, "lease": lease_expires}
            return {i for i in ids if conn.execute(sql, {**params, "id": i}).rowcount == 1}

        return self._db.transaction(renew_all) if ids else set()

    def set_progress(self, task_id: str, progress: float | None, message: str | None) -> None:
        sql = f"UPDATE tasks SET progress = :p, message = :m WHERE id = :id AND {_LIVE}"
        self._db.count(sql, id=task_id, now=time.time(), p=progress, m=message)

    # -- ending ----------------------------------------------------------------------------

    def finish(
        self,
        task_id: str,
        status: str,
        headers: list[tuple[str, str]],
        body: SpooledBody,
        expires: float,
    ) -> bool:
        size, name, data = body.size, None, None
        try:
            if size <= INLINE_BODY_MAX_BYTES:
                data = body.getvalue()  # goes into the row by the UPDATE below, or nowhere
            else:
                live = f"SELECT 1 FROM tasks WHERE id = :id AND {_LIVE}"
                if not self._db.rows(live, id=task_id, now=time.time()):
                    return False  # spare copying a big body nobody will fetch
                name = self._write_body(task_id, body)
        except OSError as exc:
            raise StoreUnavailable(f"cannot store the body of {task_id}: {exc}") from exc
        finally:
            body.discard()
        # A body file exists before the row points at it; if the row update loses (a cancel got
        # in while we wrote) or fails, the file goes, so no result is left behind unowned.
        sql = (
            "UPDATE tasks SET state = 'done', finished = :now, status = :status,"
            " headers = :headers, body_size = :size, expires = :expires, body_file = :file,"
            f" body = :body WHERE id = :id AND {_LIVE}"
        )
        params = {"status": status, "size": size, "expires": expires, "file": name, "body": data}
        won = False
        try:
            headers_json = json.dumps(headers)  # tuples encode as lists
            won = (
                self._db.count(sql, id=task_id, now=time.time(), headers=headers_json, **params)
                == 1
            )
        finally:
            if not won and name is not None:
                self._unlink(name)
        if won:
            self._notify()
        return won

    def _write_body(self, task_id: str, body: SpooledBody) -> str:
        """Put *body* in a new file in bodies_dir; return its name (unique per call, so two
        finishes of one id can never delete each other's file)."""
        name = f"{task_id}.{secrets.token_hex(4)}"
        final = os.path.join(self.bodies_dir, name)
        if body.path is not None:
            body.open().close()  # flushes the spill file's write buffer
            try:
                # A second name for the spill file's inode: no copy; discard() then removes
                # only the spill name. Fails across filesystems (EXDEV): copy instead.
                os.link(body.path, final)
                return name
            except OSError:
                pass
        fd, temp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=self.bodies_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in body.iter_chunks():
                    out.write(chunk)
            os.replace(temp, final)  # readers never see a half-written body
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return name

    def _unlink(self, name: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.bodies_dir, name))

    def fail(self, task_id: str, state: str, message: str | None, expires: float) -> bool:
        end_state = TaskState(state)
        if end_state not in (TaskState.FAILED, TaskState.LOST):
            raise ValueError(f"fail() takes 'failed' or 'lost', not {state!r}")
        sql = (
            "UPDATE tasks SET state = :state, finished = :now, message = :message,"
            f" expires = :expires WHERE id = :id AND {_LIVE}"
        )
        params = {"state": end_state.value, "message": message, "expires": expires}
        if self._db.count(sql, id=task_id, now=time.time(), **params) != 1:
            return False
        self._notify()
        return True

    def cancel(self, task_id: str) -> bool:
        now = time.time()

        def cancel_one(conn: sqlite3.Connection) -> tuple[bool, str | None]:
            row = conn.execute(
                "SELECT state, lease_expires, expires, body_file FROM tasks WHERE id = ?",
                (task_id,),
            ).fetchone()
            if row is None or (row[2] is not None and row[2] < now) or row[0] == "cancelled":
                return False, None
            lease_ran_out = row[1] is not None and row[1] < now
            if TaskState(row[0]).is_final or lease_ran_out:  # finished (or lost): delete
                conn.execute("DELETE FROM tasks WHERE id = ?", (task_id,))
                return True, row[3]
            conn.execute(
                "UPDATE tasks SET state = 'cancelled', finished = ?, expires = ? WHERE id = ?",
                (now, now + STALE_RETENTION, task_id),
            )
            return True, None

        existed, body_file = self._db.transaction(cancel_one)
        if body_file is not None:  # after COMMIT: open readers keep reading (POSIX)
            self._unlink(body_file)
        if existed:
            self._notify()
        return existed

    # -- reading ---------------------------------------------------------------------------

    def get(self, task_id: str) -> TaskRecord | None:
        while True:
            now, rows = time.time(), self._db.rows(_SELECT, id=task_id)
            if not rows:
                return None
            values = dict(zip(_COLUMNS, rows[0], strict=True))
            if values["headers"] is not None:
                values["headers"] = json.loads(values["headers"])
            record = TaskRecord.from_dict(values)
            if record.expires is not None and record.expires < now:
                return None  # purge() deletes it for good
            if not record.lease_ran_out(now):
                return record
            if record.may_run_again() and self._requeue(task_id, now):
                continue  # its runner died and it may run again: read it as queued
            # Persist `lost` so every process agrees on it (and on when it happened). If the
            # update loses, someone renewed or ended the task meanwhile: read it again.
            lost = {"state": TaskState.LOST, "finished": now, "message": _LOST_MESSAGE,
                    "expires": now + STALE_RETENTION}  # fmt: skip
            sql = (
                "UPDATE tasks SET state = 'lost', finished = :finished, message = :message,"
                " expires = :expires WHERE id = :id AND state IN ('queued', 'running')"
                " AND lease_expires < :now"
            )
            if self._db.count(sql, id=task_id, now=now, **lost) == 1:
                self._notify()
                return record.copy(**lost)

    def open_body(self, task_id: str) -> BinaryIO | None:
        sql = (
            "SELECT body, body_file FROM tasks WHERE id = :id AND state = 'done'"
            " AND (expires IS NULL OR expires >= :now)"
        )
        inline, name = (self._db.rows(sql, id=task_id, now=time.time()) or [(None, None)])[0]
        if inline is not None or name is None:  # inline: at most INLINE_BODY_MAX_BYTES
            return None if inline is None else io.BytesIO(inline)
        try:
            return open(os.path.join(self.bodies_dir, name), "rb")
        except FileNotFoundError:  # deleted by a concurrent cancel or purge
            return None

    def wait(self, task_id: str, timeout: float) -> TaskRecord | None:
        deadline = time.monotonic() + max(0.0, timeout)
        pause = POLL_MIN
        # With wake-ups from the other processes, re-reading the row is only a safety net.
        woken = timeout > 0 and self._wake.listen()
        while True:
            changed = self._condition()
            with changed:
                seen = self._generation  # read before get(): a notify in between is not missed
            record = self.get(task_id)
            remaining = deadline - time.monotonic()
            if record is None or record.state.is_final or remaining <= 0:
                return record
            nap = min(FALLBACK_SECONDS if woken else pause, remaining)
            if record.lease_expires is not None:  # wake when the lease would run out
                nap = min(nap, max(0.001, record.lease_expires - time.time()))
            # This process's finishes and (through WakeChannel) the others' wake us at once.
            with changed:
                if self._generation == seen:
                    changed.wait(nap)
            pause = min(pause * 2, POLL_MAX)

    # -- housekeeping ----------------------------------------------------------------------

    def purge(self, now: float | None = None) -> int:
        params = {"now": time.time() if now is None else now}
        params["stale"] = params["now"] - STALE_RETENTION
        where = "expires < :now OR (state IN ('queued', 'running') AND lease_expires < :stale)"

        def purge_rows(conn: sqlite3.Connection) -> tuple[list[str], int]:
            files = conn.execute(
                f"SELECT body_file FROM tasks WHERE body_file IS NOT NULL AND ({where})", params
            ).fetchall()
            removed = conn.execute(f"DELETE FROM tasks WHERE {where}", params).rowcount
            return [f[0] for f in files], removed

        files, removed = self._db.transaction(purge_rows)
        for name in files:
            self._unlink(name)
        self._sweep_orphans()
        self._purge_requests(params["now"])
        return removed

    def _sweep_orphans(self) -> None:
        """Remove body files no row names: left by a process killed between writing a body
        and committing its row. Uses real time, not purge's *now*: it is about file ages."""
        known = {r[0] for r in self._db.rows("SELECT body_file FROM tasks WHERE body_file NOTNULL")}
        cutoff = time.time() - _ORPHAN_GRACE
        with contextlib.suppress(OSError), os.scandir(self.bodies_dir) as entries:
            for entry in entries:  # listed after the query: see _ORPHAN_GRACE
                with contextlib.suppress(OSError):
                    info = entry.stat()
                    # ctime too: link() and rename() update it, mtime they keep.
                    if entry.name not in known and max(info.st_mtime, info.st_ctime) < cutoff:
                        os.unlink(entry.path)

    def secret(self) -> bytes:
        if self._secret is None:
            # OR IGNORE: the first process to get here wins; every process reads its key.
            insert = "INSERT OR IGNORE INTO meta (key, value) VALUES ('secret', :key)"
            self._db.count(insert, key=secrets.token_bytes(32))
            self._secret = bytes(self._db.rows("SELECT value FROM meta WHERE key = 'secret'")[0][0])
        return self._secret

    def close(self) -> None:
        self._db.close()
        self._wake.close()

    # -- per-client admission (docs/security.md, "Limits") ---------------------------------
    # The SQL is in sqlite_slots.py: one table shared by every process of the host, each
    # acquire one BEGIN IMMEDIATE transaction (two workers never both take a last slot).

    def acquire_slot(self, client: str, task_id: str, limit: int, expires: float) -> bool:
        return sqlite_slots.acquire(self._db, client, task_id, limit, expires)

    def release_slot(self, client: str, task_id: str) -> None:
        sqlite_slots.release(self._db, client, task_id)

    def renew_slots(self, slots: Iterable[tuple[str, str]], expires: float) -> None:
        sqlite_slots.renew(self._db, slots, expires)

    def client_slots(self, client: str) -> int:
        return sqlite_slots.count(self._db, client)

    # -- listing (Store.list_tasks) ------------------------------------------------------------

    def list_tasks(
        self, states: Collection[str] | None = None, limit: int = DEFAULT_LIST_LIMIT
    ) -> list[TaskRecord]:
        params: dict[str, object] = {"now": time.time(), "limit": min(limit, LIST_SCAN_MAX)}
        where = "(expires IS NULL OR expires >= :now)"
        if states is not None:
            # The state get() would report: an unfinished task whose lease ran out is lost,
            # or queued again when it may run again (TaskRecord.may_run_again).
            names = [f":s{n}" for n in range(len(states))]
            params.update({f"s{n}": str(state) for n, state in enumerate(states)})
            where += (
                " AND (CASE WHEN state IN ('queued', 'running') AND lease_expires < :now"
                " THEN (CASE WHEN state = 'running' AND max_attempts > 1"
                " AND attempts < max_attempts THEN 'queued' ELSE 'lost' END)"
                f" ELSE state END) IN ({', '.join(names) or 'NULL'})"
            )
        sql = (
            f"SELECT {', '.join(_COLUMNS)} FROM tasks WHERE {where}"
            " ORDER BY created DESC LIMIT :limit"
        )
        records = []
        for row in self._db.rows(sql, **params):
            values = dict(zip(_COLUMNS, row, strict=True))
            if values["headers"] is not None:
                values["headers"] = json.loads(values["headers"])
            records.append(TaskRecord.from_dict(values))
        return listed(records, states, limit, params["now"])  # type: ignore[arg-type]

"""Captured requests and retries for :class:`~wsgi_deferred.stores.sqlite.SQLiteStore`
(docs/execution.md): the ``requests`` table (schema version 3, see ``sqlite_db.py``), the
delivery gate and the re-queue of a lapsed retry-rule task.

A captured body of at most ``INLINE_BODY_MAX_BYTES`` is a BLOB in its ``requests`` row; a
larger one a file in ``<database>.requests/`` (not the result bodies' directory, whose orphan
sweep only knows result files).
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import sqlite3
import tempfile
import time
from typing import TYPE_CHECKING, BinaryIO

from ..buffers import SpooledBody
from ..errors import StoreUnavailable
from ..task import TaskRecord
from .base import ORPHAN_GRACE, REQUEST_TTL, RETRY_WINDOW

if TYPE_CHECKING:
    from .sqlite_db import ConnectionPerThread

__all__ = ["SQLiteRequests"]

#: Same as ``sqlite.INLINE_BODY_MAX_BYTES``: captured bodies up to this size stay in the row.
INLINE_REQUEST_MAX_BYTES = 64 * 1024


class SQLiteRequests:
    """Mixed into SQLiteStore, which provides ``path``, ``_db``, ``get`` and ``claim``."""

    path: str
    _db: ConnectionPerThread

    def get(self, task_id: str) -> TaskRecord | None:  # pragma: no cover - SQLiteStore's
        raise NotImplementedError

    def claim(self, task_id: str, lease_expires: float) -> bool:  # pragma: no cover
        raise NotImplementedError

    def _requeue(self, task_id: str, now: float) -> bool:
        sql = (
            "UPDATE tasks SET state = 'queued', lease_expires = :window WHERE id = :id"
            " AND state = 'running' AND lease_expires < :now AND max_attempts > 1"
            " AND attempts < max_attempts AND (expires IS NULL OR expires >= :now)"
        )
        return self._db.count(sql, id=task_id, now=now, window=now + RETRY_WINDOW) == 1

    def deliver(self, task_id: str, lease_expires: float) -> TaskRecord | None:
        self.get(task_id)  # applies the lease rules: a lapsed retry task is queued again
        return self.get(task_id) if self.claim(task_id, lease_expires) else None

    @property
    def requests_dir(self) -> str:
        return self.path + ".requests"

    def save_request(self, task_id: str, meta: bytes, body: SpooledBody) -> None:
        name, data = None, None
        try:
            if body.size <= INLINE_REQUEST_MAX_BYTES:
                data = body.getvalue()
            else:
                os.makedirs(self.requests_dir, mode=0o700, exist_ok=True)
                name = f"{task_id}.{secrets.token_hex(4)}"
                fd, temp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=self.requests_dir)
                try:
                    with os.fdopen(fd, "wb") as out:
                        for chunk in body.iter_chunks():
                            out.write(chunk)
                    os.replace(temp, os.path.join(self.requests_dir, name))
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(temp)
                    raise
        except OSError as exc:
            raise StoreUnavailable(f"cannot keep the request of {task_id}: {exc}") from exc
        sql = (
            "INSERT OR REPLACE INTO requests (id, meta, body, body_file, saved)"
            " VALUES (:id, :meta, :body, :file, :now)"
        )
        saved = False
        try:
            old = self._db.rows("SELECT body_file FROM requests WHERE id = :id", id=task_id)
            self._db.count(sql, id=task_id, meta=bytes(meta), body=data, file=name, now=time.time())
            saved = True
        finally:
            if not saved and name is not None:
                self._unlink_request(name)
        if old and old[0][0]:
            self._unlink_request(old[0][0])

    def load_request(self, task_id: str) -> tuple[bytes, BinaryIO] | None:
        sql = "SELECT meta, body, body_file FROM requests WHERE id = :id AND saved >= :oldest"
        rows = self._db.rows(sql, id=task_id, oldest=time.time() - REQUEST_TTL)
        if not rows:
            return None
        meta, data, name = rows[0]
        if name is None:
            return bytes(meta), io.BytesIO(bytes(data or b""))
        try:
            return bytes(meta), open(os.path.join(self.requests_dir, name), "rb")
        except FileNotFoundError:  # deleted by a concurrent delete_request
            return None

    def delete_request(self, task_id: str) -> None:
        def delete(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT body_file FROM requests WHERE id = ?", (task_id,)).fetchone()
            conn.execute("DELETE FROM requests WHERE id = ?", (task_id,))
            return row[0] if row else None

        name = self._db.transaction(delete)
        if name is not None:
            self._unlink_request(name)

    def retry_candidates(self, limit: int) -> list[str]:
        sql = (
            "SELECT r.id FROM requests r JOIN tasks t ON t.id = r.id"
            " WHERE (t.state = 'queued' AND t.attempts >= 1)"
            " OR (t.state = 'running' AND t.lease_expires < :now)"
            " ORDER BY r.saved LIMIT :limit"
        )
        # Only tasks that need a look (re-queued, or running on a lapsed lease): a backlog of
        # healthy ones can never hide a task whose runner died.
        return [row[0] for row in self._db.rows(sql, limit=max(0, limit), now=time.time())]

    def _purge_requests(self, now: float) -> None:
        """Captured requests whose task is gone or final, or older than REQUEST_TTL."""
        # A request is saved just before its task's record is created (runner.attach): one
        # younger than ORPHAN_GRACE seconds may be waiting for it.
        where = (
            "saved < :oldest OR (saved < :settled AND id NOT IN (SELECT id FROM tasks"
            " WHERE state IN ('queued', 'running')))"
        )

        def purge(conn: sqlite3.Connection) -> list[str]:
            params = {"oldest": now - REQUEST_TTL, "settled": now - ORPHAN_GRACE}
            files = conn.execute(
                f"SELECT body_file FROM requests WHERE body_file IS NOT NULL AND ({where})", params
            ).fetchall()
            conn.execute(f"DELETE FROM requests WHERE {where}", params)
            return [f[0] for f in files]

        for name in self._db.transaction(purge):
            self._unlink_request(name)

    def _unlink_request(self, name: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.requests_dir, name))

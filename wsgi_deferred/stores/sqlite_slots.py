"""Per-client admission slots in a SQLite store (see :mod:`wsgi_deferred.admission`).

One table, ``client_slots``, in the store's database, so every process of the host sees one
count per client. Each call is one ``BEGIN IMMEDIATE`` transaction: the write lock is taken
before the count is read, so two workers can never both take a client's last slot. Expired
slots (a process that died never releases) are deleted by the next acquire, for every client,
which keeps the table as small as the number of pending tasks.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable

from .sqlite_db import ConnectionPerThread

__all__ = ["acquire", "count", "release", "renew"]

_TABLE = (
    "CREATE TABLE IF NOT EXISTS client_slots (client TEXT NOT NULL, task_id TEXT NOT NULL,"
    " expires REAL NOT NULL, PRIMARY KEY (client, task_id)) WITHOUT ROWID"
)


def _ensure(conn: sqlite3.Connection) -> None:
    # Created on first use (cheap: IF NOT EXISTS), so older databases gain it without a
    # schema version bump.
    conn.execute(_TABLE)


def acquire(db: ConnectionPerThread, client: str, task_id: str, limit: int, expires: float) -> bool:
    now = time.time()

    def run(conn: sqlite3.Connection) -> bool:
        _ensure(conn)
        conn.execute("DELETE FROM client_slots WHERE expires < ?", (now,))
        held = conn.execute(
            "SELECT task_id = ? FROM client_slots WHERE client = ?", (task_id, client)
        ).fetchall()
        if not any(row[0] for row in held) and len(held) >= limit:
            return False
        conn.execute(
            "INSERT OR REPLACE INTO client_slots (client, task_id, expires) VALUES (?, ?, ?)",
            (client, task_id, expires),
        )
        return True

    return db.transaction(run)


def release(db: ConnectionPerThread, client: str, task_id: str) -> None:
    def run(conn: sqlite3.Connection) -> None:
        _ensure(conn)
        conn.execute("DELETE FROM client_slots WHERE client = ? AND task_id = ?", (client, task_id))

    db.transaction(run)


def renew(db: ConnectionPerThread, slots: Iterable[tuple[str, str]], expires: float) -> None:
    rows = [(expires, client, task_id) for client, task_id in slots]
    if not rows:
        return

    def run(conn: sqlite3.Connection) -> None:
        _ensure(conn)
        conn.executemany(
            "UPDATE client_slots SET expires = MAX(expires, ?) WHERE client = ? AND task_id = ?",
            rows,
        )

    db.transaction(run)


def count(db: ConnectionPerThread, client: str) -> int:
    def run(conn: sqlite3.Connection) -> int:
        _ensure(conn)
        sql = "SELECT COUNT(*) FROM client_slots WHERE client = ? AND expires >= ?"
        return int(conn.execute(sql, (client, time.time())).fetchone()[0])

    return db.transaction(run)

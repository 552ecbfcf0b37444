"""The memory store at its record cap: what one ``create()`` costs, in-process.

``MemoryStore`` keeps at most ``DEFAULT_MAX_RECORDS`` records (finished results stay for
``result_ttl``). This times ``create()`` (each followed by ``claim`` and ``finish``, as a real
job would) with a few records retained and with the store full.
"""

from __future__ import annotations

import time

from wsgi_deferred.buffers import SpooledBody
from wsgi_deferred.stores.memory import DEFAULT_MAX_RECORDS, MemoryStore
from wsgi_deferred.task import TaskRecord, new_task_id

from .common import median

SAMPLES = 21


def _job(store: MemoryStore) -> float:
    """One task through the store; seconds its ``create()`` took."""
    task_id = new_task_id()
    now = time.time()
    began = time.perf_counter()
    store.create(TaskRecord(id=task_id, lease_expires=now + 30))
    took = time.perf_counter() - began
    store.claim(task_id, now + 30)
    body = SpooledBody()
    body.write(b'{"ok": true}')
    store.finish(task_id, "200 OK", [("Content-Type", "application/json")], body, now + 600)
    return took


def create_cost(retained: int) -> float:
    """Median µs of ``create()`` once *retained* finished results are in the store."""
    store = MemoryStore()
    try:
        for _ in range(min(retained, DEFAULT_MAX_RECORDS)):
            _job(store)
        return median([_job(store) for _ in range(SAMPLES)]) * 1e6
    finally:
        store.close()


def measure() -> list[list[str]]:
    rows = []
    for retained in (1_000, DEFAULT_MAX_RECORDS - SAMPLES - 1, DEFAULT_MAX_RECORDS):
        rows.append([f"{retained:,}", f"{create_cost(retained):,.1f}"])
    return rows

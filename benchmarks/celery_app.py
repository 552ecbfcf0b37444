"""The Celery baseline: the pattern users build by hand today.

A Flask app whose ``POST /job`` queues a Celery task with ``.delay()`` and answers ``202`` +
``Location: /status/<id>``, and whose ``GET /status/<id>`` answers ``200`` with the result
once ``AsyncResult(id).ready()``, else ``202``. Broker and result backend: Redis on
127.0.0.1:6379, database ``BENCH_CELERY_DB`` (10 by default), which the benchmark owns.

Run by the benchmark as ``gunicorn benchmarks.celery_app:app`` plus
``celery -A benchmarks.celery_app worker``.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.result import AsyncResult
from flask import Flask, Response

URL = f"redis://127.0.0.1:6379/{os.environ.get('BENCH_CELERY_DB', '10')}"

celery = Celery("bench", broker=URL, backend=URL)
celery.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=600,  # like wsgi_deferred's result_ttl
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
    task_ignore_result=False,
)


@celery.task(name="bench.instant")
def instant() -> dict[str, bool]:
    return {"ok": True}


app = Flask("celery_bench")


@app.post("/job")
def submit() -> Response:
    result = instant.delay()
    location = f"/status/{result.id}"
    body = f'{{"id": "{result.id}", "status_url": "{location}"}}'
    return Response(body, 202, {"Location": location}, content_type="application/json")


@app.get("/status/<task_id>")
def status(task_id: str) -> Response:
    result = AsyncResult(task_id, app=celery)
    if result.ready():
        if result.successful():
            # Same bytes as the wsgi_deferred job app returns.
            return Response(b'{"ok": true}', 200, content_type="application/json")
        return Response(b'{"state": "failed"}', 500, content_type="application/json")
    return Response(
        b'{"state": "pending"}', 202, {"Location": f"/status/{task_id}", "Retry-After": "1"},
        content_type="application/json",
    )  # fmt: skip

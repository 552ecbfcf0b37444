"""Task ids in log records: ``record.task_id`` on every record we log about a task, and
:class:`TaskIdFilter` adding the current task's id to the application's own records."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.test import Client

from wsgi_deferred import DeferredMiddleware, TaskIdFilter, current_task_id

PATIENCE = 10.0
JSON = {"Accept": "application/json"}
app_logger = logging.getLogger("tests.tasklog.app")


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.formatted: list[str] = []
        self.setFormatter(logging.Formatter("%(task_id)s|%(name)s|%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.formatted.append(self.format(record))


@pytest.fixture
def collect() -> Iterator[Collect]:
    handler = Collect()
    handler.addFilter(TaskIdFilter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in ("wsgi_deferred", "tests.tasklog.app"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_level)


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    path = environ["PATH_INFO"]
    app_logger.info("app working on %s", path)
    environ["wsgi.errors"].write(f"stderr line of {path}\n")
    if path.startswith("/fail"):
        raise RuntimeError("boom")
    if path.startswith("/slow"):
        time.sleep(0.2)  # two of these overlap in two worker threads
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(current_task_id()).encode()]


def final(client: Client, location: str) -> Any:
    deadline = time.monotonic() + PATIENCE
    while True:
        response = client.get(location, headers={**JSON, "Prefer": "wait=5"})
        if response.status_code != 202 or time.monotonic() > deadline:
            return response


def test_library_records_carry_task_id_and_the_filter_tags_app_records(
    collect: Collect,
) -> None:
    deferred = DeferredMiddleware(app, routes=["/slow/<n>", "/fail"], store="memory://", workers=2)
    client = Client(deferred)
    try:
        locations = {}
        for path in ("/slow/1", "/slow/2", "/fail"):
            accepted = client.post(path, headers=JSON)
            assert accepted.status_code == 202
            locations[path] = accepted.headers["Location"]
        ids = {path: loc.rsplit("/", 1)[1] for path, loc in locations.items()}
        for path in ("/slow/1", "/slow/2"):
            response = final(client, locations[path])
            assert response.data == ids[path].encode()  # current_task_id() inside the replay
        assert final(client, locations["/fail"]).status_code == 500
        client.delete(locations["/slow/1"])
        app_logger.info("outside any task")
    finally:
        deferred.close(5)

    ours = [r for r in collect.records if r.name == "wsgi_deferred"]
    about_tasks = [r for r in ours if r.getMessage().startswith("task ")]
    assert len(about_tasks) >= 9, [r.getMessage() for r in ours]  # deferred/started/end x3
    for record in about_tasks:
        task_id = record.getMessage().split()[1].rstrip(":")
        assert record.__dict__["task_id"] == task_id, record.getMessage()
    for path, task_id in ids.items():
        app_lines = [
            f for f in collect.formatted if f"|tests.tasklog.app|app working on {path}" in f
        ]
        assert app_lines == [f"{task_id}|tests.tasklog.app|app working on {path}"]
        errors = [r for r in collect.records if r.getMessage().endswith(f"stderr line of {path}")]
        assert len(errors) == 1 and errors[0].__dict__["task_id"] == task_id
    assert "-|tests.tasklog.app|outside any task" in collect.formatted
    assert current_task_id() is None


def test_filter_keeps_records_and_explicit_ids() -> None:
    task_filter = TaskIdFilter(default="none")
    plain = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    assert task_filter.filter(plain) is True and plain.__dict__["task_id"] == "none"
    tagged = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    tagged.task_id = "abc"
    assert task_filter.filter(tagged) is True and tagged.__dict__["task_id"] == "abc"

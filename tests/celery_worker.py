"""A real ``wsgi-deferred worker`` (a prefork Celery worker, or RQ workers) in a subprocess,
and the RabbitMQ broker the tests use.

* :class:`TierWorker` starts ``python -m wsgi_deferred.cli worker APP`` in its own session,
  waits for Celery's ``ready.`` line, and stops it (and its pool children) by its PID.
* :func:`rabbitmq_url` is ``$RABBITMQ_URL`` or ``amqp://guest:guest@127.0.0.1:5672//``; when
  nothing answers the test is skipped, unless ``WSGI_DEFERRED_REQUIRE_RABBITMQ=1`` (CI), which
  makes it a failure, so the Celery tests can never silently vanish.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
#: Seconds a worker gets to say it is ready.
READY_TIMEOUT = 40.0


def rabbitmq_url() -> str:
    url = os.environ.get("RABBITMQ_URL") or DEFAULT_RABBITMQ
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2):
            pass
    except OSError:
        reason = f"no RabbitMQ answers at {parts.hostname}:{parts.port} (set RABBITMQ_URL)"
        if os.environ.get("WSGI_DEFERRED_REQUIRE_RABBITMQ") == "1":
            pytest.fail(f"{reason} (and WSGI_DEFERRED_REQUIRE_RABBITMQ=1)", pytrace=False)
        pytest.skip(reason)
    return url


def delete_queue(broker: str, queue: str) -> None:
    """Delete a test's own queue (absent queues are fine): RabbitMQ is shared, so every test
    uses a queue of its own, which no other run can consume from."""
    import kombu

    with kombu.Connection(broker, connect_timeout=5) as conn:
        try:
            conn.default_channel.queue_delete(queue)
        except Exception:  # never declared: nothing to delete
            pass


class TierWorker:
    """``wsgi-deferred worker APP`` with *concurrency* pool children."""

    def __init__(
        self,
        target: str,
        env: Mapping[str, str],
        log_path: Path,
        concurrency: int = 2,
        extra_args: tuple[str, ...] = (),
        ready: str = "ready.",
    ) -> None:
        self.target, self.env, self.log_path = target, dict(env), log_path
        self.concurrency, self.extra_args = concurrency, extra_args
        #: The log line that says the engine consumes (Celery: "ready.", RQ: "Listening on").
        self.ready = ready
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> TierWorker:
        env = dict(os.environ)
        env.update(self.env)
        env["PYTHONPATH"] = os.pathsep.join(
            [self.env.get("PYTHONPATH", ""), str(ROOT), str(ROOT / "tests")]
        )
        # A temp dir of its own, beside its log: a worker killed with SIGKILL cannot remove
        # what multiprocessing made there (pymp-*), and the test's $TMPDIR must stay clean.
        own_tmp = self.log_path.with_suffix(".tmp")
        own_tmp.mkdir(exist_ok=True)
        env["TMPDIR"] = str(own_tmp)
        command = [
            sys.executable, "-m", "wsgi_deferred.cli", "worker", self.target,
            "--concurrency", str(self.concurrency), "--log-level", "info", *self.extra_args,
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + READY_TIMEOUT
        while self.log().count(self.ready) < (self.concurrency if "Listening" in self.ready else 1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the worker did not start:\n{self.log()[-4000:]}")
            time.sleep(0.1)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def children(self) -> list[int]:
        """Pids of every descendant (pool children, and RQ's work horses below them)."""
        found, todo = [], [self.pid]
        while todo and len(found) < 100:
            parent = todo.pop()
            out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True)
            kids = [int(p) for p in out.stdout.split()]
            found += kids
            todo += kids
        return found

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill_all(self) -> None:
        """SIGKILL of the worker and its children at once: the host died."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.process.wait(10)
        # Pool children left behind by a killed parent share its process group.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> TierWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

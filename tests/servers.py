"""Real servers for end-to-end tests: gunicorn in a subprocess on an ephemeral 127.0.0.1 port.

Usage::

    with Gunicorn("examples.flask_app:app", workers=1, threads=8) as server:
        response = server.request("GET", "/hello")
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: Seconds a server gets to start answering before the test fails.
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    header_list: list[tuple[str, str]]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


@dataclass
class Gunicorn:
    """A gunicorn master process serving *target*; a context manager that always stops it."""

    target: str
    workers: int = 1
    threads: int = 1
    extra_args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path = ROOT
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    #: Set when :meth:`stop` had to SIGKILL a server that ignored *sig*.
    escalated: bool = False

    def start(self) -> Gunicorn:
        env = dict(os.environ)
        env.update(self.env)
        env["PYTHONPATH"] = os.pathsep.join(
            [
                self.env.get("PYTHONPATH", ""),
                str(ROOT),
                str(ROOT / "tests"),
                os.environ.get("PYTHONPATH", ""),
            ]
        )
        command = self.command()
        log_dir = Path(os.environ.get("WSGI_DEFERRED_TEST_LOGS", "/tmp"))
        self.log_path = log_dir / f"{self.name}-{self.port}.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the subprocess
        self.process = subprocess.Popen(
            command, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()  # a server that never became ready is not left running
            raise
        return self

    #: The server's name in log file names and messages.
    name = "gunicorn"

    def command(self) -> list[str]:
        """The server's command line (other servers override it: tests/e2e/wsgi_servers.py)."""
        return [
            sys.executable, "-m", "gunicorn",
            "--bind", f"127.0.0.1:{self.port}",
            "--workers", str(self.workers),
            "--threads", str(self.threads),
            "--graceful-timeout", "10",
            "--log-level", "info",
            *self.extra_args,
            self.target,
        ]  # fmt: skip

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            if len(self.worker_pids()) >= self.workers:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start within {START_TIMEOUT}s:\n{self.log()}")

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-5000:]

    def worker_pids(self) -> list[int]:
        """Pids of the gunicorn workers (children of the master)."""
        assert self.process is not None
        out = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True
        ).stdout
        return [int(pid) for pid in out.split()]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            self.escalated = True
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(5)

    def __enter__(self) -> Gunicorn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> Response:
        return http_request(self.port, method, path, body, headers, timeout)


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> Response:
    """One HTTP/1.1 request to 127.0.0.1:*port* on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        raw = conn.getresponse()
        data = raw.read()
        header_list = raw.getheaders()
        return Response(raw.status, {k.lower(): v for k, v in header_list}, header_list, data)
    finally:
        conn.close()


def fetch_result(
    port: int, location: str, timeout: float = 60.0, headers: Mapping[str, str] | None = None
) -> Response:
    """Long-poll *location* until it stops answering 202; bounded by *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        response = http_request(
            port, "GET", location, headers={"Prefer": "wait=10", **(headers or {})}
        )
        if response.status != 202:
            return response
        if time.monotonic() > deadline:
            raise AssertionError(f"{location} still 202 after {timeout}s")


def submit(server: Any, path: str, body: bytes = b"") -> str:
    """POST *path* to a deferred route of *server*; the status URL of its ``202``."""
    accepted = server.request("POST", path, body)
    assert accepted.status == 202, accepted.body
    return str(accepted.headers["location"])


def running_pid(server: Any, location: str, timeout: float = 20.0) -> int:
    """The pid of the process running the task, as the test apps report it in their
    progress message (``pid=N``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        document = server.request("GET", location).json()
        message = document.get("message") or ""
        if message.startswith("pid="):
            return int(message[4:])
        time.sleep(0.05)
    log = server.log() if hasattr(server, "log") else ""
    raise AssertionError(f"{location} never reported running:\n{log}")

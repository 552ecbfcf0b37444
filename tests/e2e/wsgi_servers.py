"""Every common WSGI server as a subprocess on an ephemeral 127.0.0.1 port, each a
:class:`servers.Gunicorn` with its own command line, worker list and graceful stop.

``SERVERS`` names them for parametrised tests. A server that is not installed skips its tests,
except where ``WSGI_DEFERRED_REQUIRE_SERVERS=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import Gunicorn, free_port

#: Seconds a server gets to exit after a graceful stop before the test fails.
STOP_TIMEOUT = 30.0


class GunicornServer(Gunicorn):
    """gunicorn with a worker class (sync, gthread, gevent)."""

    #: Whether a worker that exits is replaced by the server itself.
    respawns = True
    #: Whether the server keeps HTTP/1.1 connections open between requests. gunicorn's sync
    #: worker never does: "each connection is closed after response has been sent" (gunicorn
    #: docs, "Design: Sync Workers"), with or without this middleware.
    keeps_alive = True

    def graceful_stop(self, pid: int) -> None:
        """Ask one worker to finish its requests and exit (gunicorn: SIGTERM to the worker)."""
        os.kill(pid, signal.SIGTERM)

    def restart(self) -> None:
        """Start the server again on a new port (after it stopped or was killed)."""
        self.stop()
        self.port = free_port()
        self.start()


class SyncGunicorn(GunicornServer):
    keeps_alive = False


def uwsgi_binary() -> str:
    return str(Path(sys.executable).with_name("uwsgi"))


class UWSGI(GunicornServer):
    """uWSGI: a master, *workers* worker processes and the HTTP router in front of them.

    ``--http-keepalive``: without it the router closes every connection after one response,
    whatever the client asked (HTTP/1.1 keep-alive is the default, RFC 9112 §9.3).
    ``--enable-threads``: the worker pool's threads never run on builds where it is off
    (a stub, always on, in uWSGI 2.0.31). Not ``--py-call-osafterfork``: on Python 3.13 it
    kills every worker at fork (uWSGI issue 2710). uWSGI handles its stop signals in C on
    whichever thread they reach, so our threads block them (wsgi_deferred/background.py);
    before that a worker hung at exit about one time in five. ``--die-on-term``:
    SIGTERM ends the master (its default is a "brutal reload"). ``--auto-procname`` names the
    processes, so the workers can be told from the router.
    """

    name = "uwsgi"

    def command(self) -> list[str]:
        module, _, attribute = self.target.partition(":")
        paths = [p for p in self.env.get("PYTHONPATH", "").split(os.pathsep) if p]
        return [
            uwsgi_binary(),
            "--http", f"127.0.0.1:{self.port}",
            "--http-keepalive",
            "--http-auto-chunked",
            "--master",
            "--processes", str(self.workers),
            "--threads", str(self.threads),
            "--enable-threads",
            "--die-on-term",
            "--need-app",
            "--auto-procname",
            "--home", sys.prefix,
            *(arg for path in paths for arg in ("--pythonpath", path)),
            "--module", f"{module}:{attribute or 'application'}",
            *self.extra_args,
        ]  # fmt: skip

    def worker_pids(self) -> list[int]:
        pids = []
        for pid in super().worker_pids():
            try:
                name = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if name.startswith(b"uWSGI worker"):
                pids.append(pid)
        return pids

    def graceful_stop(self, pid: int) -> None:
        # uWSGI: SIGHUP to a worker is its graceful reload (finish the request, run the
        # atexit hooks, exit; the master forks a new one).
        os.kill(pid, signal.SIGHUP)


class Waitress(GunicornServer):
    """waitress: one process, *threads* threads; nothing restarts it."""

    name = "waitress"
    respawns = False

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "waitress",
            f"--listen=127.0.0.1:{self.port}",
            f"--threads={self.threads}",
            *self.extra_args,
            self.target,
        ]  # fmt: skip

    def worker_pids(self) -> list[int]:
        if self.process is None or self.process.poll() is not None:
            return []
        return [self.process.pid]

    def graceful_stop(self, pid: int) -> None:
        # waitress ends its loop on KeyboardInterrupt (SIGINT); the interpreter then exits
        # normally, which runs the atexit drain.
        os.kill(pid, signal.SIGINT)
        assert self.process is not None
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"waitress did not stop on SIGINT:\n{self.log()}") from exc


@dataclass(frozen=True)
class ServerKind:
    """One way to serve an app, and what it needs installed."""

    name: str
    make: Callable[[str, Mapping[str, str]], GunicornServer]
    #: Why it cannot run here, or None when it can.
    missing: Callable[[], str | None]


def _module_missing(module: str) -> Callable[[], str | None]:
    def missing() -> str | None:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[test]')"
        return None

    return missing


def _uwsgi_missing() -> str | None:
    # This interpreter's own build: a uWSGI on the PATH embeds some other Python.
    if not Path(uwsgi_binary()).exists():
        return (
            "uwsgi is not installed (pip install -e '.[test-uwsgi]' compiles it: a C compiler "
            "and the Python headers)"
        )
    return None


SERVERS: dict[str, ServerKind] = {
    kind.name: kind
    for kind in (
        ServerKind(
            "gunicorn-sync",
            lambda target, env: SyncGunicorn(target, workers=2, threads=1, env=env),
            _module_missing("gunicorn"),
        ),
        ServerKind(
            "gunicorn-gthread",
            lambda target, env: GunicornServer(target, workers=2, threads=4, env=env),
            _module_missing("gunicorn"),
        ),
        ServerKind(
            "gunicorn-gevent",
            lambda target, env: GunicornServer(
                target,
                workers=2,
                extra_args=["--worker-class", "gevent", "--worker-connections", "100"],
                env=env,
            ),
            _module_missing("gevent"),
        ),
        ServerKind(
            "uwsgi",
            lambda target, env: UWSGI(target, workers=2, threads=4, env=env),
            _uwsgi_missing,
        ),
        ServerKind(
            "waitress",
            lambda target, env: Waitress(target, workers=1, threads=8, env=env),
            _module_missing("waitress"),
        ),
    )
}


def server_for(name: str, target: str, env: Mapping[str, str]) -> GunicornServer:
    """The server *name* for *target*, or a skip (a failure under
    ``WSGI_DEFERRED_REQUIRE_SERVERS=1``) when it is not installed."""
    kind = SERVERS[name]
    reason = kind.missing()
    if reason is not None:
        if os.environ.get("WSGI_DEFERRED_REQUIRE_SERVERS") == "1":
            pytest.fail(f"{name}: {reason} (WSGI_DEFERRED_REQUIRE_SERVERS=1)")
        pytest.skip(f"{name}: {reason}")
    return kind.make(target, env)


def wait_exited(pid: int, timeout: float = STOP_TIMEOUT) -> None:
    """Wait until process *pid* (not our child) is gone."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except OSError:
            return
        if state == "Z":
            return  # exited; its parent (the server's master) has yet to reap it
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} still running after {timeout}s")
        time.sleep(0.05)

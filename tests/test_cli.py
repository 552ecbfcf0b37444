"""The ``wsgi-deferred`` console script, run for real in subprocesses, and gunicorn's factory
form ``gunicorn 'wsgi_deferred:wrap(...)'``.

The application is a "legacy" plain-WSGI package written to a temporary directory, served the
way an operator would: ``cd`` there and ``wsgi-deferred serve legacy.wsgi:application``. Every
server runs on an ephemeral 127.0.0.1 port and is killed (its whole process group) in
teardown; every wait is bounded.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import ROOT, Gunicorn, fetch_result

from wsgi_deferred.config import OPTIONS

pytestmark = pytest.mark.e2e

#: The console script pip installed next to this interpreter (``pip install -e .``).
SCRIPT = Path(sys.executable).with_name("wsgi-deferred")
#: Seconds a command that does not serve may take.
COMMAND_TIMEOUT = 60
JSON = {"Accept": "application/json"}

LEGACY_WSGI = '''\
"""A WSGI app from 2009 that has never heard of wsgi_deferred."""
import json
import os
import time


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path.startswith("/render/"):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length).decode()
        progress = environ.get("wsgi_deferred.progress")  # only there when deferred
        for step in range(4):
            time.sleep(float(os.environ.get("LEGACY_STEP_SECONDS", "0.15")))
            if progress is not None:
                progress((step + 1) / 4, "part %d of 4" % (step + 1))
        out = json.dumps({"rendered": path[8:], "body": body, "pid": os.getpid()}).encode()
        ctype = "application/json"
    else:
        out = ("hello from legacy " + path).encode()
        ctype = "text/plain"
    start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(out)))])
    return [out]
'''


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the ``legacy`` package, and a module that fails to import."""
    root = tmp_path_factory.mktemp("site")
    (root / "legacy").mkdir()
    (root / "legacy" / "__init__.py").write_text("")
    (root / "legacy" / "wsgi.py").write_text(LEGACY_WSGI)
    (root / "broken.py").write_text('raise RuntimeError("DATABASE_URL is not set")\n')
    return root


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without WSGI_DEFERRED_* options or PYTHONPATH (the app must be
    found through the working directory, as an operator's would)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for option in OPTIONS:
        env.pop(option.env, None)
    env.update(extra or {})
    return env


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.exists(), f"{SCRIPT} is missing: run `{sys.executable} -m pip install -e .`"
    return subprocess.run(
        [str(SCRIPT), *args],
        cwd=cwd,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


@dataclass
class CLIServer(Gunicorn):
    """``wsgi-deferred serve TARGET --bind 127.0.0.1:PORT --workers W --threads T ARGS...``."""

    def start(self) -> CLIServer:
        assert SCRIPT.exists(), f"{SCRIPT} is missing: run `{sys.executable} -m pip install -e .`"
        command = [
            str(SCRIPT), "serve", self.target,
            "--bind", f"127.0.0.1:{self.port}",
            "--workers", str(self.workers),
            "--threads", str(self.threads),
            *self.extra_args,
        ]  # fmt: skip
        log_dir = Path(os.environ.get("WSGI_DEFERRED_TEST_LOGS", "/tmp"))
        self.log_path = log_dir / f"wsgi-deferred-cli-{self.port}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=self.cwd, env=clean_env(dict(self.env)), stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.wait_ready()
        return self


def submit(server: Gunicorn, path: str, body: bytes = b"", headers: dict[str, str] | None = None):
    started = time.monotonic()
    accepted = server.request("POST", path, body, {**JSON, **(headers or {})})
    assert accepted.status == 202, (accepted.status, accepted.body, server.log())
    assert time.monotonic() - started < 0.5, "the 202 must not wait for the work"
    return accepted


# -- help, version, usage errors ----------------------------------------------------------------


def test_top_level_help_and_version(app_dir: Path) -> None:
    helped = run("--help", cwd=app_dir)
    assert helped.returncode == 0
    for text in (
        "usage: wsgi-deferred {serve,check,tasks,worker}",
        "202 Accepted",
        "serve ",
        "tasks ",
        "worker ",
    ):
        assert text in helped.stdout
    version = run("--version", cwd=app_dir)
    assert (version.returncode, version.stdout.strip()) == (0, "wsgi-deferred 0.1.0")


def test_serve_help_reads_like_a_manual(app_dir: Path) -> None:
    helped = run("serve", "--help", cwd=app_dir)
    assert helped.returncode == 0, helped.stderr
    text = helped.stdout
    for heading in (
        "usage: wsgi-deferred serve TARGET",
        "middleware options:",
        "server options (gunicorn):",
        "rules:",
        "environment:",
        "exit status:",
        "examples:",
    ):
        assert heading in text, heading
    flags = ["--route", "--exclude", "--no-prefer", "--workers", "--threads", "--bind"]
    flags += ["--store", "--pool-workers", "--max-pending", "--defer-after", "--status-path"]
    flags += ["--result-ttl", "--max-body", "--lease-timeout", "--bind-to", "--metrics-path"]
    flags += ["--max-pending-per-client", "--max-wait", "--drain-timeout"]
    for flag in flags:
        # Listed as an option, after its short form if it has one: "-b ADDRESS, --bind" up to
        # Python 3.12, "-b, --bind ADDRESS" from 3.13 (argparse shows the metavar once).
        assert re.search(rf"^\s+(-\w( \S+)?, )?{flag}\b", text, re.M), flag
    for option in OPTIONS:  # every variable is named next to its flag
        assert option.env in text, option.env
    # The distinction operators trip over is spelled out.
    assert "--workers is the number of worker processes" in text
    assert "--pool-workers" in text and "background threads" in text


def test_check_help(app_dir: Path) -> None:
    helped = run("check", "--help", cwd=app_dir)
    assert helped.returncode == 0
    assert "usage: wsgi-deferred check [TARGET]" in helped.stdout
    assert "examples:" in helped.stdout and "exit status:" in helped.stdout


APP = "legacy.wsgi:application"
USAGE_ERRORS = [
    (["serve", "nosuch.wsgi:application"], {},
     "cannot import 'nosuch.wsgi:application': No module named 'nosuch'"),
    (["serve", "legacy.wsgi:app"], {}, "module 'legacy.wsgi' has no attribute 'app'"),
    (["serve", "legacy.wsgi:app", "--preload"], {}, "has no attribute 'app'"),
    (["serve", "broken:app"], {}, "RuntimeError: DATABASE_URL is not set ("),
    (["serve", APP, "--frobnicate"], {}, "unrecognized arguments: --frobnicate"),
    (["serve", APP, "--route", "POST render/<id>"], {},
     "argument --route: route rule 'POST render/<id>': the path must start with '/'"),
    (["serve", APP, "--route", "/x/<nosuch:y>"], {},
     "argument --route: route rule '/x/<nosuch:y>'"),
    (["serve", APP, "--pool-workers", "0"], {}, "argument --pool-workers: must be at least 1"),
    (["serve", APP, "--workers", "many"], {}, "argument -w/--workers: expected a whole number"),
    (["serve", APP, "--store", "mysql://db"], {}, "argument --store: expected a store URL"),
    (["serve", APP, "--bind", "localhost:http-ish"], {}, "argument -b/--bind:"),
    (["serve", APP, "--metrics-path", "/status/m"], {},
     "metrics_path must start with '/' and lie outside status_path"),
    (["serve", APP], {"WSGI_DEFERRED_ROUTES": "POST render"},
     "WSGI_DEFERRED_ROUTES='POST render':"),
    (["serve", APP], {"WSGI_DEFERRED_MAX_PENDING": "lots"},
     "WSGI_DEFERRED_MAX_PENDING='lots': expected a whole number"),
    (["serve"], {}, "the following arguments are required: TARGET"),
    (["serve", APP, "--chdir", "/nonexistent/dir"], {},
     "--chdir '/nonexistent/dir': No such file or directory"),
    (["frob"], {}, "unknown command 'frob': expected serve, check, tasks or worker"),
    ([], {}, "a command is needed: serve, check, tasks or worker"),
    (["check", "--route", "POST /r/<id>", "GET"], {},
     "sample request 'GET': expected '[METHOD] PATH'"),
    (["check", "--route", "POST /r/<id>", "POST /a b c"], {}, "sample request 'POST /a b c'"),
    (["check", "nosuch:app", "/x"], {}, "cannot import 'nosuch:app'"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "env", "message"), USAGE_ERRORS, ids=lambda v: str(v)[:40])
def test_usage_errors_exit_2_with_one_line(
    app_dir: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    result = run(*args, cwd=app_dir, env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("wsgi-deferred"), lines[0]
    assert message in lines[0]
    assert result.stdout == ""


# -- check ------------------------------------------------------------------------------------


def test_check_shows_each_verdict_and_why(app_dir: Path) -> None:
    result = run(
        "check", "legacy.wsgi:application",
        "--route", "POST /render/<id>", "--exclude", "GET /health",
        "--metrics-path", "/_metrics",
        "POST /render/1", "GET /render/1", "GET /health", "/hello",
        "GET /status/0123456789abcdefghijkl", "GET /status/report",
        "GET /hello Prefer: respond-async", "/_metrics",
        cwd=app_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "legacy.wsgi:application: imports, and is callable"
    assert lines[1] == "routes: POST /render/<id>  exclude: GET /health  defer-after: off"
    verdicts = {re.split(r"\s{2,}", line)[0]: re.split(r"\s{2,}", line)[1:] for line in lines[2:]}
    assert verdicts["POST /render/1"] == ["deferred", "matches route 'POST /render/<id>'"]
    assert verdicts["GET /render/1"][0] == "passed through"
    assert "has this path but not the method GET" in verdicts["GET /render/1"][1]
    assert verdicts["GET /health"] == ["passed through", "excluded by 'GET /health'"]
    assert verdicts["/hello"] == ["passed through", "no route matches"]
    assert verdicts["GET /status/0123456789abcdefghijkl"][0] == "status"
    assert verdicts["GET /status/report"][0] == "passed through"
    assert "not a task id" in verdicts["GET /status/report"][1]
    assert verdicts["GET /hello Prefer: respond-async"][0] == "deferred"
    assert verdicts["/_metrics"][0] == "metrics"


def test_check_reads_the_environment_and_defer_after(app_dir: Path) -> None:
    env = {
        "WSGI_DEFERRED_ROUTES": "POST /render/<id>; GET,POST /export",
        "WSGI_DEFERRED_DEFER_AFTER": "20",
    }
    result = run(
        "check", "--exclude", "GET /health", "--workers", "4",  # server flags are ignored
        "POST /export", "GET /slow?x=1", "/health", cwd=app_dir, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "routes: POST /render/<id>; GET,POST /export" in out
    assert re.search(r"^POST /export\s+deferred\s+matches route 'GET,POST /export'", out, re.M)
    assert re.search(r"^GET /slow\?x=1\s+deferred if slow\s+.*within 20 s", out, re.M)
    assert re.search(r"^/health\s+passed through\s+excluded by 'GET /health'", out, re.M)


# -- serve ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(app_dir: Path) -> Iterator[CLIServer]:
    server = CLIServer(
        "legacy.wsgi:application",
        workers=1,
        threads=4,
        cwd=app_dir,
        extra_args=[
            "--route", "POST /render/<id>",
            "--exclude", "POST /render/inline",
            "--metrics-path", "/_metrics",
        ],
    )  # fmt: skip
    with server:
        yield server


def test_serve_defers_the_route_and_serves_the_result(served: CLIServer) -> None:
    accepted = submit(served, "/render/42", b"payload")
    location = accepted.headers["location"]
    assert re.fullmatch(r"/status/[A-Za-z0-9_-]{22}", location)
    assert accepted.json()["state"] in ("queued", "running")  # type: ignore[index]
    seen = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        poll = served.request("GET", location, headers=JSON)
        if poll.status != 202:
            break
        seen = poll.json()["progress"] or seen  # type: ignore[index]
        time.sleep(0.05)
    assert seen is not None and 0 < seen <= 1, "the app's progress shows on the status URL"
    result = fetch_result(served.port, location, timeout=20)
    assert result.status == 200
    assert result.json()["rendered"] == "42" and result.json()["body"] == "payload"  # type: ignore[index]


def test_serve_passes_other_requests_through(served: CLIServer) -> None:
    hello = served.request("GET", "/hello")
    assert (hello.status, hello.body) == (200, b"hello from legacy /hello")
    inline = served.request("POST", "/render/inline", b"x", JSON)  # excluded
    assert inline.status == 200 and inline.json()["rendered"] == "inline"  # type: ignore[index]
    other_method = served.request("GET", "/render/5")
    assert other_method.status == 200


def test_serve_exposes_metrics_and_logs_task_ids(served: CLIServer) -> None:
    accepted = submit(served, "/render/7")
    task_id = accepted.headers["location"].rsplit("/", 1)[1]
    assert fetch_result(served.port, accepted.headers["location"]).status == 200
    metrics = served.request("GET", "/_metrics")
    assert metrics.status == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    done = re.search(
        rb'^wsgi_deferred_tasks_finished_total\{state="done"\} ([\d.]+)$', metrics.body, re.M
    )
    assert done and float(done.group(1)) >= 1  # prometheus_client writes "1.0"
    deadline = time.monotonic() + 10
    while f"task {task_id}: done" not in served.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = served.log()
    assert f"task {task_id}: deferred POST /render/7" in log
    assert f"task {task_id}: done" in log


def test_sigterm_stops_cleanly(app_dir: Path) -> None:
    with CLIServer(
        "legacy.wsgi:application", cwd=app_dir, extra_args=["--route", "/render/<id>"]
    ) as server:
        accepted = submit(server, "/render/1")
        assert fetch_result(server.port, accepted.headers["location"]).status == 200
        assert server.process is not None
        os.killpg(server.process.pid, signal.SIGTERM)
        assert server.process.wait(20) == 0
        assert "Shutting down: Master" in server.log()


@pytest.mark.parametrize(
    ("flags", "env"),
    [
        (["--pool-workers", "1", "--route", "POST /render/<id>"], {}),
        ([], {"WSGI_DEFERRED_WORKERS": "1", "WSGI_DEFERRED_ROUTES": "POST /render/<id>"}),
    ],
    ids=["flags", "environment"],
)
def test_pool_workers_are_background_threads_not_processes(
    app_dir: Path, flags: list[str], env: dict[str, str]
) -> None:
    """One background thread: a second task queues behind the first, in one process."""
    server = CLIServer(
        "legacy.wsgi:application", workers=1, threads=4, cwd=app_dir, extra_args=flags,
        env={"LEGACY_STEP_SECONDS": "0.25", **env},
    )  # fmt: skip
    with server:
        assert len(server.worker_pids()) == 1
        first = submit(server, "/render/1")
        second = submit(server, "/render/2")
        time.sleep(0.2)
        poll = server.request("GET", second.headers["location"], headers=JSON)
        assert poll.status == 202 and poll.json()["state"] == "queued"  # type: ignore[index]
        for accepted in (first, second):
            assert fetch_result(server.port, accepted.headers["location"]).status == 200


def test_flags_win_over_the_environment(app_dir: Path) -> None:
    env = {"WSGI_DEFERRED_ROUTES": "POST /render/<id>", "WSGI_DEFERRED_STATUS_PATH": "/jobs/"}
    with CLIServer(
        "legacy.wsgi:application", cwd=app_dir, env=env, extra_args=["--status-path", "/tasks/"]
    ) as server:
        location = submit(server, "/render/3").headers["location"]
        assert location.startswith("/tasks/")
        assert fetch_result(server.port, location).json()["rendered"] == "3"  # type: ignore[index]


def test_several_worker_processes_share_a_store(app_dir: Path, tmp_path: Path) -> None:
    """--workers 3 is three gunicorn processes; status polls land on any of them."""
    store = f"sqlite://{tmp_path}/tasks.db"
    args = ["--route", "POST /render/<id>", "--store", store]
    with CLIServer(
        "legacy.wsgi:application", workers=3, threads=2, cwd=app_dir, extra_args=args
    ) as server:
        deadline = time.monotonic() + 20
        while len(server.worker_pids()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(server.worker_pids()) == 3
        accepted = [submit(server, f"/render/{n}") for n in range(9)]
        results = [fetch_result(server.port, a.headers["location"]) for a in accepted]
        assert [r.json()["rendered"] for r in results] == [str(n) for n in range(9)]  # type: ignore[index]
        assert (tmp_path / "tasks.db").exists()


def test_serve_an_example_from_another_directory() -> None:
    """The Flask example (which defers its own /render route) behind the command, which
    defers GET /hello on top; --chdir finds the module. Two middlewares in one stack need
    two status paths: the outer one would answer the inner one's status URLs (404)."""
    server = CLIServer(
        "flask_app:app", cwd=ROOT, threads=4, env={"EXAMPLE_WORK_SECONDS": "0.5"},
        extra_args=["--chdir", "examples", "--route", "GET /hello", "--status-path", "/outer/"],
    )  # fmt: skip
    with server:
        hello = server.request("GET", "/hello", headers=JSON)
        assert hello.status == 202 and hello.headers["location"].startswith("/outer/")
        assert fetch_result(server.port, hello.headers["location"]).body == b"hello"
        body = b'{"text_list": ["a", "b"]}'
        render = submit(server, "/render/5", body, {"Content-Type": "application/json"})
        assert render.headers["location"].startswith("/status/")  # the example's own
        result = fetch_result(server.port, render.headers["location"])
        assert result.json() == {"id": 5, "rendered": ["A", "B"]}


# -- gunicorn's factory form --------------------------------------------------------------------


def _no_control_socket() -> list[str]:
    from gunicorn.config import KNOWN_SETTINGS

    names = {setting.name for setting in KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket_disable" in names else []


@pytest.mark.parametrize("workers", [1, 2])
def test_gunicorn_factory_form(app_dir: Path, workers: int) -> None:
    target = 'wsgi_deferred:wrap("legacy.wsgi:application", routes=["POST /render/<id>"])'
    server = Gunicorn(
        target, workers=workers, threads=4, cwd=app_dir,
        env={"WSGI_DEFERRED_STATUS_PATH": "/jobs/", "WSGI_DEFERRED_RESULT_TTL": "60"},
        extra_args=_no_control_socket(),
    )  # fmt: skip
    with server:
        assert server.request("GET", "/hello").body == b"hello from legacy /hello"
        accepted = submit(server, "/render/8", b"factory")
        location = accepted.headers["location"]
        assert location.startswith("/jobs/"), "wrap() read WSGI_DEFERRED_STATUS_PATH"
        result = fetch_result(server.port, location)
        assert result.status == 200
        assert result.json()["body"] == "factory"  # type: ignore[index]


def test_gunicorn_factory_form_with_a_bad_variable_does_not_boot(app_dir: Path) -> None:
    target = 'wsgi_deferred:wrap("legacy.wsgi:application")'
    env = clean_env({"WSGI_DEFERRED_WORKERS": "zero"})
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        "127.0.0.1:0",
        *_no_control_socket(),
        target,
    ]
    result = subprocess.run(
        command, cwd=app_dir, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
        check=False, start_new_session=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert "WSGI_DEFERRED_WORKERS='zero': expected a whole number" in result.stderr

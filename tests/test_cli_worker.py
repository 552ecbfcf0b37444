"""``wsgi-deferred worker APP``: its usage errors (one line, exit status 2), run for real.

The worker's real work (a prefork Celery worker replaying tasks) is tested end to end in
``tests/e2e/test_tier.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("wsgi-deferred")
TIMEOUT = 60  # seconds a failing command may take

APPS = """\
from wsgi_deferred import DeferredMiddleware

def plain(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hi"]

in_threads = DeferredMiddleware(plain, routes=["POST /x"], store="sqlite:///{db}")
"""
#: An APP whose own import fails: the middleware refuses a remote executor on a private store.
IN_MEMORY = """\
from wsgi_deferred import DeferredMiddleware
from apps import plain

in_memory = DeferredMiddleware(
    plain, routes=["POST /x"], store="memory://", executor="celery+amqp://guest@127.0.0.1//"
)
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "apps.py").write_text(APPS.format(db=tmp_path / "t.db"))
    (tmp_path / "memory_apps.py").write_text(IN_MEMORY)
    (tmp_path / "broken_module.py").write_text("raise RuntimeError('no config here')\n")
    return tmp_path


def run(app_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(app_dir)}
    return subprocess.run(
        [str(SCRIPT), "worker", *args], cwd=app_dir, env=env, capture_output=True,
        text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["broken_module:app"], "cannot import 'broken_module:app': RuntimeError: no config here"),
        (["missing_module:app"], "cannot import 'missing_module:app'"),
        (["apps:plain"], "names no shared store"),
        (["apps:plain", "--store", "memory://"], "names no shared store"),
        (["memory_apps:in_memory"], "needs a shared store"),  # the middleware refuses it itself
        (["apps:plain", "--executor", "celery+amqp://guest@127.0.0.1//"], "needs a shared store"),
        (["apps:in_threads"], "runs its tasks in the web process"),
        (["apps:plain", "--store", "sqlite:///t2.db"], "runs its tasks in the web process"),
        (["apps:plain", "--executor", "frob+x://y"], "--executor"),
    ],
)
def test_worker_usage_errors_are_one_line_and_exit_2(
    app_dir: Path, args: list[str], expected: str
) -> None:
    result = run(app_dir, *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert lines[0].startswith("wsgi-deferred worker: error: ")


def test_worker_help(app_dir: Path) -> None:
    result = run(app_dir, "--help")
    assert result.returncode == 0
    for text in ("--concurrency", "--store", "--executor", "--retry", "shared"):
        assert text in result.stdout

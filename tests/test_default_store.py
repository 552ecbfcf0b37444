"""``store=None``: memory for one process, a per-deployment SQLite file for several."""

from __future__ import annotations

import os
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.test import Client

from wsgi_deferred import DeferredMiddleware
from wsgi_deferred.buffers import SpooledBody
from wsgi_deferred.errors import ConfigurationError
from wsgi_deferred.stores import default_store_url
from wsgi_deferred.stores.memory import MemoryStore
from wsgi_deferred.stores.sqlite import INLINE_BODY_MAX_BYTES, SQLiteStore
from wsgi_deferred.task import TaskRecord, new_task_id


def hello(environ, start_response):  # type: ignore[no-untyped-def]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hi"]


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    yield tmp_path


def make() -> tuple[DeferredMiddleware, Client]:
    mw = DeferredMiddleware(hello, routes=["/slow"])
    return mw, Client(mw, use_cookies=False)


@pytest.mark.parametrize("first", ["status", "submit"])
def test_multiprocess_server_gets_sqlite_whatever_the_first_request(
    private_tmp: Path, first: str
) -> None:
    """Regression: a status poll arriving first used to pick a private memory store."""
    mw, client = make()
    try:
        env = {"wsgi.multiprocess": True}
        if first == "status":
            assert client.get("/status/" + "a" * 22, environ_overrides=env).status_code == 404
        else:
            assert client.post("/slow", environ_overrides=env).status_code == 202
        assert isinstance(mw.get_store(), SQLiteStore)
        assert list(private_tmp.glob("wsgi-deferred-*/*.db"))
    finally:
        mw.close()


def test_single_process_server_gets_memory(private_tmp: Path) -> None:
    mw, client = make()
    try:
        client.get("/status/" + "a" * 22, environ_overrides={"wsgi.multiprocess": False})
        assert isinstance(mw.get_store(), MemoryStore)
    finally:
        mw.close()


def test_default_path_differs_per_deployment(
    private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.argv", ["gunicorn", "-w", "4", "--bind", ":8000", "app:app"])
    first = default_store_url(True)
    assert first == default_store_url(True), "stable for one deployment"
    monkeypatch.setattr("sys.argv", ["gunicorn", "-w", "4", "--bind", ":8001", "app:app"])
    assert default_store_url(True) != first, "another deployment, another file"
    assert first.startswith("sqlite://" + str(private_tmp))
    assert default_store_url(False) == "memory://"


# -- a private directory, private files (docs/security.md) ------------------------------------

NOBODY = 65534


def _default_store(tmpdir: Path) -> tuple[SQLiteStore, Path]:
    url = default_store_url(True)
    store = SQLiteStore.from_url(url)
    return store, Path(url[len("sqlite://") :])


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _as_nobody_can_read(paths: list[Path]) -> list[str]:
    """Paths that uid 65534 can open for reading (checked in a forked child)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, try each path, report, exit without cleanup
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            readable = []
            for path in paths:
                try:
                    with open(path, "rb") as handle:
                        handle.read(1)
                    readable.append(str(path))
                except OSError:
                    pass
            os.write(write_end, "\n".join(readable).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        answer = reader.read().decode()
    os.waitpid(pid, 0)
    return [line for line in answer.split("\n") if line]


def test_default_directory_is_private_and_its_files_are_0600(private_tmpdir: Path) -> None:
    store, db = _default_store(private_tmpdir)
    try:
        record = TaskRecord(id=new_task_id(), lease_expires=time.time() + 30)
        store.create(record)
        assert store.claim(record.id, time.time() + 30)
        body = SpooledBody(threshold=10)
        body.write(b"r" * (INLINE_BODY_MAX_BYTES + 1))  # large: a file in <db>.bodies/
        assert store.finish(record.id, "200 OK", [], body, time.time() + 60)
        store.secret()
        directory = db.parent
        assert _mode(directory) == 0o700
        assert os.lstat(directory).st_uid == os.getuid()
        files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
        bodies = list(Path(store.bodies_dir).iterdir())
        assert len(bodies) == 1
        for path in [*files, *bodies]:
            assert _mode(path) == 0o600, f"{path} is {oct(_mode(path))}"
        assert _mode(Path(store.bodies_dir)) == 0o700
    finally:
        store.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_cannot_read_the_default_store(private_tmpdir: Path) -> None:
    # Issue 8 finding 3: as uid 65534 the probe read the bind secret and every task row.
    os.chmod(private_tmpdir, 0o1777)  # like /tmp: anyone may enter and create
    control = private_tmpdir / "control.txt"
    control.write_bytes(b"world-readable")
    control.chmod(0o644)
    store, db = _default_store(private_tmpdir)
    try:
        store.create(TaskRecord(id=new_task_id(), lease_expires=time.time() + 30))
        store.secret()
        targets = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
        assert _as_nobody_can_read([control]) == [str(control)], "the probe itself works"
        assert _as_nobody_can_read(targets) == []
    finally:
        store.close()
        control.unlink()


def test_an_existing_directory_of_ours_is_narrowed_to_0700(private_tmpdir: Path) -> None:
    directory = private_tmpdir / f"wsgi-deferred-{os.getuid()}"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    default_store_url(True)
    assert _mode(directory) == 0o700


def test_a_symlinked_directory_is_refused(private_tmpdir: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (private_tmpdir / f"wsgi-deferred-{os.getuid()}").symlink_to(target)
    with pytest.raises(ConfigurationError, match="symbolic link"):
        default_store_url(True)
    assert list(target.iterdir()) == []
    (private_tmpdir / f"wsgi-deferred-{os.getuid()}").unlink()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create another user's directory")
def test_a_directory_owned_by_another_user_is_refused(private_tmpdir: Path) -> None:
    directory = private_tmpdir / f"wsgi-deferred-{os.getuid()}"
    directory.mkdir(mode=0o777)
    os.chown(directory, NOBODY, NOBODY)
    with pytest.raises(ConfigurationError, match="belongs to uid 65534"):
        default_store_url(True)
    # Through the middleware: a clear 503, no traceback, nothing created in the squatted dir.
    mw, client = make()
    try:
        response = client.post("/slow", environ_overrides={"wsgi.multiprocess": True})
        assert response.status_code == 503
        assert b"belongs to uid 65534" in response.data
        assert list(directory.iterdir()) == []
    finally:
        mw.close()


def test_an_explicit_sqlite_path_gets_0600_files_too(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "sub" / "tasks.db"))
    try:
        store.secret()
        assert _mode(tmp_path / "sub" / "tasks.db") == 0o600
        assert _mode(Path(store.bodies_dir)) == 0o700
    finally:
        store.close()

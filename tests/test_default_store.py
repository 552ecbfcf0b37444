"""``store=None``: memory for one process, a per-deployment SQLite file for several."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.test import Client

from wsgi_deferred import DeferredMiddleware
from wsgi_deferred.stores import default_store_url
from wsgi_deferred.stores.memory import MemoryStore
from wsgi_deferred.stores.sqlite import SQLiteStore


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

"""The PasteDeploy filter, loaded the way Pyramid loads it: paste.deploy.loadapp on a real
``.ini`` file, through the ``egg:wsgi_deferred`` entry point that pip installed."""

from __future__ import annotations

import re
import textwrap
import time
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from paste.deploy import loadapp
from werkzeug.test import Client

from wsgi_deferred import DeferredMiddleware
from wsgi_deferred.config import OPTIONS
from wsgi_deferred.errors import ConfigurationError


def app_factory(global_conf: dict[str, Any], **local_conf: Any) -> Any:
    """``[app:...] use = call:test_paste:app_factory``: a tiny app, reporting progress."""
    greeting = local_conf.get("greeting", "hello").encode()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ["PATH_INFO"]
        if path.startswith("/render/"):
            environ["wsgi_deferred.progress"](0.5, "halfway")
            time.sleep(0.1)
            body = b"rendered " + path[len("/render/") :].encode()
        else:
            body = greeting + b" " + path.encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    return app


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for option in OPTIONS:
        monkeypatch.delenv(option.env, raising=False)


@pytest.fixture
def loaded() -> Iterator[list[DeferredMiddleware]]:
    apps: list[DeferredMiddleware] = []
    yield apps
    for app in apps:
        app.close(0)


def write_ini(tmp_path: Path, filter_section: str, name: str = "deploy.ini") -> str:
    text = textwrap.dedent(
        """\
        [app:main]
        use = call:test_paste:app_factory
        greeting = hi
        filter-with = deferred

        """
    ) + textwrap.dedent(filter_section)
    path = tmp_path / name
    path.write_text(text)
    return f"config:{path}"


def load(uri: str, loaded: list[DeferredMiddleware]) -> DeferredMiddleware:
    app = loadapp(uri)
    assert isinstance(app, DeferredMiddleware), type(app)
    loaded.append(app)
    return app


def result_of(client: Client, location: str) -> Any:
    deadline = time.monotonic() + 10
    while True:
        response = client.get(location, headers={"Prefer": "wait=5", "Accept": "application/json"})
        if response.status_code != 202 or time.monotonic() > deadline:
            return response


def test_the_entry_point_is_installed() -> None:
    (entry,) = entry_points(group="paste.filter_factory", name="main")
    assert entry.value == "wsgi_deferred.paste:filter_factory"
    assert entry.dist is not None and entry.dist.name.replace("-", "_") == "wsgi_deferred"


def test_filter_from_an_ini_file(tmp_path: Path, loaded: list[DeferredMiddleware]) -> None:
    uri = write_ini(
        tmp_path,
        """\
        [filter:deferred]
        use = egg:wsgi_deferred
        routes =
            POST /render/<id>
            GET,POST /reports/<path:rest>
        exclude = GET /reports/health
        status_path = /jobs/
        store = sqlite:///%(here)s/deferred.db
        workers = 2
        max_pending = 50
        result_ttl = 120
        max_body = 64K
        honor_prefer = false
        metrics_path = /_deferred/metrics
        """,
    )
    app = load(uri, loaded)
    assert app.routes.specs == ("POST /render/<id>", "GET,POST /reports/<path:rest>")
    assert app.exclude.specs == ("GET /reports/health",)
    assert (app.pool.workers, app.pool.max_pending) == (2, 50)
    assert (app.result_ttl, app.max_body, app.honor_prefer) == (120.0, 64 * 1024, False)

    client = Client(app)
    inline = client.get("/hello")
    assert (inline.status_code, inline.data) == (200, b"hi /hello")  # the app's own config
    # honor_prefer = false: respond-async is ignored, the request runs inline.
    assert client.get("/x", headers={"Prefer": "respond-async"}).status_code == 200
    assert client.get("/reports/health").status_code == 200  # excluded

    accepted = client.post("/render/9", headers={"Accept": "application/json"})
    assert accepted.status_code == 202
    location = accepted.headers["Location"]
    assert location.startswith("/jobs/")
    result = result_of(client, location)
    assert (result.status_code, result.data) == (200, b"rendered 9")
    # %(here)s was expanded by PasteDeploy: the SQLite store lives beside the ini file.
    assert (tmp_path / "deferred.db").exists()
    metrics = client.get("/_deferred/metrics")
    assert metrics.status_code == 200
    # With prometheus_client the counter is the process's (every middleware in it), as "1.0".
    done = re.search(
        r'^wsgi_deferred_tasks_finished_total\{state="done"\} ([0-9.]+)$',
        metrics.get_data(as_text=True),
        re.M,
    )
    assert done is not None and float(done.group(1)) >= 1


def test_pipeline_with_the_named_entry_point_and_semicolon_rules(
    tmp_path: Path, loaded: list[DeferredMiddleware]
) -> None:
    path = tmp_path / "pipeline.ini"
    path.write_text(
        textwrap.dedent(
            """\
            [pipeline:main]
            pipeline = deferred myapp

            [filter:deferred]
            use = egg:wsgi_deferred#main
            routes = POST /render/<id>; /export
            store = memory://

            [app:myapp]
            use = call:test_paste:app_factory
            """
        )
    )
    app = load(f"config:{path}", loaded)
    assert app.routes.specs == ("POST /render/<id>", "/export")
    client = Client(app)
    accepted = client.post("/render/3", headers={"Accept": "application/json"})
    assert accepted.status_code == 202
    assert result_of(client, accepted.headers["Location"]).data == b"rendered 3"


def test_ini_keys_win_over_env_and_env_fills_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loaded: list[DeferredMiddleware]
) -> None:
    monkeypatch.setenv("WSGI_DEFERRED_ROUTES", "POST /from-env")
    monkeypatch.setenv("WSGI_DEFERRED_STATUS_PATH", "/env-jobs/")
    uri = write_ini(
        tmp_path,
        """\
        [filter:deferred]
        use = egg:wsgi_deferred
        routes = POST /render/<id>
        store = memory://
        """,
    )
    app = load(uri, loaded)
    assert app.routes.specs == ("POST /render/<id>",)
    assert app.status_path == "/env-jobs/"


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("route = POST /x", r"unknown ini key 'route'.*did you mean 'routes'"),
        ("workers = four", r"ini key 'workers'='four': expected a whole number"),
        ("routes = POST render", r"ini key 'routes'.*must start with '/'"),
        ("metrics_path = /status/m", r"metrics_path must .* outside status_path"),
    ],
)
def test_bad_ini_keys_fail_at_load_naming_the_key(tmp_path: Path, lines: str, message: str) -> None:
    uri = write_ini(tmp_path, f"[filter:deferred]\nuse = egg:wsgi_deferred\n{lines}\n")
    with pytest.raises(ConfigurationError, match=message):
        loadapp(uri)

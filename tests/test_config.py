"""Options from text (wsgi_deferred.config) and how wrap() reads WSGI_DEFERRED_* variables.

The env variables are read by wrap() (and the CLI, see test_cli.py) only, never by the core
class; an explicit keyword wins over a variable; a bad value fails naming the variable.
"""

from __future__ import annotations

import inspect
import logging
import re
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from wsgi_deferred import DeferredMiddleware, wrap
from wsgi_deferred.config import (
    ENV_PREFIX,
    OPTIONS,
    option_named,
    options_from_env,
    options_from_mapping,
    parse_option,
    split_rules,
)
from wsgi_deferred.errors import ConfigurationError

ALL_ENV = [option.env for option in OPTIONS]


def hello_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello " + environ["PATH_INFO"].encode("latin-1")]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No WSGI_DEFERRED_* variable of the outer environment leaks into these tests."""
    for name in ALL_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def built() -> Iterator[list[DeferredMiddleware]]:
    """Middlewares made by a test, closed afterwards (their pools register at exit)."""
    made: list[DeferredMiddleware] = []
    yield made
    for middleware in made:
        middleware.close(0)


# -- the option table ---------------------------------------------------------------------------


def test_every_textual_middleware_option_has_an_entry() -> None:
    """One variable per option: a keyword added to the middleware must be added here too."""
    keywords = set(inspect.signature(DeferredMiddleware).parameters) - {"app"}
    assert {option.name for option in OPTIONS} == keywords
    assert len(set(ALL_ENV)) == len(ALL_ENV)
    assert all(
        env == ENV_PREFIX + option.name.upper()
        for env, option in zip(ALL_ENV, OPTIONS, strict=True)
    )


@pytest.mark.parametrize(
    ("text", "rules"),
    [
        ("POST /render/<id>", ["POST /render/<id>"]),
        ("POST /a; GET,POST /b", ["POST /a", "GET,POST /b"]),
        ("POST /a\n  GET,POST /b\n\n", ["POST /a", "GET,POST /b"]),
        ("/<any(pdf,csv):kind>;", ["/<any(pdf,csv):kind>"]),
        (" ; \n ", []),
    ],
)
def test_rules_split_on_semicolons_and_newlines_never_commas(text: str, rules: list[str]) -> None:
    assert split_rules(text) == rules


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("workers", "4", 4),
        ("workers", "1_000", 1000),
        ("max_pending", " 20 ", 20),
        ("result_ttl", "3600", 3600.0),
        ("result_ttl", "2.5s", 2.5),
        ("defer_after", "0", 0.0),
        ("defer_after", "20", 20.0),
        ("defer_after", "off", None),
        ("defer_after", "None", None),
        ("honor_prefer", "0", False),
        ("honor_prefer", "Off", False),
        ("honor_prefer", "yes", True),
        ("honor_prefer", "TRUE", True),
        ("max_body", "1048576", 2**20),
        ("max_body", "512K", 512 * 2**10),
        ("max_body", "100M", 100 * 2**20),
        ("max_body", "100MiB", 100 * 2**20),
        ("max_body", "1G", 2**30),
        ("bind", "cookie:session", "cookie:session"),
        ("bind", "authorization", "authorization"),
        ("bind", "off", None),
        ("max_pending_per_client", "3", 3),
        ("max_pending_per_client", "none", None),
        ("store", "sqlite:///var/tmp/d.db", "sqlite:///var/tmp/d.db"),
        ("store", "redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("status_path", "/jobs/", "/jobs/"),
        ("metrics_path", "/_deferred/metrics", "/_deferred/metrics"),
        ("metrics_path", "off", None),
        ("routes", "POST /render/<id>; /export", ["POST /render/<id>", "/export"]),
    ],
)
def test_values_parse(name: str, text: str, value: object) -> None:
    assert parse_option(name, text) == value


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("workers", "four", "expected a whole number"),
        ("workers", "0", "at least 1"),
        ("max_pending", "1.5", "whole number"),
        ("result_ttl", "0", "more than 0"),
        ("result_ttl", "soon", "seconds"),
        ("defer_after", "-1", "0 seconds or more"),
        ("defer_after", "nan", "finite"),
        ("honor_prefer", "maybe", "true/false"),
        ("max_body", "lots", "size in bytes"),
        ("max_body", "10T", "size in bytes"),
        ("bind", "header:X-User", "cookie:NAME"),
        ("store", "postgres://db/x", "store URL"),
        ("store", "/var/tmp/d.db", "store URL"),
        ("status_path", "/status", "start and end with '/'"),
        ("metrics_path", "metrics", "starting with '/'"),
        ("routes", "POST render", "must start with '/'"),
        ("routes", "POST /a; PO$T /b", "invalid method list"),
        ("exclude", "/x/<nosuchconverter:y>", "route rule"),
    ],
)
def test_bad_values_name_their_source(name: str, text: str, reason: str) -> None:
    source = option_named(name).env
    with pytest.raises(ConfigurationError) as caught:
        parse_option(name, text, source)
    message = str(caught.value)
    assert message.startswith(f"{source}=")
    assert reason in message
    assert "\n" not in message


# -- reading the environment --------------------------------------------------------------------


def test_options_from_env_reads_only_known_nonempty_variables(
    caplog: pytest.LogCaptureFixture,
) -> None:
    environ = {
        "WSGI_DEFERRED_ROUTES": "POST /render/<id>; GET,POST /reports/<path:rest>",
        "WSGI_DEFERRED_WORKERS": "3",
        "WSGI_DEFERRED_STORE": "",  # empty: unset, the default applies
        "WSGI_DEFERRED_REQUIRE_BROWSER": "1",  # shares the prefix, not an option: ignored
        "WSGI_DEFERRED_ROUTE": "POST /typo",  # a near miss: ignored with a warning
        "ROUTES": "/not/ours",
    }
    with caplog.at_level(logging.WARNING, logger="wsgi_deferred"):
        options = options_from_env(environ)
    assert options == {
        "routes": ["POST /render/<id>", "GET,POST /reports/<path:rest>"],
        "workers": 3,
    }
    warnings = [r.getMessage() for r in caplog.records]
    assert any("WSGI_DEFERRED_ROUTE" in m and "WSGI_DEFERRED_ROUTES" in m for m in warnings)
    assert not any("REQUIRE_BROWSER" in m for m in warnings)


def _inspect(middleware: DeferredMiddleware, name: str) -> object:
    """Where each option ends up inside the middleware."""
    return {
        "routes": lambda m: list(m.routes.specs),
        "exclude": lambda m: list(m.exclude.specs),
        "store": lambda m: type(m.get_store()).__name__,
        "workers": lambda m: m.pool.workers,
        "max_pending": lambda m: m.pool.max_pending,
        "status_path": lambda m: m.status_path,
        "result_ttl": lambda m: m.result_ttl,
        "defer_after": lambda m: m.defer_after,
        "honor_prefer": lambda m: m.honor_prefer,
        "max_body": lambda m: m.max_body,
        "lease_timeout": lambda m: m.runner.lease_timeout,
        "bind": lambda m: m.binding.enabled,
        "max_pending_per_client": lambda m: m.admission.limit,
        "max_wait": lambda m: m.max_wait,
        "max_holds": lambda m: m.holds.max_holds,
        "drain_timeout": lambda m: m.pool.drain_timeout,
        "debug": lambda m: m.runner.debug,
        "metrics_path": lambda m: m.metrics_path,
        "executor": lambda m: type(m.executor).__name__,
        "retry": lambda m: list(m.retry.specs),
        "max_attempts": lambda m: m.max_attempts,
    }[name](middleware)


#: (option, variable text, what the middleware shows, its default there)
ENV_CASES = [
    ("routes", "POST /render/<id>;/export", ["POST /render/<id>", "/export"], []),
    ("exclude", "GET /health\nGET /metrics", ["GET /health", "GET /metrics"], []),
    ("store", "sqlite:///{tmp}/env.db", "SQLiteStore", "MemoryStore"),
    ("workers", "3", 3, 8),
    ("max_pending", "7", 7, 1000),
    ("status_path", "/jobs/", "/jobs/", "/status/"),
    ("result_ttl", "60", 60.0, 600.0),
    ("defer_after", "2.5", 2.5, None),
    ("honor_prefer", "false", False, True),
    ("max_body", "1K", 1024, 100 * 2**20),
    ("lease_timeout", "9", 9.0, 30.0),
    ("bind", "cookie:sid", True, False),
    ("max_pending_per_client", "2", 2, 100),  # default: max_pending / 10
    ("max_wait", "5", 5.0, 25.0),
    ("max_holds", "3", 3, None),
    ("drain_timeout", "3", 3.0, 25.0),
    ("debug", "yes", True, False),
    ("metrics_path", "/_m", "/_m", None),
    ("executor", "celery+redis://127.0.0.1:6379/1", "CeleryExecutor", "ThreadExecutor"),
    ("retry", "POST /render/<id>", ["POST /render/<id>"], []),
    ("max_attempts", "5", 5, 3),
]


def test_env_cases_cover_every_option() -> None:
    assert [case[0] for case in ENV_CASES] == [option.name for option in OPTIONS]


@pytest.mark.parametrize(("name", "text", "shown", "default"), ENV_CASES, ids=ALL_ENV)
def test_wrap_reads_each_variable_and_the_core_class_does_not(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    built: list[DeferredMiddleware],
    name: str,
    text: str,
    shown: object,
    default: object,
) -> None:
    monkeypatch.setenv(option_named(name).env, text.format(tmp=tmp_path))
    if name == "executor":  # a remote executor needs a shared store
        monkeypatch.setenv("WSGI_DEFERRED_STORE", f"sqlite:///{tmp_path}/shared.db")
    wrapped = wrap(hello_app)
    built.append(wrapped)
    assert _inspect(wrapped, name) == shown
    core = DeferredMiddleware(hello_app)  # same environment, no effect
    built.append(core)
    assert _inspect(core, name) == default


def test_explicit_keywords_win_over_variables_key_by_key(
    monkeypatch: pytest.MonkeyPatch, built: list[DeferredMiddleware]
) -> None:
    monkeypatch.setenv("WSGI_DEFERRED_ROUTES", "POST /from-env")
    monkeypatch.setenv("WSGI_DEFERRED_STATUS_PATH", "/jobs/")
    monkeypatch.setenv("WSGI_DEFERRED_WORKERS", "3")
    middleware = wrap(hello_app, routes=["POST /explicit"], workers=5)
    built.append(middleware)
    assert middleware.routes.specs == ("POST /explicit",)
    assert middleware.pool.workers == 5
    assert middleware.status_path == "/jobs/"  # not given explicitly: the variable applies


def test_explicit_none_still_wins(
    monkeypatch: pytest.MonkeyPatch, built: list[DeferredMiddleware]
) -> None:
    monkeypatch.setenv("WSGI_DEFERRED_DEFER_AFTER", "5")
    middleware = wrap(hello_app, defer_after=None)
    built.append(middleware)
    assert middleware.defer_after is None


@pytest.mark.parametrize(
    ("variable", "text"),
    [
        ("WSGI_DEFERRED_WORKERS", "many"),
        ("WSGI_DEFERRED_ROUTES", "POST render/<id>"),
        ("WSGI_DEFERRED_HONOR_PREFER", "perhaps"),
        ("WSGI_DEFERRED_STORE", "mysql://db"),
    ],
)
def test_a_bad_variable_fails_wrap_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, text: str
) -> None:
    monkeypatch.setenv(variable, text)
    with pytest.raises(ConfigurationError, match=f"^{variable}="):
        wrap(hello_app)


def test_a_bad_variable_fails_before_the_app_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSGI_DEFERRED_MAX_PENDING", "-3")
    with pytest.raises(ConfigurationError, match="WSGI_DEFERRED_MAX_PENDING"):
        wrap("no_such_module_anywhere:app")


def test_wrong_import_strings_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="cannot import 'no_such_module_anywhere:app'"):
        wrap("no_such_module_anywhere:app")
    with pytest.raises(ConfigurationError, match="has no attribute 'nope'"):
        wrap("json:nope")
    with pytest.raises(ConfigurationError, match="not a WSGI callable"):
        wrap("json:__name__")


# -- wrap() end to end: a real module by import string, configured by the environment ---------


LEGACY_MODULE = """
import time

def application(environ, start_response):
    if environ["PATH_INFO"].startswith("/render/"):
        environ["wsgi_deferred.progress"](0.5, "half")
        time.sleep(0.2)
        body = b"rendered " + environ["wsgi.input"].read()
    else:
        body = b"fast"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
"""


def test_wrap_by_import_string_configured_by_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, built: list[DeferredMiddleware]
) -> None:
    package = tmp_path / "envlegacy"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "wsgi.py").write_text(textwrap.dedent(LEGACY_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("WSGI_DEFERRED_ROUTES", "POST /render/<id>")
    monkeypatch.setenv("WSGI_DEFERRED_STATUS_PATH", "/jobs/")
    monkeypatch.setenv("WSGI_DEFERRED_STORE", "memory://")
    middleware = wrap("envlegacy.wsgi:application")
    built.append(middleware)
    client = Client(middleware)

    fast = client.get("/hello")
    assert (fast.status_code, fast.data) == (200, b"fast")

    accepted = client.post("/render/1", data=b"the body", headers={"Accept": "application/json"})
    assert accepted.status_code == 202
    location = accepted.headers["Location"]
    assert location.startswith("/jobs/")
    deadline = time.monotonic() + 10
    while True:
        result = client.get(location, headers={"Prefer": "wait=5"})
        if result.status_code != 202 or time.monotonic() > deadline:
            break
    assert (result.status_code, result.data) == (200, b"rendered the body")


# -- ini-style mappings (PasteDeploy's local_conf) ----------------------------------------------


def test_options_from_mapping_parses_text_and_keeps_objects() -> None:
    def owner(environ: dict[str, Any]) -> str:
        return "x"

    options = options_from_mapping(
        {
            "routes": "\nPOST /render/<id>\nGET,POST /reports/<path:rest>",
            "max-pending": "12",
            "honor_prefer": "no",
            "defer_after": "",  # empty: unset
            "bind": owner,  # not text: passed as is
        }
    )
    assert options == {
        "routes": ["POST /render/<id>", "GET,POST /reports/<path:rest>"],
        "max_pending": 12,
        "honor_prefer": False,
        "bind": owner,
    }


def test_options_from_mapping_rejects_unknown_keys_with_a_hint() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown ini key 'route'.*did you mean 'routes'"):
        options_from_mapping({"route": "POST /x"}, source="ini key")
    with pytest.raises(ConfigurationError, match=r"ini key 'workers'='zero'"):
        options_from_mapping({"workers": "zero"}, source="ini key")


def test_the_deployment_guide_documents_every_variable() -> None:
    guide = (Path(__file__).parent.parent / "docs" / "deploying.md").read_text()
    rows = re.findall(r"^\| `(WSGI_DEFERRED_[A-Z_]+)` \| `(\w+)` \|", guide, re.M)
    assert rows == [(option.env, option.name) for option in OPTIONS]

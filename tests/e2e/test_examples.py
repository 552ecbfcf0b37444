"""Both examples under a real gunicorn: submit, poll, fetch; and a browser-like Refresh chain."""

from __future__ import annotations

import json
import re
import time

import pytest
from servers import Gunicorn, fetch_result, http_request

pytestmark = pytest.mark.e2e

FAST = {"EXAMPLE_WORK_SECONDS": "1"}
WORKER_MODES = {
    "threads": dict(workers=1, threads=8),
    "sync": dict(workers=1, threads=1),  # gunicorn's default sync worker
}


@pytest.fixture(scope="module", params=sorted(WORKER_MODES))
def flask_server(request: pytest.FixtureRequest):
    mode = WORKER_MODES[request.param]
    with Gunicorn("flask_app:app", extra_args=["--chdir", "examples"], env=FAST, **mode) as server:
        yield server


@pytest.fixture(scope="module")
def django_server():
    with Gunicorn(
        "django_wsgi:application",
        extra_args=["--chdir", "examples"],
        env=FAST,
        workers=1,
        threads=4,
    ) as server:
        yield server


def submit_and_fetch(server: Gunicorn, path: str, payload: dict[str, object]):
    body = json.dumps(payload).encode()
    started = time.monotonic()
    accepted = server.request(
        "POST", path, body, {"Content-Type": "application/json", "Accept": "application/json"}
    )
    assert accepted.status == 202, accepted.body
    assert time.monotonic() - started < 0.9, "the 202 must not wait for the work"
    location = accepted.headers["location"]
    assert re.fullmatch(r"/status/[A-Za-z0-9_-]{22}", location)
    assert accepted.headers["cache-control"] == "no-store"
    assert int(accepted.headers["retry-after"]) >= 1
    document = accepted.json()
    assert document["state"] in ("queued", "running") and document["status_url"] == location
    # Plain polling sees it running, with the progress the app reports.
    seen_progress = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        poll = server.request("GET", location)
        if poll.status != 202:
            break
        seen_progress = poll.json()["progress"] or seen_progress  # type: ignore[index]
        time.sleep(0.1)
    result = fetch_result(server.port, location)
    return result, seen_progress, location


def test_flask_example_pass_through(flask_server: Gunicorn) -> None:
    response = flask_server.request("GET", "/hello")
    assert (response.status, response.body) == (200, b"hello")


def test_flask_example_deferred_round_trip(flask_server: Gunicorn) -> None:
    result, progress, location = submit_and_fetch(
        flask_server, "/render/42", {"text_list": ["hello", "wörld"]}
    )
    assert result.status == 200
    assert result.headers["content-type"] == "application/json"
    assert result.json() == {"id": 42, "rendered": ["HELLO", "WÖRLD"]}
    assert progress is not None and 0 < progress <= 1
    # The result can be fetched again until deleted, then it is gone.
    assert flask_server.request("GET", location).body == result.body
    assert flask_server.request("DELETE", location).status == 204
    assert flask_server.request("GET", location).status == 404


def test_flask_example_bad_input_is_the_apps_400(flask_server: Gunicorn) -> None:
    result, _, _ = submit_and_fetch(flask_server, "/render/1", {"text_list": "not a list"})
    assert result.status == 400


def test_django_example_round_trip(django_server: Gunicorn) -> None:
    assert django_server.request("GET", "/hello").body == b"hello from django"
    result, progress, _ = submit_and_fetch(django_server, "/report/3", {"x": 1})
    assert result.status == 200
    assert result.json() == {"report": 3, "rows": [i * 3 for i in range(10)], "bytes": 8}
    assert progress is not None


def test_browser_like_refresh_chain_lands_on_result(flask_server: Gunicorn) -> None:
    """A client that only follows ``Refresh`` headers, like a browser with JS off."""
    form = b"text=one%0Atwo"
    headers = {"Accept": "text/html", "Content-Type": "application/x-www-form-urlencoded"}
    response = flask_server.request("POST", "/render/7", form, headers)
    assert response.status == 202
    assert "text/html" in response.headers["content-type"]
    assert b'http-equiv="refresh"' in response.body
    assert response.headers["referrer-policy"] == "no-referrer"
    hops = 0
    while "refresh" in response.headers:
        seconds, _, url = response.headers["refresh"].partition("; url=")
        assert url.startswith("/status/")
        time.sleep(min(float(seconds), 2))
        response = http_request(flask_server.port, "GET", url, headers={"Accept": "text/html"})
        hops += 1
        assert hops < 60, "the Refresh chain must end"
    assert response.status == 200
    assert b"<li>ONE</li><li>TWO</li>" in response.body

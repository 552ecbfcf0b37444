"""The browser experience in a real headless Chromium (Debian's ``chromium``, driven by
Playwright), against a real gunicorn serving a small Flask app wrapped by ``wrap()``.

A form POSTs to a deferred route; the browser gets the waiting page (label, state, elapsed
time, an ARIA progress bar fed by the app's progress, a cancel button) and then the page the
app produced — once with JavaScript and once without. The cancel button (a plain form) ends on
a "Cancelled" page after which the status URL answers 404. A screenshot of the waiting page is
saved to ``test-artifacts/waiting-page.png`` (and ``waiting-page-phone.png``).

Skipped when ``/usr/bin/chromium`` or Playwright is missing, unless
``WSGI_DEFERRED_REQUIRE_BROWSER=1`` (CI), which turns that into a failure.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from html import escape
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request
from servers import ROOT, Gunicorn, http_request

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
#: Milliseconds Playwright waits for a page state (the work itself takes ~2.5 s).
WAIT_MS = 20_000
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}

# -- the application under test (imported by the gunicorn worker as test_browser:app) ----------

app = Flask(__name__)

FORM_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Reports</title></head>
<body><h1>Render a report</h1>
<form method="post" action="/render">
<label>Title <input name="title" value=""></label>
<input type="hidden" name="steps" value="{steps}">
<button type="submit">Render</button>
</form></body></html>"""

RESULT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Report ready</title></head>
<body><h1>Report ready</h1><p id="result">{title}</p></body></html>"""


@app.get("/")
def form_page() -> str:
    return FORM_PAGE.format(steps=int(request.args.get("steps", 5)))


@app.post("/render")
def render() -> Any:
    """~0.5 s per step, reporting progress after each; honours cancellation."""
    progress = request.environ.get("wsgi_deferred.progress", lambda *a, **k: None)
    cancelled = request.environ.get("wsgi_deferred.cancelled", lambda: False)
    steps = min(int(request.form.get("steps", 5)), 60)
    for step in range(steps):
        if cancelled():
            return "cancelled", 409
        time.sleep(0.5)
        progress((step + 1) / steps, f"Rendered part {step + 1} of {steps}")
    return RESULT_PAGE.format(title=escape(request.form.get("title", "").upper()))


# -- fixtures -----------------------------------------------------------------------------------


def _unavailable(reason: str) -> None:
    if os.environ.get("WSGI_DEFERRED_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (WSGI_DEFERRED_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        _unavailable(f"{CHROMIUM} is missing: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as playwright:
        # A fresh temporary profile (user data dir) per launch is Playwright's default.
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


def _no_control_socket() -> list[str]:
    from gunicorn.config import KNOWN_SETTINGS

    names = {setting.name for setting in KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket_disable" in names else []


@pytest.fixture(scope="module")
def server() -> Iterator[Gunicorn]:
    target = 'wsgi_deferred:wrap("test_browser:app", routes=["POST /render"], store="memory://")'
    with Gunicorn(target, workers=1, threads=8, extra_args=_no_control_socket()) as gunicorn:
        yield gunicorn


def _context(browser: Any, js: bool, viewport: dict[str, int]) -> Any:
    return browser.new_context(
        java_script_enabled=js,
        viewport=viewport,
        is_mobile=viewport is PHONE,
        has_touch=viewport is PHONE,
        locale="en-US",
    )


def _submit_form(page: Any, server: Gunicorn, title: str, steps: int = 5) -> Any:
    """Open the app's form, fill it in, submit: the response is the middleware's 202."""
    page.goto(f"{server.base_url}/?steps={steps}")
    page.get_by_label("Title").fill(title)
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Render").click()
    return navigation.value


def _progress_shown(page: Any, timeout: float = 15.0) -> int:
    """Wait until the waiting page displays a progress above 0; return the percentage.
    Without JavaScript the page reloads every second, so a read may hit a navigation."""
    from playwright.sync_api import Error

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            bar = page.get_by_role("progressbar")
            value = bar.get_attribute("aria-valuenow", timeout=1000)
            if value is not None and int(value) > 0:
                assert page.locator("#percent").inner_text(timeout=1000) == f"{value}%"
                assert bar.get_attribute("aria-valuetext", timeout=1000).startswith(f"{value}%")
                return int(value)
        except Error:
            pass  # the page was being replaced: read the next one
        time.sleep(0.1)
    raise AssertionError("no progress above 0 was displayed on the waiting page")


# -- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("js", "viewport"), [(True, PHONE), (False, DESKTOP)], ids=["javascript", "no-javascript"]
)
def test_form_post_waiting_page_then_the_apps_page(
    browser: Any, server: Gunicorn, js: bool, viewport: dict[str, int]
) -> None:
    from playwright.sync_api import expect

    context = _context(browser, js, viewport)
    try:
        page = context.new_page()
        requests: list[Any] = []
        page.on("request", lambda r: requests.append(r))
        documents: list[str] = []
        page.on("framenavigated", lambda frame: documents.append(frame.url))

        # Long enough (0.5 s a step) to watch the JavaScript clock tick while waiting.
        accepted = _submit_form(page, server, "Quarterly report", steps=8 if js else 5)
        # The middleware's answer: 202, a status URL, a reload for browsers without JS.
        assert accepted.status == 202
        status_url = accepted.headers["location"]
        assert re.fullmatch(r"/status/[A-Za-z0-9_-]{22}", status_url)
        assert accepted.headers["refresh"] == f"1; url={status_url}"
        assert accepted.headers["cache-control"] == "no-store"

        # The waiting page, checked as a user and a screen reader would meet it.
        expect(page.get_by_role("heading", level=1)).to_have_text("Working on it…")
        assert page.title().endswith("Working on it…")
        assert page.locator("html").get_attribute("lang") == "en"
        expect(page.locator("#label")).to_have_text("POST /render")
        expect(page.locator("#state")).to_have_text(re.compile(r"^(Queued|Running)"))
        expect(page.locator("#elapsed")).to_have_text(re.compile(r"^\d+ s$"))
        bar = page.get_by_role("progressbar", name="Working on it…")
        expect(bar).to_have_attribute("aria-valuemin", "0")
        expect(bar).to_have_attribute("aria-valuemax", "100")
        cancel = page.get_by_role("button", name="Cancel")
        expect(cancel).to_be_visible()
        form = page.locator("form").filter(has=cancel)
        assert form.get_attribute("method") == "post"
        assert form.get_attribute("action") == status_url
        assert page.locator("input[name=action]").get_attribute("value") == "cancel"
        if not js:
            refresh = page.locator('meta[http-equiv="refresh"]')
            assert refresh.get_attribute("content") == f"1;url={status_url}"

        percent = _progress_shown(page)
        assert 0 < percent <= 100
        expect(page.locator("#message")).to_have_text(re.compile(r"^Rendered part \d of [58]$"))
        if js:
            # In place, without reloading: the title carries the progress, the clock ticks.
            expect(page).to_have_title(re.compile(r"^\d+% · Working on it…$"))
            before = page.locator("#elapsed").inner_text()
            expect(page.locator("#elapsed")).not_to_have_text(before, timeout=3000)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= viewport["width"], "no sideways scrolling on a phone"
            box = cancel.bounding_box()
            assert box is not None and box["height"] >= 44, "a finger-sized button"
        ARTIFACTS.mkdir(exist_ok=True)
        name = "waiting-page-phone.png" if viewport is PHONE else "waiting-page.png"
        page.screenshot(path=str(ARTIFACTS / name), full_page=True)

        # The page the application produced, from the status URL.
        expect(page.get_by_role("heading", name="Report ready")).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("#result")).to_have_text("QUARTERLY REPORT")
        assert page.url == server.base_url + status_url

        own = [r for r in requests if not r.url.startswith(server.base_url)]
        assert not own, f"external requests: {[r.url for r in own]}"
        kinds = {r.resource_type for r in requests}
        assert kinds <= {"document", "fetch"}, f"no assets beyond the page itself: {kinds}"
        reloads = documents.count(server.base_url + status_url)
        if js:
            # No reload while waiting: one navigation, to the result, after long polls.
            assert reloads == 1, documents
            polls = [r for r in requests if r.resource_type == "fetch"]
            assert polls and all(r.headers.get("prefer", "").startswith("wait=") for r in polls)
            assert all(r.headers.get("accept") == "application/json" for r in polls)
        else:
            assert reloads >= 2, documents  # the refresh chain, then the result
            assert not [r for r in requests if r.resource_type == "fetch"]
    finally:
        context.close()


def test_cancel_button_without_javascript(browser: Any, server: Gunicorn) -> None:
    from playwright.sync_api import expect

    context = _context(browser, False, DESKTOP)
    try:
        page = context.new_page()
        accepted = _submit_form(page, server, "Never mind", steps=30)
        status_url = accepted.headers["location"]
        expect(page.get_by_role("heading", level=1)).to_have_text("Working on it…")
        with page.expect_navigation() as navigation:
            page.get_by_role("button", name="Cancel").click()
        assert navigation.value.request.method == "POST"
        assert navigation.value.status == 200
        expect(page.get_by_role("heading", level=1)).to_have_text("Cancelled")
        expect(page.locator("main p")).to_have_text("The request was cancelled.")
        assert page.title() == "Cancelled"
        gone = http_request(server.port, "GET", status_url, headers={"Accept": "application/json"})
        assert gone.status == 404
        assert gone.json() == {"error": "no such task"}
        # The browser's next look at the status URL says so too.
        page.goto(server.base_url + status_url)
        expect(page.get_by_role("heading", level=1)).to_have_text("404 Not Found")
    finally:
        context.close()


@pytest.fixture(scope="module")
def one_hold_server() -> Iterator[Gunicorn]:
    target = (
        'wsgi_deferred:wrap("test_browser:app", routes=["POST /render"], store="memory://",'
        " max_holds=1)"
    )
    with Gunicorn(target, workers=1, threads=8, extra_args=_no_control_socket()) as gunicorn:
        yield gunicorn


def test_the_waiting_page_reaches_the_result_with_the_hold_budget_spent(
    browser: Any, one_hold_server: Gunicorn
) -> None:
    """docs/protocol.md, "Holds": another client's long poll takes the one slot; the page's
    long polls are refused (no Preference-Applied: wait), so it falls back to reloads."""
    import threading

    from playwright.sync_api import expect

    server = one_hold_server
    other = http_request(server.port, "POST", "/render", b"steps=30", FORM)
    assert other.status == 202
    stop = threading.Event()

    def hold() -> None:  # keeps a long poll out (bounded: a 404 after the DELETE ends it)
        for _ in range(100):
            answer = http_request(
                server.port,
                "GET",
                other.headers["location"],
                headers={"Prefer": "wait=25"},
                timeout=30,
            )
            if answer.status != 202 or stop.is_set():
                return
            if "wait" not in answer.headers.get("preference-applied", ""):
                stop.wait(0.05)  # refused (a probe had the slot): try again

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    context = _context(browser, True, DESKTOP)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the other client holds the slot
            probe = http_request(
                server.port, "GET", other.headers["location"], headers={"Prefer": "wait=1"}
            )
            if "wait" not in probe.headers.get("preference-applied", ""):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the other client's long poll was never held")
        page = context.new_page()
        answers: list[Any] = []
        page.on("response", lambda r: answers.append(r))
        documents: list[str] = []
        page.on("framenavigated", lambda frame: documents.append(frame.url))
        accepted = _submit_form(page, server, "Busy day", steps=5)
        status_url = accepted.headers["location"]
        expect(page.get_by_role("heading", name="Report ready")).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("#result")).to_have_text("BUSY DAY")
        polls = [r for r in answers if r.request.resource_type == "fetch"]
        assert polls, "the script tried to long-poll"
        refused = [r for r in polls if r.status == 202]
        assert refused and all("preference-applied" not in r.headers for r in refused)
        assert documents.count(server.base_url + status_url) >= 2, documents  # reloads
    finally:
        context.close()
        stop.set()
        http_request(server.port, "DELETE", other.headers["location"])  # frees the holder
        holder.join(30)
        assert not holder.is_alive()

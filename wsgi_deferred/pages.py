"""Bodies of the responses the middleware itself writes: JSON for programs, small
self-contained HTML pages for browsers.

Which one is chosen follows ``Accept``: JSON unless the client prefers ``text/html``.

The waiting page (a ``202`` for a queued or running task) shows the work's label, its state,
the time since it was accepted, a progress bar and the message the application last reported
through ``environ["wsgi_deferred.progress"]``, and a cancel button. It needs no JavaScript:
``<meta http-equiv="refresh">`` (and the ``Refresh`` header the status endpoint adds) reload
it until the status URL answers with the result, and the cancel button is a plain form
``POST`` of ``action=cancel``. With JavaScript it gets better: the page stops the reloads,
long-polls the JSON status with ``Prefer: wait`` (RFC 7240) to move on the moment the result is
ready, and updates the bar, message and clock in place. Long polls count against the server's
hold budget (``docs/protocol.md``, "Holds"): a poll the server did not hold (no
``Preference-Applied: wait`` in its answer) makes the page fall back to reloading itself after
``Retry-After`` seconds, as it would without JavaScript. Semantic HTML, a ``role="progressbar"``
with ARIA values, a live region for the message, readable on a phone, no external assets.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from html import escape
from typing import Any

from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from .task import TaskRecord, TaskState

__all__ = ["render_message", "render_status", "status_document", "wants_html"]

JSON_TYPE = "application/json"
HTML_TYPE = "text/html; charset=utf-8"
#: Seconds each long poll of the waiting page's script may be held (``Prefer: wait=N``):
#: short enough to refresh the progress bar often, and the poll returns at once on completion.
POLL_WAIT = 2

_STATE_TEXT = {
    TaskState.QUEUED.value: "Queued — starts as soon as a worker is free",
    TaskState.RUNNING.value: "Running",
    TaskState.DONE.value: "Done",
    TaskState.FAILED.value: "Failed",
    TaskState.LOST.value: "Lost — the server stopped while working on it",
    TaskState.CANCELLED.value: "Cancelled",
}


def wants_html(environ: dict[str, Any]) -> bool:
    """True when the client prefers ``text/html`` over JSON (browsers do)."""
    accept = environ.get("HTTP_ACCEPT")
    if not accept or "html" not in accept:
        return False
    best = parse_accept_header(accept, MIMEAccept).best_match(["application/json", "text/html"])
    return best == "text/html"


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds")


def status_document(
    record: TaskRecord, status_url: str, estimate: float | None = None
) -> dict[str, Any]:
    """The JSON status of a task (also the data behind the HTML page). ``estimate`` is the
    seconds the task probably has left, or null without a history (docs/protocol.md)."""
    end = record.finished or time.time()
    return {
        "id": record.id,
        "state": record.state.value,
        "status_url": status_url,
        "progress": record.progress,
        "message": record.message,
        "label": record.label,
        "created": _iso(record.created),
        "started": _iso(record.started),
        "finished": _iso(record.finished),
        "elapsed": round(max(0.0, end - record.created), 3),
        "estimate": None if estimate is None else round(max(0.0, estimate), 3),
        "attempts": record.attempts,  # runs started (more than 1: retried, docs/execution.md)
    }


def render_status(
    record: TaskRecord,
    status_url: str,
    html: bool,
    refresh: int | None = None,
    estimate: float | None = None,
) -> tuple[bytes, str]:
    """``(body, content_type)`` for a task's status; *refresh* seconds for waiting pages."""
    document = status_document(record, status_url, estimate)
    if not html:
        return json.dumps(document).encode(), JSON_TYPE
    return _status_page(document, refresh).encode(), HTML_TYPE


def render_message(status: str, message: str, html: bool, **extra: Any) -> tuple[bytes, str]:
    """A small error or notice body: ``{"error": ...}`` or a minimal page."""
    if not html:
        return json.dumps({"error": message, **extra}).encode(), JSON_TYPE
    title = escape(status)
    page = _PAGE.format(
        title=title,
        head="",
        main_attrs="",
        body=f"<h1>{title}</h1>\n<p>{escape(message)}</p>",
        script="",
    )
    return page.encode(), HTML_TYPE


def format_elapsed(seconds: float) -> str:
    """``7`` -> ``"7 s"``, ``65`` -> ``"1 min 05 s"``, ``3725`` -> ``"1 h 02 min"``."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<meta name="color-scheme" content="light dark">
{head}<title>{title}</title>
<style>
:root{{--fg:#1b1b1b;--muted:#555;--bg:#f4f4f1;--card:#fff;--track:#dcdcd6;--fill:#1f5fc8;
--line:#8a8a85}}
@media (prefers-color-scheme:dark){{:root{{--fg:#ececea;--muted:#b4b4ae;--bg:#161615;
--card:#232321;--track:#3c3c39;--fill:#6ea0ff;--line:#77776f}}}}
*{{box-sizing:border-box}}
body{{font:1rem/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
color:var(--fg);background:var(--bg)}}
main{{max-width:36rem;margin:10vh auto;padding:1.5rem;background:var(--card);
border-radius:.6rem;box-shadow:0 1px 4px rgba(0,0,0,.15)}}
@media (max-width:40rem){{main{{margin:0;min-height:100vh;border-radius:0;box-shadow:none}}}}
h1{{font-size:1.35rem;margin:0 0 1rem}}
dl{{display:grid;grid-template-columns:auto 1fr;gap:.25rem 1rem;margin:0 0 1rem}}
dt{{color:var(--muted)}}
dd{{margin:0;overflow-wrap:anywhere}}
code{{font:.95em ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}}
.progress{{display:flex;align-items:center;gap:.75rem;margin:1rem 0 .5rem}}
.bar{{flex:1;height:1rem;background:var(--track);border-radius:.5rem;overflow:hidden}}
.fill{{height:100%;background:var(--fill);transition:width .4s}}
.fill.unknown{{width:30%;animation:slide 1.6s ease-in-out infinite}}
@keyframes slide{{0%{{margin-left:-30%}}100%{{margin-left:100%}}}}
@media (prefers-reduced-motion:reduce){{.fill{{transition:none}}
.fill.unknown{{animation:none;width:100%;opacity:.35}}}}
.percent{{min-width:3.5em;text-align:right;font-variant-numeric:tabular-nums}}
.message{{min-height:1.5em;margin:.25rem 0 1rem}}
.note{{color:var(--muted);font-size:.9rem}}
.actions{{display:flex;flex-wrap:wrap;align-items:center;gap:1rem;margin-top:1rem}}
button{{font:inherit;min-height:2.75rem;padding:.4rem 1.2rem;border:1px solid var(--line);
border-radius:.35rem;background:transparent;color:inherit;cursor:pointer}}
button:focus-visible,a:focus-visible{{outline:3px solid var(--fill);outline-offset:2px}}
a{{color:var(--fill)}}
</style>
</head>
<body>
<main{main_attrs}>
{body}
</main>
{script}</body>
</html>
"""

# Progressive enhancement, kept small and dependency-free. The status URL comes from the
# <main data-status-url> attribute (HTML-escaped there), never from string-built JavaScript.
_SCRIPT = """<script>
(function () {
  "use strict";
  var main = document.querySelector("main[data-status-url]");
  if (!main || !window.fetch) return;
  var url = main.getAttribute("data-status-url");
  var $ = function (id) { return document.getElementById(id); };
  var bar = $("bar"), fill = $("fill"), percent = $("percent"), state = $("state");
  var message = $("message"), elapsed = $("elapsed"), note = $("note");
  var states = %(states)s, title = document.title;
  var base = parseFloat(elapsed.getAttribute("data-seconds")) || 0, since = Date.now();
  var done = false;

  // JavaScript takes over from the refresh: no more full-page reloads (window.stop(), once
  // the page has loaded, also cancels the Refresh header's), and the page moves on by
  // itself the moment the result is ready.
  var meta = document.querySelector("meta[http-equiv=refresh]");
  if (meta) meta.parentNode.removeChild(meta);
  note.textContent = "This page follows the work and moves on by itself when it is done.";

  function fmt(s) {
    s = Math.max(0, Math.floor(s));
    if (s < 60) return s + " s";
    var m = Math.floor(s / 60); s %%= 60;
    if (m < 60) return m + " min " + (s < 10 ? "0" : "") + s + " s";
    var h = Math.floor(m / 60); m %%= 60;
    return h + " h " + (m < 10 ? "0" : "") + m + " min";
  }
  function tick() {
    var s = base + (Date.now() - since) / 1000;
    elapsed.textContent = fmt(s);
    elapsed.setAttribute("datetime", "PT" + Math.floor(s) + "S");
  }
  var clock = setInterval(tick, 1000);

  function show(doc) {
    base = doc.elapsed || base; since = Date.now(); tick();
    state.textContent = states[doc.state] || doc.state;
    if (doc.message !== null && doc.message !== undefined) message.textContent = doc.message;
    if (doc.progress !== null && doc.progress !== undefined) {
      var pct = Math.round(doc.progress * 100);
      fill.className = "fill"; fill.style.width = pct + "%%";
      percent.textContent = pct + "%%";
      bar.setAttribute("aria-valuenow", pct);
      bar.setAttribute("aria-valuetext", pct + "%%" + (doc.message ? ", " + doc.message : ""));
      document.title = pct + "%% · " + title;
    }
  }
  function leave() {
    if (done) return;
    done = true; clearInterval(clock);
    window.location.replace(url);
  }
  function poll() {
    var ctrl = window.AbortController ? new AbortController() : null;
    fetch(url, {headers: {"Accept": "application/json", "Prefer": "wait=%(wait)d"},
                cache: "no-store", credentials: "same-origin",
                signal: ctrl ? ctrl.signal : undefined})
      .then(function (r) {
        if (r.status !== 202) {  // ready (or gone): let the browser fetch and show it
          if (ctrl) ctrl.abort();  // not this copy of the body
          leave();
          return null;
        }
        // Not held (the server's hold budget is spent): reload after Retry-After instead
        // of asking again at once, so refused long polls cost the server no more than
        // the plain Refresh would.
        var applied = (r.headers.get("Preference-Applied") || "").toLowerCase();
        var held = applied.indexOf("wait") >= 0;
        var after = Math.max(1, parseInt(r.headers.get("Retry-After"), 10) || 1);
        return r.json().then(function (doc) {
          doc._held = held; doc._after = after; return doc;
        });
      })
      .then(function (doc) {
        if (!doc) return;
        show(doc);
        if (doc._held) poll();
        else {
          note.textContent = "This page reloads until the result is ready.";
          setTimeout(leave, doc._after * 1000);
        }
      })
      .catch(function () { setTimeout(leave, 2000); });
  }
  function start() {
    try { window.stop(); } catch (e) {}  // before polling: stop() would abort a fetch too
    poll();
  }
  if (document.readyState === "complete") start();
  else window.addEventListener("load", start);
})();
</script>
"""


def _status_page(document: dict[str, Any], refresh: int | None) -> str:
    state = document["state"]
    url = escape(document["status_url"])
    label = escape(document["label"] or "your request")
    state_text = escape(_STATE_TEXT.get(state, state))
    elapsed = float(document["elapsed"])
    message = escape(document["message"] or "")
    details = (
        "<dl>\n"
        f'<dt>Request</dt><dd><code id="label">{label}</code></dd>\n'
        f'<dt>State</dt><dd id="state">{state_text}</dd>\n'
        f'<dt>Elapsed</dt><dd><time id="elapsed" datetime="PT{int(elapsed)}S" '
        f'data-seconds="{elapsed:.3f}">{format_elapsed(elapsed)}</time></dd>\n'
        "</dl>"
    )
    if state not in (TaskState.QUEUED.value, TaskState.RUNNING.value):
        title = {
            TaskState.CANCELLED.value: "Cancelled",
            TaskState.LOST.value: "The request was lost",
        }.get(state, "The request failed")
        body = f"<h1>{escape(title)}</h1>\n{details}\n"
        if message:
            body += f'<p class="message" id="message">{message}</p>\n'
        return _PAGE.format(title=escape(title), head="", main_attrs="", body=body, script="")

    progress = document["progress"]
    if progress is None:
        fill = '<div class="fill unknown" id="fill"></div>'
        # Indeterminate (WAI-ARIA 1.2): no aria-valuenow until the application reports one.
        aria = 'aria-valuetext="waiting for progress"'
        percent = ""
    else:
        pct = round(progress * 100)
        fill = f'<div class="fill" id="fill" style="width:{pct}%"></div>'
        aria = f'aria-valuenow="{pct}" aria-valuetext="{pct}%"'
        percent = f"{pct}%"
    title = "Working on it…"
    seconds = max(1, int(refresh or 1))
    body = (
        f'<h1 id="heading">{title}</h1>\n'
        f"{details}\n"
        '<div class="progress">'
        '<div class="bar" id="bar" role="progressbar" aria-labelledby="heading" '
        f'aria-valuemin="0" aria-valuemax="100" {aria}>{fill}</div>'
        f'<span class="percent" id="percent" aria-hidden="true">{percent}</span></div>\n'
        f'<p class="message" id="message" role="status" aria-live="polite">{message}</p>\n'
        f'<p class="note" id="note">This page reloads every {seconds} s until the result is '
        "ready, then shows it.</p>\n"
        '<div class="actions">\n'
        f'<form method="post" action="{url}">'
        '<input type="hidden" name="action" value="cancel">'
        '<button type="submit">Cancel</button></form>\n'
        f'<a href="{url}">Check now</a>\n'
        "</div>"
    )
    head = f'<meta http-equiv="refresh" content="{seconds};url={url}">\n'
    script = _SCRIPT % {"states": json.dumps(_STATE_TEXT), "wait": POLL_WAIT}
    return _PAGE.format(
        title=title,
        head=head,
        main_attrs=f' data-status-url="{url}"',
        body=body,
        script=script,
    )

"""Bodies of the responses the middleware itself writes: JSON for programs, small
self-contained HTML pages for browsers (no external assets, works with JavaScript off).

Which one is chosen follows ``Accept``: JSON unless the client prefers ``text/html``.
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


def status_document(record: TaskRecord, status_url: str) -> dict[str, Any]:
    """The JSON status of a task (also the data behind the HTML page)."""
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
    }


def render_status(
    record: TaskRecord, status_url: str, html: bool, refresh: int | None = None
) -> tuple[bytes, str]:
    """``(body, content_type)`` for a task's status; *refresh* seconds for waiting pages."""
    document = status_document(record, status_url)
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
        body=f"<h1>{title}</h1><p>{escape(message)}</p>",
        script="",
    )
    return page.encode(), HTML_TYPE


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
{head}<title>{title}</title>
<style>
body{{font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
color:#1b1b1b;background:#f6f6f4}}
main{{max-width:34rem;margin:12vh auto;padding:1.5rem;background:#fff;border-radius:.5rem;
box-shadow:0 1px 4px rgba(0,0,0,.12)}}
h1{{font-size:1.3rem;margin:0 0 .5rem}}
.bar{{height:.9rem;background:#e3e3e0;border-radius:.45rem;overflow:hidden;margin:1rem 0 .4rem}}
.fill{{height:100%;background:#2f6fdb;transition:width .4s}}
.fill.unknown{{width:35%;animation:slide 1.4s ease-in-out infinite}}
@keyframes slide{{0%{{margin-left:-35%}}100%{{margin-left:100%}}}}
@media (prefers-reduced-motion:reduce){{.fill.unknown{{animation:none;width:100%;opacity:.4}}}}
.meta{{color:#555;font-size:.9rem}}
button{{font:inherit;padding:.4rem 1rem;margin-top:1rem;border:1px solid #999;
border-radius:.3rem;background:#fff;cursor:pointer}}
a{{color:#2f6fdb}}
</style>
</head>
<body>
<main>
{body}
</main>
{script}</body>
</html>
"""

_SCRIPT = """<script>
(function () {
  // Progressive enhancement: long-poll the JSON status (RFC 7240 "Prefer: wait") and move
  // on the moment the task ends; the meta refresh above does the same without JavaScript.
  var url = %(url)s, bar = document.getElementById("bar"), fill = document.getElementById("fill");
  var state = document.getElementById("state"), msg = document.getElementById("message");
  var refresh = document.querySelector("meta[http-equiv=refresh]");
  if (refresh) refresh.parentNode.removeChild(refresh);
  function poll() {
    fetch(url, {headers: {"Accept": "application/json", "Prefer": "wait=10"},
                cache: "no-store", credentials: "same-origin"})
      .then(function (r) {
        if (r.status !== 202) { window.location.replace(url); return null; }
        return r.json();
      })
      .then(function (doc) {
        if (!doc) return;
        state.textContent = doc.state;
        if (doc.message) msg.textContent = doc.message;
        if (doc.progress !== null) {
          var pct = Math.round(doc.progress * 100);
          fill.className = "fill"; fill.style.width = pct + "%%";
          bar.setAttribute("aria-valuenow", pct); bar.setAttribute("aria-valuetext", pct + "%%");
        }
        poll();
      })
      .catch(function () { setTimeout(function () { window.location.replace(url); }, 2000); });
  }
  poll();
})();
</script>
"""


def _status_page(document: dict[str, Any], refresh: int | None) -> str:
    state = document["state"]
    url = document["status_url"]
    label = escape(document["label"] or "Your request")
    waiting = state in (TaskState.QUEUED.value, TaskState.RUNNING.value)
    progress = document["progress"]
    if progress is None:
        fill = '<div class="fill unknown" id="fill"></div>'
        aria = 'aria-valuetext="in progress"'
    else:
        pct = round(progress * 100)
        fill = f'<div class="fill" id="fill" style="width:{pct}%"></div>'
        aria = f'aria-valuenow="{pct}" aria-valuetext="{pct}%"'
    message = escape(document["message"] or "")
    elapsed = int(document["elapsed"])
    if waiting:
        title = "Working on it…"
        body = (
            f"<h1>{title}</h1>\n<p>{label}</p>\n"
            f'<div class="bar" id="bar" role="progressbar" aria-label="Progress" '
            f'aria-valuemin="0" aria-valuemax="100" {aria}>{fill}</div>\n'
            f'<p class="meta">State: <strong id="state">{escape(state)}</strong> · '
            f"running for {elapsed} s</p>\n"
            f'<p id="message" aria-live="polite">{message}</p>\n'
            f'<p class="meta">This page updates by itself. '
            f'<a href="{escape(url)}">Check now</a>.</p>\n'
            f'<form method="post" action="{escape(url)}">'
            f'<input type="hidden" name="action" value="cancel">'
            f'<button type="submit">Cancel</button></form>'
        )
        head = f'<meta http-equiv="refresh" content="{refresh or 1};url={escape(url)}">\n'
        script = _SCRIPT % {"url": json.dumps(url)}
    else:
        title = "The request failed" if state != "cancelled" else "Cancelled"
        body = (
            f"<h1>{title}</h1>\n<p>{label}</p>\n"
            f'<p class="meta">State: <strong id="state">{escape(state)}</strong></p>\n'
            f'<p id="message">{message}</p>'
        )
        head, script = "", ""
    return _PAGE.format(title=escape(title), head=head, body=body, script=script)

"""The classic case: a Flask endpoint that takes ~10 s, made proxy-proof by one line.

Run it (from the repository root)::

    gunicorn --chdir examples --workers 1 --threads 8 --bind 127.0.0.1:8000 flask_app:app

Then::

    curl -i -X POST localhost:8000/render/42 -H 'Content-Type: application/json' \\
         -d '{"text_list": ["hello", "world"]}'
    # 202 Accepted, Location: /status/<id>
    curl -i localhost:8000/status/<id>        # 202 while running, then the 200 below
    curl -i -H 'Prefer: wait=20' localhost:8000/status/<id>   # long poll

Or open http://127.0.0.1:8000/ in a browser and submit the form: no JavaScript is needed.
``EXAMPLE_WORK_SECONDS`` (default 10) sets how long a render takes.
"""

from __future__ import annotations

import os
import time

from flask import Flask, abort, jsonify, request

from wsgi_deferred import DeferredMiddleware

app = Flask(__name__)
WORK_SECONDS = float(os.environ.get("EXAMPLE_WORK_SECONDS", "10"))
STEPS = 10


@app.get("/")
def index() -> str:
    return """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Render</title></head>
<body><h1>Render some text</h1>
<form method="post" action="/render/1">
<label>Lines <textarea name="text" rows="3">hello
world</textarea></label>
<button type="submit">Render</button></form></body></html>"""


@app.get("/hello")
def hello() -> str:
    return "hello"


@app.post("/render/<int:job_id>")
def render(job_id: int):  # type: ignore[no-untyped-def]
    # The app does not know it is deferred; it may use these extras when they are there.
    progress = request.environ.get("wsgi_deferred.progress", lambda *a, **k: None)
    cancelled = request.environ.get("wsgi_deferred.cancelled", lambda: False)
    if request.is_json:
        payload = request.get_json(silent=True) or {}
        text_list = payload.get("text_list")
        if not isinstance(text_list, list) or not all(isinstance(t, str) for t in text_list):
            abort(400, "text_list must be a list of strings")
    else:
        text_list = request.form.get("text", "").splitlines()
    for step in range(STEPS):
        if cancelled():
            return jsonify(cancelled=True), 409
        time.sleep(WORK_SECONDS / STEPS)
        progress((step + 1) / STEPS, f"rendered {step + 1} of {STEPS} parts")
    rendered = [text.upper() for text in text_list]
    if request.is_json:
        return jsonify(id=job_id, rendered=rendered)
    items = "".join(f"<li>{line}</li>" for line in rendered)
    return f'<!doctype html><html lang="en"><title>Done</title><h1>Rendered</h1><ul>{items}</ul>'


# The one line: slow routes answer 202 at once and run in the background.
app.wsgi_app = DeferredMiddleware(app.wsgi_app, routes=["POST /render/<int:job_id>"])  # type: ignore[method-assign]

"""Fixture WSGI applications, one per PEP 3333 quirk, and the helpers that drive WSGI apps
in-process for the core test suite.

Every slow app is controlled by :class:`threading.Event` objects, never by sleeping, so the
tests are deterministic: a test decides exactly when a "slow" request finishes.

Importable as ``apps:<name>`` (``tests/`` is on ``sys.path``, see ``conftest.py``), which the
``wrap("module:attr")`` tests rely on.
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from werkzeug.test import EnvironBuilder

from wsgi_deferred import DeferredMiddleware

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]

#: Seconds a test is willing to wait for anything that should be near-instant.
PATIENCE = 5.0
TEXT = [("Content-Type", "text/plain; charset=utf-8")]


class AppError(Exception):
    """Raised on purpose by the failing fixture apps (never raised by the library)."""


# -- one app per PEP 3333 quirk --------------------------------------------------------------


def plain_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """The textbook app: start_response, then a list of byte strings."""
    body = [b"hello ", b"world"]
    start_response("200 OK", [*TEXT, ("Content-Length", "11"), ("X-Plain", "yes")])
    return body


def write_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Uses the legacy ``write`` callable, then returns more body (PEP 3333 allows both)."""
    write = start_response("200 OK", [*TEXT, ("X-Write", "1")])
    write(b"written, ")
    write(b"")
    return [b"then ", b"returned"]


def lazy_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Calls start_response only when first iterated (a generator app)."""

    def body() -> Iterator[bytes]:
        yield b""  # an empty chunk before start_response is allowed
        start_response("201 Created", [*TEXT, ("X-Lazy", "1")])
        yield b"lazy "
        yield b"body"

    return body()


def exc_info_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """start_response, then an error, then start_response again with exc_info and a 500,
    before any body was produced: the second call replaces the headers."""
    start_response("200 OK", [*TEXT, ("X-First", "1")])
    try:
        raise AppError("rendering failed")
    except AppError:
        start_response("500 Internal Server Error", [*TEXT, ("X-Second", "1")], sys.exc_info())
    return [b"error page"]


def exc_info_after_body_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Sends some body, then fails and calls start_response with exc_info: the server must
    re-raise the app's exception (headers already "sent"), so the task fails."""

    def body() -> Iterator[bytes]:
        start_response("200 OK", TEXT)
        yield b"partial"
        try:
            raise AppError("failed after the body started")
        except AppError:
            start_response("500 Internal Server Error", TEXT, sys.exc_info())
        yield b"never reached"

    return body()


def second_start_response_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Calls start_response twice without exc_info: a PEP 3333 violation."""
    start_response("200 OK", TEXT)
    start_response("200 OK", TEXT)
    return [b"x"]


class ClosingBody:
    """An app_iter with ``close()`` that records it was called (and may fail mid-way)."""

    def __init__(self, chunks: list[bytes], fail_after: int | None = None) -> None:
        self.chunks = chunks
        self.fail_after = fail_after
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        for index, chunk in enumerate(self.chunks):
            if self.fail_after is not None and index >= self.fail_after:
                raise AppError("failed mid-iteration")
            yield chunk

    def close(self) -> None:
        self.closed.set()


class ClosingApp:
    """Returns a :class:`ClosingBody`; ``bodies`` keeps every one handed out."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.fail_after = fail_after
        self.bodies: list[ClosingBody] = []

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", TEXT)
        body = ClosingBody([b"one ", b"two ", b"three"], self.fail_after)
        self.bodies.append(body)
        return body

    @property
    def closed(self) -> bool:
        return bool(self.bodies) and all(body.closed.is_set() for body in self.bodies)


FILE_DATA = bytes(range(256)) * 300  # 76,800 bytes, several blocks


class _FileIterator:
    """The PEP 3333 fallback when the server offers no ``wsgi.file_wrapper``."""

    def __init__(self, filelike: Any, block_size: int) -> None:
        self.filelike = filelike
        self.block_size = block_size

    def __iter__(self) -> Iterator[bytes]:
        return iter(lambda: self.filelike.read(self.block_size), b"")

    def close(self) -> None:
        self.filelike.close()


class FileApp:
    """Returns a file through ``environ['wsgi.file_wrapper']`` when present; records the
    file objects it opened so tests can check they were closed."""

    def __init__(self) -> None:
        self.files: list[io.BytesIO] = []
        self.used_wrapper: list[bool] = []

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        filelike = io.BytesIO(FILE_DATA)
        self.files.append(filelike)
        start_response(
            "200 OK",
            [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(FILE_DATA)))],
        )
        wrapper = environ.get("wsgi.file_wrapper")
        self.used_wrapper.append(wrapper is not None)
        if wrapper is not None:
            return wrapper(filelike, 8192)
        return _FileIterator(filelike, 8192)


def raise_before_start_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    raise AppError("raised before start_response")


def raise_after_start_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", TEXT)
    raise AppError("raised after start_response")


def raise_mid_iteration_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    def body() -> Iterator[bytes]:
        start_response("200 OK", TEXT)
        yield b"first chunk"
        raise AppError("raised mid-iteration")

    return body()


def no_start_response_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Returns an empty body and never calls start_response."""
    return []


def str_body_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Yields ``str`` instead of ``bytes``: a protocol error."""
    start_response("200 OK", TEXT)
    return ["not bytes"]  # type: ignore[list-item]


def hop_by_hop_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Sends hop-by-hop headers (forbidden to apps by PEP 3333, but legacy apps do it) and
    repeated end-to-end headers whose order must be kept."""
    start_response(
        "200 OK",
        [
            *TEXT,
            ("Connection", "close"),
            ("Set-Cookie", "a=1; Path=/"),
            ("Keep-Alive", "timeout=5"),
            ("Set-Cookie", "b=2; Path=/"),
            ("X-Custom", "kept"),
        ],
    )
    return [b"hop"]


def big_app(size: int) -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    """An app whose body is *size* bytes of a repeating pattern, sent in 64 KiB chunks."""
    pattern = bytes(range(251))  # 251 is prime: chunk borders never line up with it
    data = (pattern * (size // len(pattern) + 1))[:size]

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response(
            "200 OK",
            [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))],
        )
        return [data[i : i + 65536] for i in range(0, size, 65536)]

    app.data = data  # type: ignore[attr-defined]
    return app


def read_request_body(environ: Environ) -> bytes:
    """Read ``wsgi.input`` as PEP 3333 says: to EOF when terminated, else CONTENT_LENGTH."""
    stream = environ["wsgi.input"]
    if environ.get("wsgi.input_terminated"):
        chunks = []
        while True:
            data = stream.read(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)
    length = int(environ.get("CONTENT_LENGTH") or 0)
    return stream.read(length) if length > 0 else b""


def echo_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Echoes method, path, query, selected headers and body as JSON (property tests)."""
    body = read_request_body(environ)
    path = environ.get("PATH_INFO", "")
    document = {
        "method": environ["REQUEST_METHOD"],
        "script_name": environ.get("SCRIPT_NAME", ""),
        "path": path.encode("latin-1").decode("utf-8", "replace"),
        "raw_path": path,
        "query": environ.get("QUERY_STRING", ""),
        "content_type": environ.get("CONTENT_TYPE", ""),
        "headers": {
            key: value
            for key, value in sorted(environ.items())
            if key.startswith("HTTP_") and key not in ("HTTP_PREFER", "HTTP_HOST")
        },
        "body": body.hex(),
    }
    data = json.dumps(document, sort_keys=True).encode()
    status = "201 Created" if environ["REQUEST_METHOD"] == "POST" else "200 OK"
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("X-Echo-Method", environ["REQUEST_METHOD"]),
            ("X-Body-Length", str(len(body))),
        ],
    )
    return [data]


class SlowApp:
    """A slow app under the test's control: each call sets ``started`` and then blocks until
    ``release`` is set (never longer than PATIENCE, so a broken test cannot hang the run).

    ``paths`` records the PATH_INFO of every call, in order; ``environs`` the environs."""

    instances: weakref.WeakSet[SlowApp] = weakref.WeakSet()

    def __init__(self, body: bytes = b"slow done", error: Exception | None = None) -> None:
        self.body = body
        self.error = error
        self.started = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()
        self.paths: list[str] = []
        self.environs: list[Environ] = []
        self.cancelled_seen = threading.Event()
        self._lock = threading.Lock()
        SlowApp.instances.add(self)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        with self._lock:
            self.paths.append(environ.get("PATH_INFO", ""))
            self.environs.append(environ)
        self.started.set()
        try:
            cancelled = environ.get("wsgi_deferred.cancelled")
            deadline = time.monotonic() + PATIENCE
            while not self.release.wait(0.005) and time.monotonic() < deadline:
                if cancelled is not None and cancelled():
                    self.cancelled_seen.set()
            if self.error is not None:
                raise self.error
            start_response(
                "200 OK", [*TEXT, ("Content-Length", str(len(self.body))), ("X-Slow", "1")]
            )
            return [self.body]
        finally:
            self.finished.set()

    @classmethod
    def release_all(cls) -> None:
        for app in list(cls.instances):
            app.release.set()


class ProgressApp:
    """Reports progress and a message, then waits for ``proceed`` while watching
    ``cancelled()``; ``reported`` is set once the progress was reported."""

    def __init__(self) -> None:
        self.reported = threading.Event()
        self.proceed = threading.Event()
        self.saw_cancel = threading.Event()
        self.finished = threading.Event()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        progress = environ["wsgi_deferred.progress"]
        cancelled = environ["wsgi_deferred.cancelled"]
        try:
            progress(0.25)
            progress(0.5, "halfway there")
            self.reported.set()
            deadline = time.monotonic() + PATIENCE
            while not self.proceed.wait(0.005) and time.monotonic() < deadline:
                if cancelled():
                    self.saw_cancel.set()
                    break
            start_response("200 OK", TEXT)
            return [b"cancelled" if self.saw_cancel.is_set() else b"progress done"]
        finally:
            self.finished.set()


class EnvironRecorder:
    """Records a copy of every environ it is called with (from any thread)."""

    def __init__(self) -> None:
        self.environs: list[Environ] = []
        self.bodies: list[bytes] = []
        self.called = threading.Event()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        self.bodies.append(read_request_body(environ))
        self.environs.append(dict(environ))
        self.called.set()
        start_response("200 OK", TEXT)
        return [b"recorded"]


def status_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """An app with its own ``/status/...`` routes: answers ``app:<PATH_INFO>``."""
    body = f"app:{environ.get('PATH_INFO', '')}".encode("latin-1")
    start_response("200 OK", [*TEXT, ("Content-Length", str(len(body)))])
    return [body]


class Router:
    """Sends each request to the app of the longest matching PATH_INFO prefix, else to
    *default*: one middleware in front of several fixture apps."""

    def __init__(
        self,
        routes: dict[str, Callable[..., Iterable[bytes]]],
        default: Callable[..., Iterable[bytes]] = plain_app,
    ) -> None:
        self.routes = sorted(routes.items(), key=lambda item: -len(item[0]))
        self.default = default

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        for prefix, app in self.routes:
            if path.startswith(prefix):
                return app(environ, start_response)
        return self.default(environ, start_response)


NOT_CALLABLE = "not a WSGI app"  # for wrap("apps:NOT_CALLABLE")


# -- driving WSGI apps in-process -------------------------------------------------------------


@dataclass
class Result:
    """What a strict WSGI server would have sent for one request."""

    status: str
    headers: list[tuple[str, str]]
    body: bytes
    #: Type of the app_iter the app returned (to see ``wsgi.file_wrapper`` being used).
    iter_type: type = list
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def code(self) -> int:
        return int(self.status.split(" ", 1)[0])

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_list(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def location(self) -> str:
        location = self.header("Location")
        assert location is not None, f"no Location in {self.status} {self.headers}"
        return location

    @property
    def task_id(self) -> str:
        return self.location.rsplit("/", 1)[1]


def make_environ(
    path: str = "/",
    method: str = "GET",
    *,
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    data: bytes | None = None,
    query_string: str | None = None,
    content_type: str | None = None,
    **overrides: Any,
) -> Environ:
    """A WSGI environ for one request (werkzeug's EnvironBuilder), with *overrides* applied."""
    builder = EnvironBuilder(
        path=path,
        method=method,
        headers=headers,
        data=data,
        query_string=query_string,
        content_type=content_type,
    )
    try:
        environ = builder.get_environ()
    finally:
        builder.close()
    # As a threaded server (gthread, waitress) says: only there are status polls held
    # (docs/protocol.md, "Holds"); sync-worker tests pass ``**{"wsgi.multithread": False}``.
    environ["wsgi.multithread"] = True
    environ.update(overrides)
    return environ


def call(app: Callable[..., Iterable[bytes]], environ: Environ) -> Result:
    """Run *app* like a strict, buffering WSGI server (PEP 3333): honours exc_info, the
    write callable and lazy start_response, and always closes the app_iter."""
    response: dict[str, Any] = {}
    body: list[bytes] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if any(body):
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif "status" in response:
            raise AssertionError("start_response called twice without exc_info")
        response["status"], response["headers"] = status, list(headers)
        return body.append

    result = app(environ, start_response)
    try:
        for chunk in result:
            assert isinstance(chunk, bytes), f"app yielded {type(chunk).__name__}"
            body.append(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    assert "status" in response, "start_response was never called"
    return Result(response["status"], response["headers"], b"".join(body), type(result))


def request(app: Callable[..., Iterable[bytes]], method: str, path: str, **kwargs: Any) -> Result:
    """``call(app, make_environ(path, method, **kwargs))``."""
    return call(app, make_environ(path, method, **kwargs))


def status_request(
    app: Callable[..., Iterable[bytes]],
    location: str,
    method: str = "GET",
    *,
    wait: float | None = None,
    script_name: str = "",
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> Result:
    """Request a status URL (as given by ``Location``); *wait* adds ``Prefer: wait=N``."""
    assert location.startswith(script_name)
    all_headers = dict(headers or {})
    if wait is not None:
        all_headers["Prefer"] = f"wait={wait}"
    return request(
        app,
        method,
        location[len(script_name) :],
        headers=all_headers,
        SCRIPT_NAME=script_name,
        **kwargs,
    )


def result_of(app: Callable[..., Iterable[bytes]], accepted: Result, **kwargs: Any) -> Result:
    """The final answer for a 202: long-poll its status URL (``Prefer: wait=5``)."""
    assert accepted.code == 202, f"expected a 202, got {accepted.status}: {accepted.body!r}"
    return status_request(app, accepted.location, wait=PATIENCE, **kwargs)


def wait_until(predicate: Callable[[], bool], timeout: float = PATIENCE) -> bool:
    """Poll *predicate* every few milliseconds; True as soon as it holds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.002)
    return True


def pool_threads() -> set[threading.Thread]:
    """Every live thread started by a wsgi_deferred worker pool."""
    return {
        t for t in threading.enumerate() if t.name.startswith("wsgi-deferred-") and t.is_alive()
    }


class Harness:
    """Creates middlewares for one test and closes them all afterwards (releasing every
    SlowApp first, so no drain has to wait), then checks that their threads are gone."""

    def __init__(self) -> None:
        self.created: list[DeferredMiddleware] = []

    def __call__(self, app: Callable[..., Iterable[bytes]], **options: Any) -> DeferredMiddleware:
        options.setdefault("store", "memory://")
        options.setdefault("workers", 2)
        options.setdefault("drain_timeout", PATIENCE)
        mw = DeferredMiddleware(app, **options)
        self.created.append(mw)
        return mw

    def close(self) -> None:
        SlowApp.release_all()
        for mw in self.created:
            mw.close()
        for mw in self.created:
            # A close() that already timed out (a test's short drain) leaves a thread that
            # ends once its task is released: give it that moment, then insist.
            for thread in mw.pool.threads():
                thread.join(PATIENCE)
            alive = [t for t in mw.pool.threads() if t.is_alive()]
            assert not alive, f"threads left running after close(): {alive}"

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

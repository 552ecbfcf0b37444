"""``wsgi-deferred worker APP``: run the execution tier's worker for the app the web tier serves.

APP is the same import string as for ``serve``. When it names a
:class:`~wsgi_deferred.DeferredMiddleware` (``wrap(...)`` included) its store, executor, rules
and options are used as they are; a plain WSGI app is wrapped with the flags and
``WSGI_DEFERRED_*`` variables, as ``serve`` does. APP is imported once, in this process, before
the engine forks its pool children (docs/execution.md, "Execution tier"). An APP that does not
import, names no shared store, or no remote executor, is a usage error: one line, exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import DeferredError
from ..factory import load_app
from ..middleware import DeferredMiddleware
from .options import PROG, UsageError, _add_middleware_options, _Parser, middleware_options
from .serve import _logging, describe_import_error

__all__ = ["build_worker_parser", "worker"]

WORKER_DESCRIPTION = """\
Run the worker of the execution tier: a prefork pool that replays deferred requests sent by
the web tier (executor=celery+... or rq+...) against the application inside the middleware.

APP is what the web tier serves: a DeferredMiddleware (its options are used as they are), or a
plain WSGI app wrapped with the options below and WSGI_DEFERRED_* variables, like "serve".
The store must be shared (sqlite:///... on one host, redis://... across hosts).
"""

WORKER_EPILOG = """\
examples:
  wsgi-deferred worker myapp.wsgi:application --store redis://redis:6379/0 \\
      --executor celery+amqp://guest@rabbit// --route "POST /render/<id>" --concurrency 4
  WSGI_DEFERRED_STORE=redis://redis:6379/0 wsgi-deferred worker myapp.deferred:app
"""


def build_worker_parser() -> _Parser:
    parser = _Parser(
        prog=f"{PROG} worker",
        usage=f"{PROG} worker APP [--concurrency N] [options]",
        description=WORKER_DESCRIPTION,
        epilog=WORKER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", metavar="APP", help="the WSGI application, e.g. app.wsgi:app")
    group = parser.add_argument_group("worker options")
    group.add_argument(
        "-c",
        "--concurrency",
        dest="worker_concurrency",
        type=int,
        default=None,
        metavar="N",
        help="pool processes (default: the engine's, one per CPU)",
    )
    group.add_argument(
        "--log-level",
        dest="worker_log_level",
        default="info",
        choices=["debug", "info", "warning", "error", "critical"],
        help="log level (default: info)",
    )
    group.add_argument(
        "--pythonpath",
        dest="worker_pythonpath",
        action="append",
        metavar="DIR",
        help="add DIR to the import path (repeatable); the current directory always is",
    )
    _add_middleware_options(parser)
    return parser


def load_middleware(args: argparse.Namespace) -> DeferredMiddleware:
    """The middleware APP names, or APP wrapped with the flags; UsageError otherwise."""
    for directory in reversed([os.getcwd(), *(args.worker_pythonpath or [])]):
        path = os.path.abspath(directory)
        if path not in sys.path:
            sys.path.insert(0, path)
    options = middleware_options(args, dict(os.environ))
    try:
        app = load_app(args.target)
    except BaseException as exc:  # the app's import may raise anything, even SystemExit
        raise UsageError(describe_import_error(args.target, exc)) from None
    if isinstance(app, DeferredMiddleware):
        middleware = app
    else:
        try:
            middleware = DeferredMiddleware(app, **options)
        except DeferredError as exc:
            raise UsageError(str(exc)) from None
    store = middleware.store_choice.store  # None: automatic, per web process
    if not middleware.store_choice.explicit or store is None or not store.shared:
        raise UsageError(
            f"{args.target!r} names no shared store: set --store sqlite:///path or "
            "redis://host:6379/0 (WSGI_DEFERRED_STORE), the same as the web tier's"
        )
    if not middleware.executor.remote:
        raise UsageError(
            f"{args.target!r} runs its tasks in the web process: set --executor "
            "celery+amqp://... (WSGI_DEFERRED_EXECUTOR), the same as the web tier's"
        )
    return middleware


def worker(args: argparse.Namespace) -> int:
    middleware = load_middleware(args)
    _logging(args.worker_log_level)  # the middleware's lines (each names its task) on stderr
    return middleware.executor.run_worker(
        middleware, args.worker_concurrency, args.worker_log_level
    )

"""The command line's parsers: texts, option types and the middleware/server flag groups."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from .. import __version__
from ..config import OPTIONS, merge_options, option_named, options_from_env
from ..errors import ConfigurationError
from ..middleware import DeferredMiddleware
from ..rules import RuleSet

PROG = "wsgi-deferred"
#: Exit status of usage and configuration errors (as argparse and gunicorn's ``--check-config``).
USAGE_ERROR = 2
#: gunicorn threads per worker process unless ``--threads`` says otherwise (see --help).
DEFAULT_THREADS = 8
#: Seconds gunicorn waits for a worker's graceful exit beyond the middleware's drain timeout.
GRACE_MARGIN = 5.0
PROBE_MARK = "wsgi-deferred-probe-error: "

DESCRIPTION = """\
Put wsgi_deferred in front of a WSGI application without changing it.

Requests that match a --route rule (or ask "Prefer: respond-async", or, with --defer-after,
take longer than that many seconds) are answered "202 Accepted" at once, with a Location
header pointing at a status URL (/status/<id>); the application runs them in a pool of
background threads, and its exact response is served from the status URL once it is ready.
Browsers get a waiting page that follows the work and moves on to the result by itself.
Everything else goes straight to the application.
"""

COMMANDS_EPILOG = """\
commands:
  serve      run the application behind the middleware under gunicorn
  check      show which sample requests a set of rules would defer
  tasks      list the tasks of a store (every process and host), or cancel one
  worker     run the execution tier's worker (executor=celery+... or rq+...)

Run "wsgi-deferred serve --help" or "wsgi-deferred check --help" for their options.

examples:
  wsgi-deferred serve legacy.wsgi:application --route "POST /render/<id>" --workers 4
  wsgi-deferred check --route "POST /render/<id>" "POST /render/1" "GET /render/1"
"""

SERVE_DESCRIPTION = """\
Run the WSGI application TARGET ("package.module:attribute", looked up from the current
directory like gunicorn does) wrapped by the middleware, under gunicorn in this process.

TARGET is first imported once in a short-lived child process, so that a mistyped import string
or an application that fails to import stops here with one line of explanation (exit status 2)
instead of a loop of crashing workers. Each gunicorn worker process then imports it for itself
(or the master imports it once with --preload).

The server options follow gunicorn: --workers is the number of worker processes and --threads
the number of request threads in each. The middleware's own background threads, which run the
deferred requests, are set by --pool-workers (per worker process). With several worker
processes the tasks must be visible to all of them: the default store then is a SQLite file
shared by the workers of this command; give --store sqlite:///path or --store redis://... to
choose (Redis when several hosts share a load balancer).
"""

SERVE_EPILOG = """\
rules:
  A rule is werkzeug's URL rule syntax with optional methods in front, e.g. "POST /render/<id>",
  "GET,POST /reports/<path:rest>" or "/export" (any method). --route and --exclude may be
  repeated; given on the command line they replace WSGI_DEFERRED_ROUTES / _EXCLUDE.

environment:
  Every middleware option can also be set by an environment variable WSGI_DEFERRED_<OPTION>,
  e.g. WSGI_DEFERRED_ROUTES="POST /render/<id>; /export" (rules separated by ";" or new
  lines), WSGI_DEFERRED_STORE, WSGI_DEFERRED_WORKERS (background threads, like
  --pool-workers), WSGI_DEFERRED_DEFER_AFTER. Flags win over variables. gunicorn's own
  PORT (default bind 0.0.0.0:$PORT) and WEB_CONCURRENCY (default --workers) apply as usual.

exit status:
  0 after a clean shutdown, 2 for a usage or configuration error (one line on stderr), and
  gunicorn's own status otherwise (1 if it cannot bind, 3 if a worker fails to boot).

examples:
  Defer one slow route of a legacy app; 4 processes share a SQLite store:
    wsgi-deferred serve legacy.wsgi:application --route "POST /render/<id>" \\
        --store sqlite:///var/tmp/deferred.db --workers 4 --threads 8 --bind 127.0.0.1:8000

  Nobody knows which routes are slow: defer whatever takes more than 20 seconds,
  except the health check:
    wsgi-deferred serve legacy.wsgi:application --defer-after 20 --exclude "GET /health"

  Several hosts behind a load balancer, results kept an hour, metrics for Prometheus:
    wsgi-deferred serve app:app --route "/reports/<path:rest>" --store redis://redis:6379/0 \\
        --result-ttl 3600 --metrics-path /_deferred/metrics --bind 0.0.0.0:8000

  Check rules before deploying (same options, "check" instead of "serve"):
    wsgi-deferred check --route "POST /render/<id>" "POST /render/1" "GET /render/1"
"""

CHECK_DESCRIPTION = """\
Show, for each sample REQUEST, what the middleware configured by these options would do with
it: defer it (answer 202 and run it in the background), pass it through to the application,
or answer it itself as a status URL (or as the metrics endpoint); and why: which rule matched.

A REQUEST is "[METHOD] PATH" (GET when the method is left out), e.g. "POST /render/1" or
"/export?year=2024"; add "Prefer: respond-async" after the path to see the effect of that
header. An optional TARGET (an import string) is imported to check that it names a WSGI
application. The options are those of "serve", read the same way (flags, then WSGI_DEFERRED_*
variables), so a serve command line can be checked by writing "check" instead of "serve" and
appending sample requests; server options such as --workers are accepted and ignored.
"""

CHECK_EPILOG = """\
examples:
  wsgi-deferred check --route "POST /render/<id>" --exclude "GET /health" \\
      "POST /render/1" "GET /render/1" "GET /health" "GET /status/abc"

  WSGI_DEFERRED_ROUTES="POST /render/<id>" wsgi-deferred check legacy.wsgi:application \\
      "POST /render/7" "GET /hello Prefer: respond-async"

exit status:
  0 when the options are valid (whatever the verdicts), 2 for a usage or configuration error.
"""


class UsageError(Exception):
    """Reported as one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line (no usage dump) and exit with status 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: error: {message} (see '{self.prog} --help')")


def fail(line: str) -> NoReturn:
    print(line, file=sys.stderr)
    raise SystemExit(USAGE_ERROR)


# -- options ----------------------------------------------------------------------------------


def _option_type(name: str) -> Callable[[str], Any]:
    option = option_named(name)

    def convert(text: str) -> Any:
        try:
            return option.parse(text.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{exc} (got {text!r})") from None

    convert.__name__ = option.metavar.lower()  # argparse names the type in some messages
    return convert


def _rule(text: str) -> str:
    try:
        RuleSet([text])
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number (got {text!r})") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {text!r})")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (got {text!r})") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more (got {text!r})")
    return value


def _address(text: str) -> str:
    from gunicorn.util import parse_address

    try:
        parse_address(text)
    except (RuntimeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{exc} (got {text!r})") from None
    return text


#: (flag, option name, help) for the middleware options; each help says its variable.
_MIDDLEWARE_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("--store", "store", "where tasks live: memory://, sqlite:///path/to.db or "
     "redis://host:6379/0 (default: memory for one worker process, otherwise a SQLite file "
     "shared by the workers of this command)"),
    ("--pool-workers", "workers", "background threads per worker process that run deferred "
     "requests (default: 8)"),
    ("--max-pending", "max_pending", "queued + running tasks per process before new ones get "
     "503 Service Unavailable (default: 1000)"),
    ("--max-pending-per-client", "max_pending_per_client", "queued + running tasks one client "
     "may have before it gets 429 Too Many Requests (default: no limit); a client is its "
     "--bind-to credential, else its address"),
    ("--defer-after", "defer_after", "run every request that is not excluded in the pool and "
     "answer 202 only for those still running after SECONDS; faster ones are answered inline, "
     "unchanged (default: off)"),
    ("--status-path", "status_path", "prefix of the status URLs (default: /status/)"),
    ("--result-ttl", "result_ttl", "seconds a finished result stays fetchable (default: 600)"),
    ("--max-body", "max_body", "largest request body that is deferred, in bytes or with K, M, "
     "G (default: 100M); larger ones get 413 on a route, or run inline under --defer-after"),
    ("--lease-timeout", "lease_timeout", "seconds without a heartbeat after which a running "
     "task whose process died reads 'lost' (default: 30)"),
    ("--bind-to", "bind", "tie each status URL to the requester that created it: "
     "'authorization' (the Authorization header), 'cookie:NAME' or 'remote_user'; others "
     "get 404 (default: off)"),
    ("--max-wait", "max_wait", "longest a 'Prefer: wait=N' request is held (default: 25)"),
    ("--max-holds", "max_holds", "requests each worker process may hold at once (long polls "
     "with 'Prefer: wait', inline waits); past it they are answered at once (default: a "
     "quarter of --threads, 2 with --threads 8; 'auto' outside serve)"),
    ("--drain-timeout", "drain_timeout", "seconds running tasks get to finish when a worker "
     "stops (default: 25)"),
    ("--metrics-path", "metrics_path", "serve Prometheus metrics at this path, e.g. "
     "/_deferred/metrics (default: off); keep it away from the public internet"),
    ("--executor", "executor", "where deferred requests run: threads (this process, the "
     "default), celery+amqp://user@host//, celery+redis://host:6379/1 or rq+redis://host/2 "
     "(then run 'wsgi-deferred worker' too; needs a shared --store)"),
    ("--max-attempts", "max_attempts", "runs at most of a task on a --retry rule "
     "(default: 3)"),
)  # fmt: skip


def _add_middleware_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "middleware options",
        "Each also reads WSGI_DEFERRED_<OPTION> from the environment; a flag wins over it.",
    )
    group.add_argument(
        "--route",
        dest="routes",
        action="append",
        type=_rule,
        metavar="RULE",
        default=argparse.SUPPRESS,
        help="defer requests matching RULE, e.g. 'POST /render/<id>' (repeatable; "
        "WSGI_DEFERRED_ROUTES)",
    )
    group.add_argument(
        "--exclude",
        dest="exclude",
        action="append",
        type=_rule,
        metavar="RULE",
        default=argparse.SUPPRESS,
        help="never defer requests matching RULE, e.g. 'GET /health' (repeatable; "
        "WSGI_DEFERRED_EXCLUDE)",
    )
    group.add_argument(
        "--retry",
        dest="retry",
        action="append",
        type=_rule,
        metavar="RULE",
        default=argparse.SUPPRESS,
        help="run a task matching RULE again elsewhere when the process running it died "
        "(only for requests safe to run twice; needs a shared --store; repeatable; "
        "WSGI_DEFERRED_RETRY)",
    )
    for flag, name, text in _MIDDLEWARE_FLAGS:
        option = option_named(name)
        group.add_argument(
            flag,
            dest=name,
            type=_option_type(name),
            metavar=option.metavar,
            default=argparse.SUPPRESS,
            help=f"{text} [{option.env}]",
        )
    group.add_argument(
        "--no-prefer",
        dest="honor_prefer",
        action="store_false",
        default=argparse.SUPPRESS,
        help="ignore the RFC 7240 'Prefer: respond-async' and 'Prefer: wait=N' request headers "
        "(default: honour them) [WSGI_DEFERRED_HONOR_PREFER=0]",
    )
    group.add_argument(
        "--prefer",
        dest="honor_prefer",
        action="store_true",
        default=argparse.SUPPRESS,
        help="honour them even if WSGI_DEFERRED_HONOR_PREFER says otherwise",
    )

    group.add_argument(
        "--debug",
        dest="debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the traceback of a failed task to the client instead of only logging it; "
        "for development, never in production [WSGI_DEFERRED_DEBUG=1]",
    )


def _add_server_options(parser: argparse.ArgumentParser, hidden: bool = False) -> None:
    def helptext(text: str) -> str:
        return argparse.SUPPRESS if hidden else text

    group = parser.add_argument_group(
        "server options (gunicorn)",
        None if hidden else "Passed to gunicorn's settings of the same meaning.",
    )
    group.add_argument(
        "-b",
        "--bind",
        dest="gunicorn_bind",
        action="append",
        type=_address,
        metavar="ADDRESS",
        help=helptext(
            "HOST:PORT or unix:PATH to listen on (repeatable; default: 127.0.0.1:8000, or "
            "0.0.0.0:$PORT when PORT is set)"
        ),
    )
    group.add_argument(
        "-w",
        "--workers",
        dest="gunicorn_workers",
        type=_positive_int,
        metavar="N",
        help=helptext("gunicorn worker processes (default: $WEB_CONCURRENCY or 1)"),
    )
    group.add_argument(
        "--threads",
        dest="gunicorn_threads",
        type=_positive_int,
        metavar="N",
        default=DEFAULT_THREADS,
        help=helptext(
            f"request threads per worker process (default: {DEFAULT_THREADS}, unlike gunicorn's "
            "1: a browser's waiting page holds a thread while it long-polls)"
        ),
    )
    group.add_argument(
        "-t",
        "--timeout",
        dest="gunicorn_timeout",
        type=_seconds,
        metavar="SECONDS",
        help=helptext("gunicorn's worker timeout (default: 30); deferred work is not bound by it"),
    )
    group.add_argument(
        "--graceful-timeout",
        dest="gunicorn_graceful_timeout",
        type=_seconds,
        metavar="SECONDS",
        help=helptext(
            "how long gunicorn waits for a stopping worker (default: the drain timeout "
            f"+ {GRACE_MARGIN:g})"
        ),
    )
    group.add_argument(
        "--log-level",
        dest="gunicorn_log_level",
        choices=["debug", "info", "warning", "error", "critical"],
        default="info",
        help=helptext("detail of the error log, gunicorn's and the middleware's (default: info)"),
    )
    group.add_argument(
        "--access-log",
        dest="gunicorn_access_log",
        metavar="FILE",
        help=helptext("write an access log to FILE ('-' for stdout; default: none)"),
    )
    group.add_argument(
        "--preload",
        dest="gunicorn_preload",
        action="store_true",
        help=helptext("import the application once in the master before forking the workers"),
    )
    group.add_argument(
        "--chdir",
        dest="gunicorn_chdir",
        metavar="DIR",
        help=helptext("change to DIR before importing the application"),
    )
    group.add_argument(
        "--pythonpath",
        dest="gunicorn_pythonpath",
        action="append",
        metavar="DIR",
        help=helptext("add DIR to the import path (repeatable)"),
    )


def build_serve_parser() -> _Parser:
    parser = _Parser(
        prog=f"{PROG} serve",
        usage=f"{PROG} serve TARGET [--route RULE]... [options]",
        description=SERVE_DESCRIPTION,
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", metavar="TARGET", help="the WSGI application, e.g. app.wsgi:app")
    _add_middleware_options(parser)
    _add_server_options(parser)
    return parser


def build_check_parser() -> _Parser:
    parser = _Parser(
        prog=f"{PROG} check",
        usage=f"{PROG} check [TARGET] [--route RULE]... [options] REQUEST...",
        description=CHECK_DESCRIPTION,
        epilog=CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "items",
        nargs="*",
        metavar="REQUEST",
        help="a sample request, '[METHOD] PATH [Prefer: VALUE]'",
    )
    _add_middleware_options(parser)
    _add_server_options(parser, hidden=True)
    return parser


def build_main_parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        usage=f"{PROG} {{serve,check,tasks,worker}} ...",
        description=DESCRIPTION,
        epilog=COMMANDS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


_MIDDLEWARE_NAMES = {option.name for option in OPTIONS}


def middleware_options(args: argparse.Namespace, environ: dict[str, str]) -> dict[str, Any]:
    """Options from WSGI_DEFERRED_* variables, overlaid by the flags given."""
    flags = {k: v for k, v in vars(args).items() if k in _MIDDLEWARE_NAMES}
    return merge_options(options_from_env(environ), flags)


def validate(options: dict[str, Any]) -> None:
    """Let the middleware itself judge the options (the store is only opened by workers)."""
    trial = DeferredMiddleware(unused_app, **{k: v for k, v in options.items() if k != "store"})
    trial.close(0)


def unused_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    raise AssertionError("never called")

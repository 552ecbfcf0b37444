"""The ``wsgi-deferred`` command: serve a WSGI app behind the middleware, or check rules.

``wsgi-deferred serve legacy.wsgi:application --route "POST /render/<id>" --workers 4`` runs
the app wrapped by :class:`~wsgi_deferred.DeferredMiddleware` under gunicorn, through
gunicorn's application API (in this process, no shell). ``wsgi-deferred check`` tells which of
some sample requests would be deferred, passed through or answered as a status URL.
``wsgi-deferred tasks --store URL`` lists the tasks of a store (``--cancel ID`` cancels one).

Usage errors (unknown options, bad values, invalid rules, an app that cannot be imported) exit
with status 2 and one line on stderr; ``--help`` explains everything else.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ..errors import ConfigurationError
from .check import check
from .options import (
    PROG,
    UsageError,
    _Parser,
    build_check_parser,
    build_main_parser,
    build_serve_parser,
    fail,
)
from .serve import probe, serve
from .tasks import build_tasks_parser, glue_task_ids, tasks
from .worker import build_worker_parser, worker

__all__ = ["main", "probe"]

# -- entry point ------------------------------------------------------------------------------


COMMANDS: dict[str, tuple[Callable[[], _Parser], Callable[[argparse.Namespace], int]]] = {
    "serve": (build_serve_parser, serve),
    "check": (build_check_parser, check),
    "tasks": (build_tasks_parser, tasks),
    "worker": (build_worker_parser, worker),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wsgi-deferred`` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "--version"):
        parser = build_main_parser()
        if not args:
            fail(
                f"{PROG}: error: a command is needed: serve, check, tasks or worker "
                f"(see '{PROG} --help')"
            )
        parser.parse_args(args)  # prints help or version and exits 0
    command = args[0]
    if command not in COMMANDS:
        fail(
            f"{PROG}: error: unknown command {command!r}: expected serve, check, tasks or worker "
            f"(see '{PROG} --help')"
        )
    build_parser, run = COMMANDS[command]
    parser = build_parser()
    argv = glue_task_ids(args[1:]) if command == "tasks" else args[1:]
    namespace = parser.parse_intermixed_args(argv)
    try:
        return run(namespace)
    except (UsageError, ConfigurationError) as exc:
        fail(f"{parser.prog}: error: {exc}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

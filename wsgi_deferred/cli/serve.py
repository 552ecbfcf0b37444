"""``wsgi-deferred serve``: import-check the app, then run it wrapped, under gunicorn."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from typing import Any

from ..errors import ConfigurationError
from ..factory import load_app
from ..holds import holds_for_threads
from ..middleware import DeferredMiddleware
from .options import (
    GRACE_MARGIN,
    PROBE_MARK,
    PROG,
    USAGE_ERROR,
    UsageError,
    middleware_options,
    validate,
)

# -- the import probe -------------------------------------------------------------------------


def describe_import_error(target: str, exc: BaseException) -> str:
    """One line about why *target* did not import."""
    if isinstance(exc, ConfigurationError):
        return str(exc)
    where = ""
    detail = str(exc)
    if isinstance(exc, SyntaxError):
        detail = exc.msg or detail
        where = f" ({exc.filename}:{exc.lineno})" if exc.filename else ""
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        if frames:
            where = f" ({frames[-1].filename}:{frames[-1].lineno})"
    detail = " ".join(detail.split()) or "(no message)"
    return f"cannot import {target!r}: {type(exc).__name__}: {detail}{where}"


def probe(target: str) -> int:
    """Child side of :func:`probe_import`: import *target*, report one line, exit status."""
    try:
        load_app(target)
    except BaseException as exc:  # the app's import may raise anything, even SystemExit
        print(PROBE_MARK + describe_import_error(target, exc), flush=True)
        return USAGE_ERROR
    return 0


def probe_import(target: str) -> None:
    """Import *target* in a child process (this one stays clean for gunicorn to fork)."""
    code = (
        "import json, sys; sys.path[:0] = json.loads(sys.argv[2]); "
        "from wsgi_deferred.cli.serve import probe; raise SystemExit(probe(sys.argv[1]))"
    )
    paths = [p for p in sys.path if p]
    result = subprocess.run(
        [sys.executable, "-c", code, target, json.dumps(paths)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    if result.returncode == 0:
        return
    for line in result.stdout.splitlines():
        if line.startswith(PROBE_MARK):
            raise UsageError(line[len(PROBE_MARK) :])
    lines = result.stderr.strip().splitlines()
    last = lines[-1] if lines else f"the import check exited with status {result.returncode}"
    raise UsageError(f"cannot import {target!r}: {last}")


# -- serve --------------------------------------------------------------------------------------


def _logging(level: str) -> None:
    """The middleware's log lines (each about a task names its id) next to gunicorn's."""
    logger = logging.getLogger("wsgi_deferred")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
            "%Y-%m-%d %H:%M:%S %z",
        )
    )
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def gunicorn_settings(args: argparse.Namespace, options: dict[str, Any]) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "threads": args.gunicorn_threads,
        "loglevel": args.gunicorn_log_level,
        "preload_app": args.gunicorn_preload,
        "proc_name": PROG,
        "chdir": os.getcwd(),
    }
    if args.gunicorn_bind:
        settings["bind"] = args.gunicorn_bind
    if args.gunicorn_workers is not None:
        settings["workers"] = args.gunicorn_workers
    if args.gunicorn_timeout is not None:
        settings["timeout"] = args.gunicorn_timeout
    drain = options.get("drain_timeout")
    if args.gunicorn_graceful_timeout is not None:
        settings["graceful_timeout"] = args.gunicorn_graceful_timeout
    elif drain is not None:
        # Whole seconds: gunicorn's validator takes an int or a string, never a float.
        settings["graceful_timeout"] = math.ceil(drain + GRACE_MARGIN)
    if args.gunicorn_access_log:
        settings["accesslog"] = args.gunicorn_access_log
    return settings


def serve_options(args: argparse.Namespace, environ: dict[str, str]) -> dict[str, Any]:
    """The middleware's options under ``serve``: flags over WSGI_DEFERRED_* variables, and a
    hold budget from ``--threads`` unless one was given."""
    options = middleware_options(args, environ)
    if options.get("max_holds") is None:
        # Only serve knows how many request threads a worker has (no environ key says it):
        # leave three quarters of them to the app's pages (docs/protocol.md, "Holds").
        options["max_holds"] = holds_for_threads(args.gunicorn_threads)
    return options


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client when it is imported


def prometheus_multiprocess(options: dict[str, Any]) -> str | None:
    """With metrics on and prometheus_client installed, give every worker one directory for
    prometheus_client's multiprocess mode, so a scrape of any worker sees the deployment.
    Set before any import of prometheus_client (the master's, with --preload, or the
    workers'). Returns the directory made here (removed at exit), or None: off, not
    installed, or the operator chose one (then emptying it at start is theirs to do)."""
    if options.get("metrics_path") is None or importlib.util.find_spec("prometheus_client") is None:
        return None
    if os.environ.get(MULTIPROC_ENV):
        return None
    directory = tempfile.mkdtemp(prefix="wsgi-deferred-prometheus-")
    os.environ[MULTIPROC_ENV] = directory
    return directory


def _child_exit(server: Any, worker: Any) -> None:
    """gunicorn's child_exit hook: drop the live gauges of a worker that exited (or was
    killed); its counters stay in the sum, so no counter ever goes back."""
    from ..prometheus import mark_process_dead

    mark_process_dead(worker.pid)


def serve(args: argparse.Namespace) -> int:
    try:
        from gunicorn.app.base import BaseApplication
    except ImportError:
        raise UsageError("serve needs gunicorn: pip install 'wsgi_deferred[gunicorn]'") from None
    options = serve_options(args, dict(os.environ))
    metrics_dir = prometheus_multiprocess(options)  # before anything imports prometheus_client
    master = os.getpid()
    try:
        return _serve(args, options, BaseApplication)
    finally:
        # gunicorn's workers leave by SystemExit through these same frames: only the master
        # (the process that made the directory) removes it.
        if metrics_dir is not None and os.getpid() == master:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve(args: argparse.Namespace, options: dict[str, Any], base: Any) -> int:
    validate(options)
    if args.gunicorn_chdir:
        try:
            os.chdir(args.gunicorn_chdir)
        except OSError as exc:
            raise UsageError(f"--chdir {args.gunicorn_chdir!r}: {exc.strerror}") from None
    for directory in reversed([os.getcwd(), *(args.gunicorn_pythonpath or [])]):
        path = os.path.abspath(directory)
        if path not in sys.path:
            sys.path.insert(0, path)
    target: str = args.target
    settings = gunicorn_settings(args, options)
    if os.environ.get(MULTIPROC_ENV) and options.get("metrics_path") is not None:
        settings["child_exit"] = _child_exit
    preloaded: DeferredMiddleware | None = None
    if args.gunicorn_preload:
        try:
            preloaded = DeferredMiddleware(load_app(target), **options)
        except Exception as exc:
            raise UsageError(describe_import_error(target, exc)) from None
    else:
        probe_import(target)

    def load() -> DeferredMiddleware:
        if preloaded is not None:
            return preloaded
        return DeferredMiddleware(load_app(target), **options)

    class Server(base):  # type: ignore[misc]
        """gunicorn's application API: our settings, our app, no command line of its own."""

        def load_config(self) -> None:
            for key, value in settings.items():
                self.cfg.set(key, value)
            if "control_socket_disable" in self.cfg.settings:
                # gunicorn >= 27 opens a control socket at one per-user path by default; two
                # deployments on one host would fight over it. Use gunicorn itself for it.
                self.cfg.set("control_socket_disable", True)

        def load(self) -> DeferredMiddleware:
            return load()

    _logging(args.gunicorn_log_level)
    Server(prog=PROG).run()
    return 0

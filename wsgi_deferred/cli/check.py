"""``wsgi-deferred check``: tell which sample requests would be deferred, and why."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from ..factory import load_app
from ..middleware import DeferredMiddleware
from ..rules import RuleSet, parse_prefer, wsgi_path
from ..task import is_task_id
from .options import UsageError, middleware_options, unused_app
from .serve import describe_import_error

# -- check --------------------------------------------------------------------------------------


@dataclass
class Verdict:
    """What the middleware would do with one sample request."""

    request: str
    outcome: str  # "deferred", "deferred if slow", "passed through", "status", "metrics"
    reason: str


def parse_sample(text: str) -> tuple[str, str, str | None]:
    """``"POST /render/1 Prefer: respond-async"`` -> ``("POST", "/render/1", "respond-async")``."""
    head, sep, prefer = text.partition("Prefer:")
    if not sep:
        head, sep, prefer = text.partition("prefer:")
    parts = head.split()
    if len(parts) == 1:
        method, target = "GET", parts[0]
    elif len(parts) == 2:
        method, target = parts[0].upper(), parts[1]
    else:
        raise UsageError(
            f"sample request {text!r}: expected '[METHOD] PATH [Prefer: VALUE]', "
            "e.g. 'POST /render/1'"
        )
    if not target.startswith("/"):
        raise UsageError(f"sample request {text!r}: the path must start with '/'")
    return method, target, (prefer.strip() or None) if sep else None


def _first_match(specs: Sequence[str], method: str, path: str) -> str | None:
    for spec in specs:
        if RuleSet([spec]).matches(method, path):
            return spec
    return None


def classify(middleware: DeferredMiddleware, sample: str) -> Verdict:
    """Follow the middleware's own decision order (``__call__`` then ``_dispatch``)."""
    method, target, prefer = parse_sample(sample)
    path = wsgi_path(unquote(target.split("?", 1)[0]))
    notes = ""
    if path.startswith(middleware.status_path):
        tail = path[len(middleware.status_path) :]
        if is_task_id(tail):
            return Verdict(
                sample, "status", f"status URL of task {tail} (under {middleware.status_path})"
            )
        notes = (
            f"; under {middleware.status_path} but {tail!r} is not a task id "
            "(22 characters of A-Z a-z 0-9 _ -), so the app's own route"
        )
    if middleware.metrics_path is not None and path == middleware.metrics_path:
        return Verdict(sample, "metrics", "the Prometheus endpoint (--metrics-path)")
    excluded = _first_match(middleware.exclude.specs, method, path)
    if excluded is not None:
        return Verdict(sample, "passed through", f"excluded by {excluded!r}{notes}")
    prefs = parse_prefer(prefer) if middleware.honor_prefer else parse_prefer(None)
    route = _first_match(middleware.routes.specs, method, path)
    wait = f"; Prefer: wait={prefs.wait:g} lets it finish inline first" if prefs.wait else ""
    if prefs.respond_async:
        why = f"matches route {route!r}" if route else "no route matches"
        return Verdict(sample, "deferred", f"Prefer: respond-async ({why}){wait}{notes}")
    if route is not None:
        return Verdict(sample, "deferred", f"matches route {route!r}{wait}{notes}")
    if middleware.defer_after is not None:
        return Verdict(
            sample,
            "deferred if slow",
            f"no route matches; answered inline if done within {middleware.defer_after:g} s "
            f"(--defer-after), else 202{notes}",
        )
    reason = "no route matches"
    for spec in middleware.routes.specs:
        rule_path = spec.split()[-1]
        if rule_path != spec and RuleSet([rule_path]).matches(method, path):
            reason += f" (route {spec!r} has this path but not the method {method})"
            break
    if prefer and not middleware.honor_prefer:
        reason += "; the Prefer header is ignored (--no-prefer)"
    return Verdict(sample, "passed through", reason + notes)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _split_target(items: list[str]) -> tuple[str | None, list[str]]:
    """The optional TARGET comes first and looks like ``pkg.module:app``, not a request."""
    if not items or items[0].startswith("/") or len(items[0].split()) != 1:
        return None, items
    if items[0].upper() in _METHODS:  # "GET" alone: a request that lost its path
        raise UsageError(f"sample request {items[0]!r}: expected '[METHOD] PATH'")
    return items[0], items[1:]


def check(args: argparse.Namespace) -> int:
    target, samples = _split_target(list(args.items))
    options = middleware_options(args, dict(os.environ))
    options.pop("store", None)  # checking rules never touches a store
    middleware = DeferredMiddleware(unused_app, **options)
    try:
        verdicts = [classify(middleware, sample) for sample in samples]
    finally:
        middleware.close(0)
    if target is not None:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            load_app(target)
        except Exception as exc:
            raise UsageError(describe_import_error(target, exc)) from None
        print(f"{target}: imports, and is callable")
    routes = "; ".join(middleware.routes.specs) or "none"
    exclude = "; ".join(middleware.exclude.specs) or "none"
    defer_after = "off" if middleware.defer_after is None else f"{middleware.defer_after:g} s"
    print(f"routes: {routes}  exclude: {exclude}  defer-after: {defer_after}")
    if not verdicts:
        print("(no sample requests given)")
        return 0
    width = max(len(v.request) for v in verdicts)
    kind = max(len(v.outcome) for v in verdicts)
    for verdict in verdicts:
        print(f"{verdict.request:<{width}}  {verdict.outcome:<{kind}}  {verdict.reason}")
    return 0

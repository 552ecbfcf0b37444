"""``wrap("package.module:app", **options)``: the middleware around an app named by an import
string, for gunicorn's factory syntax, PasteDeploy and the CLI::

    gunicorn 'wsgi_deferred:wrap("legacy.wsgi:application", routes=["POST /render/<id>"])'
"""

from __future__ import annotations

from typing import Any

from werkzeug.utils import ImportStringError, import_string

from .errors import ConfigurationError
from .middleware import DeferredMiddleware

__all__ = ["load_app", "wrap"]


def load_app(target: str) -> Any:
    """Import ``"package.module:attr"`` (or ``package.module.attr``); ConfigurationError if
    it cannot be imported or is not callable."""
    if not isinstance(target, str) or not target.strip():
        raise ConfigurationError(f"expected an import string like 'pkg.module:app', got {target!r}")
    try:
        app = import_string(target.strip())
    except ImportStringError as exc:
        raise ConfigurationError(f"cannot import {target!r}: {exc.exception}") from None
    if not callable(app):
        raise ConfigurationError(f"{target!r} is not a WSGI callable")
    return app


def wrap(target: str | Any, **options: Any) -> DeferredMiddleware:
    """Return ``DeferredMiddleware(app, **options)`` for the app that *target* names."""
    app = load_app(target) if isinstance(target, str) else target
    return DeferredMiddleware(app, **options)

"""``wrap("package.module:app", **options)``: the middleware around an app named by an import
string, for gunicorn's factory syntax, PasteDeploy and the CLI::

    gunicorn 'wsgi_deferred:wrap("legacy.wsgi:application", routes=["POST /render/<id>"])'

``wrap()`` also reads the ``WSGI_DEFERRED_*`` environment variables (see
:mod:`wsgi_deferred.config`); keyword options given to it win over them, key by key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from werkzeug.utils import ImportStringError, import_string

from .config import merge_options, options_from_env
from .errors import ConfigurationError
from .middleware import DeferredMiddleware

__all__ = ["build", "load_app", "wrap"]


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


def build(
    app: Any, options: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> DeferredMiddleware:
    """``DeferredMiddleware(app, ...)`` with the ``WSGI_DEFERRED_*`` variables of *environ*
    (default ``os.environ``) overlaid by *options*."""
    env_options = options_from_env(os.environ if environ is None else environ)
    return DeferredMiddleware(app, **merge_options(env_options, options))


def wrap(target: str | Any, **options: Any) -> DeferredMiddleware:
    """Return ``DeferredMiddleware(app, **options)`` for the app that *target* names.

    *target* is an import string (``"legacy.wsgi:application"``) or a WSGI callable. Options
    not given as keywords come from ``WSGI_DEFERRED_*`` environment variables when set
    (``WSGI_DEFERRED_ROUTES="POST /render/<id>; /export"``), else from the defaults.
    """
    env_options = options_from_env(os.environ)  # a bad variable fails before the import
    app = load_app(target) if isinstance(target, str) else target
    return DeferredMiddleware(app, **merge_options(env_options, options))

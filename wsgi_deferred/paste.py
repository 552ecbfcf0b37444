"""PasteDeploy filter: put the middleware in a Pyramid (or any paste-configured) pipeline.

``setup.py``/``pyproject.toml`` declares the entry point
``paste.filter_factory: main = wsgi_deferred.paste:filter_factory``, so an ``.ini`` says::

    [pipeline:main]
    pipeline = deferred myapp

    [filter:deferred]
    use = egg:wsgi_deferred
    routes =
        POST /render/<id>
        GET,POST /reports/<path:rest>
    store = sqlite:///%(here)s/deferred.db
    workers = 4
    defer_after = 20

Keys are the keyword options of :class:`~wsgi_deferred.DeferredMiddleware`; lists of rules
are one rule per line (or separated by ``;``). Options not set in the file come from the
``WSGI_DEFERRED_*`` environment variables, as for :func:`wsgi_deferred.wrap`. An unknown key or
a bad value fails when the file is loaded, naming the key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .config import options_from_mapping
from .factory import build
from .middleware import DeferredMiddleware

__all__ = ["filter_factory"]


def filter_factory(
    global_conf: Mapping[str, Any], **local_conf: Any
) -> Callable[[Any], DeferredMiddleware]:
    """PasteDeploy ``filter_factory``: *local_conf* holds the ``[filter:...]`` keys."""
    options = options_from_mapping(local_conf, source="ini key")

    def deferred_filter(app: Any) -> DeferredMiddleware:
        return build(app, options)

    return deferred_filter

"""Exceptions raised by wsgi_deferred.

Every exception the library raises on purpose derives from :class:`DeferredError`, so
``except DeferredError`` catches all of them and nothing else.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "DeferredError",
    "PoolFull",
    "ProtocolError",
    "StoreUnavailable",
]


class DeferredError(Exception):
    """Root of every exception raised by wsgi_deferred."""


class ConfigurationError(DeferredError, ValueError):
    """An option given to the middleware, ``wrap()`` or the CLI is invalid."""


class StoreUnavailable(DeferredError):
    """The task store cannot be reached (Redis down, SQLite locked for too long).

    The middleware answers ``503`` with ``Retry-After`` when it sees this, never a 500.
    """


class PoolFull(DeferredError):
    """The worker pool already holds ``max_pending`` tasks; nothing was queued."""


class ProtocolError(DeferredError):
    """The wrapped application broke PEP 3333 (e.g. a second ``start_response`` without
    ``exc_info``, or body data before ``start_response``)."""

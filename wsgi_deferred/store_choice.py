"""The middleware's store: the one it was given, or the automatic one, chosen on first use.

Usage::

    choice = StoreChoice(None)             # store=None: automatic
    store = choice.get(environ)            # memory:// under one process, else SQLite
    key = choice.secret()                  # the binding key, re-read now and then

``store=None`` depends on the server's ``wsgi.multiprocess`` (docs/protocol.md, "The Store
interface"), which only a request's environ tells, so the choice waits for the first request.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .errors import ConfigurationError, StoreUnavailable
from .stores import Store, default_store_url, open_store

__all__ = ["SECRET_CACHE_SECONDS", "StoreChoice"]

logger = logging.getLogger("wsgi_deferred")

SECRET_CACHE_SECONDS = 60.0  # seconds the store's binding secret is cached per process


class StoreChoice:
    """The store named by a ``store=`` option (a URL, a Store, or None for automatic)."""

    def __init__(self, option: str | Store | None) -> None:
        #: The store in use: the explicit one from the start, the automatic one once chosen.
        self.store: Store | None = open_store(option) if option is not None else None
        #: True when ``store=`` named one; the automatic choice can differ per web process.
        self.explicit = self.store is not None
        self._lock = threading.Lock()
        self._secret: bytes | None = None
        self._secret_read = 0.0

    def get(self, environ: dict[str, Any] | None = None) -> Store:
        """The store; raises StoreUnavailable when the automatic one is refused."""
        store = self.store
        if store is not None:
            return store
        with self._lock:
            if self.store is None:
                multiprocess = bool(environ and environ.get("wsgi.multiprocess"))
                try:
                    url = default_store_url(multiprocess)
                except ConfigurationError as exc:
                    # A squatted or unsafe default directory: refuse to use it, loudly,
                    # and answer 503 (StoreUnavailable) rather than a crash per request.
                    logger.error("default store refused: %s", exc)
                    raise StoreUnavailable(str(exc)) from exc
                self.store = open_store(url)
                logger.info("using store %s", url)
            return self.store

    def secret(self) -> bytes:
        """The store's binding secret, cached for :data:`SECRET_CACHE_SECONDS`."""
        # Re-read now and then: a Redis that lost its data gets a new secret, and every host
        # must move to it, or bound tasks created on one host would 404 on the others.
        now = time.monotonic()
        if self._secret is None or now - self._secret_read > SECRET_CACHE_SECONDS:
            self._secret = self.get().secret()
            self._secret_read = now
        return self._secret

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

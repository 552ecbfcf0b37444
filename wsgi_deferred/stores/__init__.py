"""Task stores, and :func:`open_store` to pick one from a URL.

``memory://``, ``sqlite:///path/to.db`` and ``redis://host:6379/0`` (also ``rediss://`` and
``unix://``). Backends are imported only when used, so ``redis`` is never imported unless a
Redis store is asked for.
"""

from __future__ import annotations

from ..errors import ConfigurationError
from .base import Store

__all__ = ["Store", "open_store"]


def open_store(url: str | Store) -> Store:
    """Return *url* if it is already a :class:`Store`, else the store that *url* names."""
    if isinstance(url, Store):
        return url
    if not isinstance(url, str):
        raise ConfigurationError(f"store must be a URL or a Store, not {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigurationError(f"store URL {url!r} has no scheme (memory://, sqlite:///..., redis://...)")
    scheme = scheme.lower()
    if scheme == "memory":
        from .memory import MemoryStore

        return MemoryStore()
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore.from_url(url)
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisStore

        return RedisStore.from_url(url)
    raise ConfigurationError(f"unknown store scheme {scheme!r} in {url!r}")

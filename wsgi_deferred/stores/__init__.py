"""Task stores, and :func:`open_store` to pick one from a URL.

``memory://``, ``sqlite:///path/to.db`` and ``redis://host:6379/0`` (also ``rediss://``,
``unix://``, ``redis+cluster://node:6379/0`` and ``redis+sentinel://host:26379/MASTER/0``).
Backends are imported only when used, so ``redis`` is never imported unless a Redis store
is asked for.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile

from ..errors import ConfigurationError
from .base import Store
from .private import private_directory

__all__ = ["REDIS_SCHEMES", "Store", "default_store_url", "open_store"]

#: URL schemes of the Redis store (standalone, Cluster, Sentinel; see stores/redis_connect.py).
REDIS_SCHEMES = (
    *("redis", "rediss", "unix"),
    *("redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel"),
)


def default_store_url(multiprocess: bool) -> str:
    """The store ``store=None`` picks (docs/protocol.md, "The Store interface").

    One process: ``memory://``. Several (``wsgi.multiprocess`` true, e.g. ``gunicorn -w 4``):
    a SQLite file shared by the workers of *this deployment* and no other. A deployment is
    identified by the user, the working directory and the server's command line (which
    includes ``--bind``): every worker of one gunicorn master shares all three, while two
    deployments on one host differ in at least one, so they never share tasks by accident.
    A restart with the same command finds its earlier results again. The file lives in
    ``$TMPDIR/wsgi-deferred-<uid>/<hash>.db``; set ``store=`` explicitly to choose another.

    That directory is private (created 0700, refused with :class:`ConfigurationError` when it
    is a symbolic link or another user's, see :mod:`.private`), its files 0600.
    """
    if not multiprocess:
        return "memory://"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    identity = "\0".join([str(uid), os.path.realpath(os.getcwd()), *sys.argv])
    digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:20]
    directory = private_directory(os.path.join(tempfile.gettempdir(), f"wsgi-deferred-{uid}"))
    return "sqlite://" + os.path.join(directory, f"{digest}.db")


def open_store(url: str | Store) -> Store:
    """Return *url* if it is already a :class:`Store`, else the store that *url* names."""
    if isinstance(url, Store):
        return url
    if not isinstance(url, str):
        raise ConfigurationError(f"store must be a URL or a Store, not {type(url).__name__}")
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ConfigurationError(
            f"store URL {url!r} has no scheme (memory://, sqlite:///..., redis://...)"
        )
    scheme = scheme.lower()
    if scheme == "memory":
        from .memory import MemoryStore

        return MemoryStore()
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore.from_url(url)
    if scheme in REDIS_SCHEMES:
        from .redis import RedisStore

        try:
            return RedisStore.from_url(url)
        except ValueError as exc:  # redis-py's word for a malformed URL (a bad port, ...)
            raise ConfigurationError(f"store URL {url!r}: {exc}") from None
    raise ConfigurationError(f"unknown store scheme {scheme!r} in {url!r}")

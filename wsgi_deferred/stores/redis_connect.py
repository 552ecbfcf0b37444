"""Redis clients from store URLs: a standalone server, Redis Cluster or Sentinel.

Public redis-py API only (``Redis.from_url``, ``RedisCluster.from_url``,
``Sentinel(...).master_for``), so every redis-py the ``redis`` extra admits behaves the same.

=========================================================  ==================================
URL                                                        client
=========================================================  ==================================
``redis://[:pw@]host:6379/0``, ``rediss://``, ``unix://``  ``redis.Redis.from_url``
``redis+cluster://[:pw@]node:6379/0`` (``rediss+``)        ``redis.cluster.RedisCluster``; any
                                                           node, the others are discovered
``redis+sentinel://[:pw@]s1:26379,s2:26379/MASTER/0``      ``redis.sentinel.Sentinel(...)``
(``rediss+`` for TLS to the master)                        ``.master_for("MASTER")``
=========================================================  ==================================

Sentinel query options: ``sentinel_password`` (when the sentinels themselves need one;
the URL's password is the master's) and ``sentinel_ssl=1``. redis-py's ``from_url`` knows
neither ``+cluster`` nor ``+sentinel`` (kombu spells Sentinel ``sentinel://``), so the
project parses these two itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from ..errors import ConfigurationError

__all__ = ["SCHEMES", "Connect", "connector"]

#: Every URL scheme a RedisStore opens.
SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+cluster",
    "rediss+cluster",
    "redis+sentinel",
    "rediss+sentinel",
)
DEFAULT_SENTINEL_PORT = 26379
_REDIS_PY_MAJOR = int(redis.__version__.split(".")[0])

#: Builds one client; keyword arguments override the connection options (socket_timeout).
Connect = Callable[..., Any]


def _no_retry() -> Retry:
    # No retries: a dead Redis must fail fast (503), and a blind retry of an RPUSH or of a
    # script whose reply was lost would apply it twice.
    return Retry(NoBackoff(), 0)


def connector(url: str, **options: Any) -> tuple[Connect, bool]:
    """A factory of clients for *url* (called again for the long-poll client, with its
    own ``socket_timeout``) and whether it is a Redis Cluster client."""
    scheme = url.partition("://")[0].lower()
    if scheme not in SCHEMES:
        raise ConfigurationError(f"not a Redis store URL: {url!r} (schemes: {', '.join(SCHEMES)})")
    base, _, kind = scheme.partition("+")
    if kind == "cluster":
        return _cluster(base + url[len(scheme) :], options), True
    if kind == "sentinel":
        return _sentinel(url, base == "rediss", options), False
    defaults = {"retry": _no_retry(), **options}
    return (lambda **more: redis.Redis.from_url(url, **{**defaults, **more})), False


def _cluster(url: str, options: dict[str, Any]) -> Connect:
    from redis.cluster import RedisCluster

    parts = urlsplit(url)
    db = parts.path.strip("/") or "0"
    if db != "0":
        raise ConfigurationError(f"Redis Cluster has database 0 only, not {db!r} in {url!r}")
    if not parts.hostname:
        raise ConfigurationError(f"no cluster node in {url!r}")
    defaults: dict[str, Any] = {"retry": _no_retry(), **options}
    if _REDIS_PY_MAJOR < 6:  # before 6.0 the cluster's own retries had their own knob
        defaults.setdefault("cluster_error_retry_attempts", 0)
    return lambda **more: RedisCluster.from_url(url, **{**defaults, **more})


class _Sentinel(Sentinel):
    """One master discovery at a time per process. redis-py runs ``discover_master`` on
    every new master connection, without a lock, and it moves the sentinel that answered
    to the front of ``self.sentinels`` while other threads walk that list; a thread can then
    try the same dead sentinel twice, never reach the live one and raise
    MasterNotFoundError (seen under a gunicorn load with one sentinel of two down)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._discovering = threading.Lock()

    def discover_master(self, service_name: str) -> Any:
        with self._discovering:
            return super().discover_master(service_name)


def _sentinel(url: str, tls: bool, options: dict[str, Any]) -> Connect:
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not hosts or not path or len(path) > 2:
        raise ConfigurationError(
            f"expected redis+sentinel://host:port[,host:port...]/MASTER_NAME[/db], got {url!r}"
        )
    sentinels = [_host_port(item, url) for item in hosts.split(",")]
    name, db = path[0], path[1] if len(path) == 2 else "0"
    if not db.isdigit():
        raise ConfigurationError(f"database must be a number, not {db!r} in {url!r}")
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    unknown = set(query) - {"sentinel_password", "sentinel_ssl"}
    if unknown:
        raise ConfigurationError(f"unknown Sentinel option(s) {sorted(unknown)} in {url!r}")
    master: dict[str, Any] = {"retry": _no_retry(), **options, "db": int(db)}
    if parts.username:
        master["username"] = unquote(parts.username)
    if parts.password is not None:
        master["password"] = unquote(parts.password)
    if tls:
        master["ssl"] = True
    # A dead sentinel must cost one refused connection, not redis-py's retries with backoff
    # (seconds per new master connection): the next sentinel in the list answers instead.
    sentinel_options: dict[str, Any] = {
        "retry": _no_retry(),
        **{
            key: options[key]
            for key in ("socket_timeout", "socket_connect_timeout")
            if key in options
        },
    }
    if "sentinel_password" in query:
        sentinel_options["password"] = query["sentinel_password"]
    if query.get("sentinel_ssl", "0").lower() in ("1", "true", "yes"):
        sentinel_options["ssl"] = True
    sentinel = _Sentinel(sentinels, sentinel_kwargs=sentinel_options)
    return lambda **more: sentinel.master_for(name, **{**master, **more})


def _host_port(item: str, url: str) -> tuple[str, int]:
    host, sep, port = item.strip().rpartition(":")
    if not sep:
        host, port = port, str(DEFAULT_SENTINEL_PORT)
    host = host.strip("[]")  # an IPv6 literal, [::1]:26379
    if not host or not port.isdigit():
        raise ConfigurationError(f"bad sentinel address {item!r} in {url!r}")
    return host, int(port)

"""Options from text: environment variables, ``.ini`` keys and command-line flags.

Every keyword option of :class:`~wsgi_deferred.DeferredMiddleware` that can be written as text
has one entry in :data:`OPTIONS`, with one parser shared by the three places that read text:

* :func:`wsgi_deferred.wrap` and the ``wsgi-deferred`` command read ``WSGI_DEFERRED_<NAME>``
  environment variables (:func:`options_from_env`); explicit keywords and flags win over them;
* the PasteDeploy filter reads ``.ini`` keys named like the keywords
  (:func:`options_from_mapping`);
* the command line turns each option into a flag (see :mod:`wsgi_deferred.cli`).

The core class never looks at the environment: configuration reaches it only as arguments.

Values are parsed strictly and a bad one raises :class:`ConfigurationError` naming where it
came from, e.g. ``WSGI_DEFERRED_WORKERS='four': expected a whole number``. Lists of rules
(``routes``, ``exclude``) are separated by newlines or ``;`` — never by commas, which belong to
rules themselves (``"GET,POST /export"``, ``"/<any(a,b):kind>"``).
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError

__all__ = [
    "ENV_PREFIX",
    "OPTIONS",
    "Option",
    "merge_options",
    "option_named",
    "options_from_env",
    "options_from_mapping",
    "parse_option",
    "split_rules",
]

logger = logging.getLogger("wsgi_deferred")

#: Prefix of every environment variable read by ``wrap()`` and the CLI.
ENV_PREFIX = "WSGI_DEFERRED_"

#: Words accepted for "no value" by options whose default is None (``defer_after=off``).
_NONE_WORDS = frozenset({"none", "off", "no", "false", "null"})
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?\Z", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}
_STORE_SCHEMES = (
    *("memory", "sqlite", "redis", "rediss", "unix"),
    *("redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel"),
)


# -- value parsers: text -> value, ValueError with a short reason on bad input ---------------


def split_rules(text: str) -> list[str]:
    """``"POST /a; GET,POST /b\\n/c"`` -> ``["POST /a", "GET,POST /b", "/c"]``.

    Rules are separated by newlines or semicolons (a rule may contain commas); blank entries are
    dropped, so a trailing ``;`` or an indented ini block both work."""
    return [part.strip() for part in re.split(r"[;\n]", text) if part.strip()]


def _rules(text: str) -> list[str]:
    from .rules import RuleSet  # werkzeug's routing; imported when rules are actually given

    rules = split_rules(text)
    try:
        RuleSet(rules)
    except ConfigurationError as exc:
        raise ValueError(str(exc)) from None
    return rules


def _int(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise ValueError("expected a whole number") from None
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value

    return parse


def _seconds(*, positive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        raw = text[:-1] if text.endswith("s") else text
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("expected a number of seconds, e.g. 30 or 2.5") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("expected a finite number of seconds")
        if positive and value <= 0:
            raise ValueError("must be more than 0 seconds")
        if value < 0:
            raise ValueError("must be 0 seconds or more")
        return value

    return parse


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_optional(text: str) -> Any:
        return None if text.lower() in _NONE_WORDS else parse(text)

    return parse_optional


def _auto(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``auto`` (or a None word) -> None: the middleware picks the value itself."""

    def parse_auto(text: str) -> Any:
        return None if text.lower() == "auto" or text.lower() in _NONE_WORDS else parse(text)

    return parse_auto


def _bool(text: str) -> bool:
    word = text.lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


def _size(text: str) -> int:
    match = _SIZE_RE.match(text.replace("_", ""))
    if not match:
        raise ValueError("expected a size in bytes, e.g. 1048576, 512K, 100M or 1G")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def _store(text: str) -> str:
    scheme, sep, _ = text.partition("://")
    if not sep or scheme.lower() not in _STORE_SCHEMES:
        raise ValueError(
            "expected a store URL: memory://, sqlite:///path/to.db, redis://host:6379/0, "
            "redis+cluster://node:6379/0 or redis+sentinel://host:26379/MASTER_NAME/0"
        )
    return text


def _executor(text: str) -> str | None:
    from .executors import SCHEMES

    if text.lower() in _NONE_WORDS or text.lower() == "threads":
        return None
    scheme, plus, rest = text.partition("+")
    if not plus or scheme.lower() not in SCHEMES or "://" not in rest:
        raise ValueError(
            "expected threads, celery+amqp://user@host//, celery+redis://host:6379/1 or "
            "rq+redis://host:6379/2"
        )
    return scheme.lower() + "+" + rest


def _status_path(text: str) -> str:
    if not (text.startswith("/") and text.endswith("/") and len(text) > 1):
        raise ValueError("must start and end with '/', e.g. /status/")
    return text


def _path(text: str) -> str:
    if not text.startswith("/") or any(c.isspace() for c in text):
        raise ValueError("must be a path starting with '/', e.g. /_deferred/metrics")
    return text


def _bind(text: str) -> str:
    from .binding import Binding

    try:
        Binding(text, lambda: b"")
    except ConfigurationError:
        raise ValueError("expected authorization, remote_user or cookie:NAME") from None
    return text


# -- the table of options ---------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One middleware keyword that can be given as text."""

    #: The keyword of :class:`DeferredMiddleware`, and the ``.ini`` key.
    name: str
    parse: Callable[[str], Any]
    #: What the value looks like, for help texts (``SECONDS``, ``N``, ``RULE``...).
    metavar: str
    #: One line for the documentation and ``--help``.
    help: str
    #: The default as an operator would write it, for documentation.
    default: str

    @property
    def env(self) -> str:
        """The environment variable, e.g. ``WSGI_DEFERRED_MAX_PENDING``."""
        return ENV_PREFIX + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("routes", _rules, "RULE", "rules of the requests to defer", "none"),
    Option("exclude", _rules, "RULE", "rules never deferred (health checks, streams)", "none"),
    Option("store", _store, "URL", "where tasks live", "automatic"),
    Option("workers", _int(1), "N", "background threads per process", "8"),
    Option("max_pending", _int(1), "N", "queued + running tasks per process before 503", "1000"),
    Option("status_path", _status_path, "PATH", "prefix of status URLs", "/status/"),
    Option("result_ttl", _seconds(positive=True), "SECONDS", "how long a result is kept", "600"),
    Option(
        "defer_after",
        _optional(_seconds(positive=False)),
        "SECONDS",
        "race every request; defer only those slower than this",
        "off",
    ),
    Option("honor_prefer", _bool, "BOOL", "honour Prefer: respond-async and wait=N", "true"),
    Option("max_body", _size, "BYTES", "largest request body that is deferred", "100M"),
    Option(
        "lease_timeout",
        _seconds(positive=True),
        "SECONDS",
        "silence after which a running task reads lost",
        "30",
    ),
    Option("bind", _optional(_bind), "WHAT", "tie status URLs to their requester", "off"),
    Option(
        "max_pending_per_client",
        _optional(_int(1)),
        "N",
        "queued + running tasks per client (deployment-wide) before 429",
        "max_pending/10",
    ),
    Option("max_wait", _seconds(positive=False), "SECONDS", "cap on Prefer: wait=N", "25"),
    Option(
        "max_holds",
        _auto(_int(0)),
        "N",
        "requests held at once per process (long polls, inline waits); more are answered at once",
        "auto",
    ),
    Option(
        "drain_timeout",
        _seconds(positive=False),
        "SECONDS",
        "time running tasks get to finish at shutdown",
        "25",
    ),
    Option(
        "debug",
        _bool,
        "BOOL",
        "show a failed task's traceback to clients (development only)",
        "false",
    ),
    Option(
        "metrics_path",
        _optional(_path),
        "PATH",
        "serve Prometheus metrics at this path",
        "off",
    ),
    Option(
        "executor",
        _executor,
        "URL",
        "where tasks run: threads, celery+amqp://..., celery+redis://..., rq+redis://...",
        "threads",
    ),
    Option(
        "retry",
        _rules,
        "RULE",
        "rules whose tasks run again when the process running them died",
        "none",
    ),
    Option("max_attempts", _int(1), "N", "runs at most of a task on a retry rule", "3"),
)

_BY_NAME = {option.name: option for option in OPTIONS}
_BY_ENV = {option.env: option for option in OPTIONS}


def option_named(name: str) -> Option:
    """The :class:`Option` called *name* (KeyError if there is none)."""
    return _BY_NAME[name]


def parse_option(name: str, text: str, source: str | None = None) -> Any:
    """Parse *text* as the value of option *name*; ConfigurationError names *source*
    (an environment variable, an ini key...) and says what was expected."""
    option = _BY_NAME[name]
    text = text.strip()
    try:
        return option.parse(text)
    except ValueError as exc:
        raise ConfigurationError(f"{source or name}={text!r}: {exc}") from None


# -- reading whole sources --------------------------------------------------------------------


def options_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Options set by ``WSGI_DEFERRED_*`` variables in *environ* (pass ``os.environ``).

    An empty variable counts as unset. A variable whose name is a near miss of a known one
    (``WSGI_DEFERRED_ROUTE``) is logged as a warning: a typo must not pass silently, while
    unrelated variables that share the prefix are left alone."""
    options: dict[str, Any] = {}
    for key, text in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        option = _BY_ENV.get(key)
        if option is None:
            close = difflib.get_close_matches(key, list(_BY_ENV), n=1, cutoff=0.85)
            if close:
                logger.warning("ignoring %s: unknown variable; did you mean %s?", key, close[0])
            continue
        if text.strip():
            options[option.name] = parse_option(option.name, text, key)
    return options


def options_from_mapping(values: Mapping[str, Any], source: str = "option") -> dict[str, Any]:
    """Options from text keyed by option name (PasteDeploy's ``local_conf``). Non-string
    values are taken as they are; an unknown key raises ConfigurationError."""
    options: dict[str, Any] = {}
    for key, value in values.items():
        name = key.strip().replace("-", "_").lower()
        if name not in _BY_NAME:
            known = ", ".join(_BY_NAME)
            hint = difflib.get_close_matches(name, list(_BY_NAME), n=1)
            maybe = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigurationError(f"unknown {source} {key!r}{maybe}; known: {known}")
        if isinstance(value, str):
            if value.strip():
                options[name] = parse_option(name, value, f"{source} {key!r}")
        else:
            options[name] = value
    return options


def merge_options(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Later layers win, key by key: ``merge_options(env, explicit)``."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    return merged

"""Which requests are deferred: route rules, ``exclude`` rules and RFC 7240 ``Prefer``.

Rules use werkzeug's syntax with optional methods in front::

    RuleSet(["POST /render/<id>", "GET,POST /reports/<path:rest>", "/export"])

A rule without methods matches every method. Matching an unmarked request must cost almost
nothing, so each rule's static prefix (the text before its first ``<``) is checked with one
``str.startswith`` first; werkzeug's matcher only runs when a prefix fits.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule

from .errors import ConfigurationError

__all__ = ["Preferences", "RuleSet", "parse_prefer", "wsgi_path"]

_METHOD_RE = re.compile(r"[A-Z][A-Z0-9_-]*\Z")


def wsgi_path(text: str) -> str:
    """*text* as PEP 3333 puts it in ``PATH_INFO``: UTF-8 bytes decoded as latin-1."""
    return text.encode("utf-8").decode("latin-1")


def _decoded_path(path_info: str) -> str:
    """``PATH_INFO`` back to real text for werkzeug's matcher (PEP 3333 §"Unicode Issues")."""
    try:
        return path_info.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return path_info


def _parse_rule(spec: str) -> Rule:
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigurationError(f"route rule must be a non-empty string, not {spec!r}")
    parts = spec.split()
    if len(parts) == 1:
        methods, path = None, parts[0]
    elif len(parts) == 2:
        methods = [m.strip().upper() for m in parts[0].split(",") if m.strip()]
        path = parts[1]
        bad = [m for m in methods if not _METHOD_RE.match(m)]
        if not methods or bad:
            raise ConfigurationError(f"route rule {spec!r}: invalid method list {parts[0]!r}")
    else:
        raise ConfigurationError(
            f"route rule {spec!r}: expected '[METHODS] /path', e.g. 'POST /render/<id>'"
        )
    if not path.startswith("/"):
        raise ConfigurationError(f"route rule {spec!r}: the path must start with '/'")
    try:
        Map([Rule(path, methods=methods)])  # compiles it: a bad converter fails here, not later
    except Exception as exc:  # werkzeug raises ValueError/LookupError for bad syntax
        raise ConfigurationError(f"route rule {spec!r}: {exc}") from None
    return Rule(path, methods=methods)


class RuleSet:
    """A list of rules; :meth:`matches` tells whether a request fits any of them."""

    def __init__(self, specs: Iterable[str] | str | None = None) -> None:
        if isinstance(specs, str):
            specs = [specs]
        self.specs: tuple[str, ...] = tuple(specs or ())
        rules = [_parse_rule(spec) for spec in self.specs]
        self._adapter = Map(rules, strict_slashes=False, merge_slashes=False).bind("localhost")
        # Each rule's static prefix (the text before its first converter, in PATH_INFO's
        # encoding) and methods (None: any). Both are checked before werkzeug's matcher runs,
        # so e.g. a GET under a "POST /render/<id>" rule costs a few string comparisons.
        self._candidates: tuple[tuple[str, frozenset[str] | None], ...] = tuple(
            (
                wsgi_path(rule.rule.split("<", 1)[0]),
                frozenset(rule.methods) if rule.methods else None,
            )
            for rule in rules
        )
        self.prefixes: tuple[str, ...] = tuple(sorted({p for p, _ in self._candidates}))
        self._spec_of = {id(rule): spec for rule, spec in zip(rules, self.specs, strict=True)}

    def __bool__(self) -> bool:
        return bool(self.specs)

    def __repr__(self) -> str:
        return f"RuleSet({list(self.specs)!r})"

    def matches(self, method: str, path_info: str) -> bool:
        """True when a rule fits *path_info* (a raw ``PATH_INFO``) and *method*."""
        if not path_info.startswith(self.prefixes):
            return False
        method = method.upper()
        if not any(
            path_info.startswith(prefix) and (methods is None or method in methods)
            for prefix, methods in self._candidates
        ):
            return False
        try:
            self._adapter.match(_decoded_path(path_info) or "/", method=method)
        except HTTPException:  # NotFound, MethodNotAllowed, RequestRedirect
            return False
        return True

    def rule_for(self, method: str, path_info: str) -> str | None:
        """The spec of the rule that fits (as :meth:`matches` decides), or None. A bounded
        name for the request, e.g. a metrics label (never the raw path)."""
        if not self.matches(method, path_info):
            return None
        try:
            rule, _ = self._adapter.match(
                _decoded_path(path_info) or "/", method=method.upper(), return_rule=True
            )
        except HTTPException:
            return None
        return self._spec_of.get(id(rule), rule.rule)


@dataclass(frozen=True)
class Preferences:
    """What an RFC 7240 ``Prefer`` header asks for (only the parts we honour)."""

    respond_async: bool = False
    #: Seconds the client is willing to wait for an inline answer, or None.
    wait: float | None = None


NO_PREFERENCES = Preferences()


def parse_prefer(header: str | None) -> Preferences:
    """Parse ``Prefer`` leniently: unknown or malformed preferences are ignored (RFC 7240
    §2: "the server ... MUST ignore" preferences it does not understand)."""
    if not header:
        return NO_PREFERENCES
    respond_async = False
    wait: float | None = None
    # Several Prefer headers arrive joined by ", " (RFC 9110 §5.3); parameters after ";"
    # are not used by either preference we support.
    for item in header.split(","):
        token, _, value = item.split(";", 1)[0].partition("=")
        token = token.strip().lower()
        if token == "respond-async":
            respond_async = True
        elif token == "wait" and wait is None:
            wait = _parse_seconds(value.strip().strip('"'))
    return Preferences(respond_async, wait)


def _parse_seconds(value: str) -> float | None:
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds

"""``bind``: tie a status URL to the requester that created the task (docs/protocol.md).

The credential named by ``bind`` is read from the request and only a keyed hash of it
(HMAC-SHA256 with the store's shared secret) is stored, never the credential itself. A status
request whose credential hashes differently gets the same ``404`` as an unknown id.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from typing import Any

from .errors import ConfigurationError

__all__ = ["BindOption", "Binding", "cookie_value"]

BindOption = str | Callable[[dict[str, Any]], str | None] | None


def cookie_value(header: str, name: str) -> str | None:
    """The value of the first cookie called *name* in a ``Cookie`` header, or None.

    Our own reading of RFC 6265 §5.2/§5.4 instead of werkzeug's ``parse_cookie``, whose
    answer for malformed headers changed between werkzeug 2.3 and 3 (the owner key of one
    request must not depend on the installed werkzeug). Each ``;``-separated pair is split at
    its first ``=`` and stripped; a pair that is malformed (no ``=``, an empty name, an
    unbalanced quote, a control character) is skipped on its own, so one bad cookie never hides
    the others (``SimpleCookie`` drops the whole header). A double-quoted value is unquoted,
    with the backslash and octal escapes ``SimpleCookie`` writes. An empty value is no value.
    """
    for pair in header.split(";"):
        key, sep, value = pair.partition("=")
        if not sep or key.strip(" \t") != name:
            continue
        value = value.strip(" \t")
        if _CONTROL.search(value):
            continue
        if value.startswith('"') or value.endswith('"'):
            if len(value) < 2 or not (value.startswith('"') and value.endswith('"')):
                continue  # unbalanced quote: malformed
            value = _ESCAPE.sub(_unescape, value[1:-1])
        return value or None
    return None


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ESCAPE = re.compile(r"\\(?:([0-3][0-7][0-7])|(.))")


def _unescape(match: re.Match[str]) -> str:
    octal, char = match.groups()
    return chr(int(octal, 8)) if octal else char


def _cookie(name: str) -> Callable[[dict[str, Any]], str | None]:
    def read(environ: dict[str, Any]) -> str | None:
        raw = environ.get("HTTP_COOKIE")
        return cookie_value(raw, name) if raw else None

    return read


def _credential_reader(bind: BindOption) -> Callable[[dict[str, Any]], str | None] | None:
    if bind is None:
        return None
    if callable(bind):
        return bind
    if not isinstance(bind, str):
        raise ConfigurationError(f"bind must be a string or a callable, not {bind!r}")
    kind, _, name = bind.partition(":")
    kind = kind.strip().lower()
    if kind == "authorization" and not name:
        return lambda environ: environ.get("HTTP_AUTHORIZATION")
    if kind == "remote_user" and not name:
        return lambda environ: environ.get("REMOTE_USER")
    if kind == "cookie" and name.strip():
        return _cookie(name.strip())
    raise ConfigurationError(
        f"bind={bind!r}: expected 'authorization', 'cookie:NAME', 'remote_user' or a callable"
    )


class Binding:
    """Computes the owner key of a request; ``owner_of`` returns None when unbound."""

    def __init__(self, bind: BindOption, secret: Callable[[], bytes]) -> None:
        self._read = _credential_reader(bind)
        self._secret = secret

    @property
    def enabled(self) -> bool:
        return self._read is not None

    def credential(self, environ: dict[str, Any]) -> str | None:
        """The requester's credential, or None when it has none (absent or empty)."""
        if self._read is None:
            return None
        credential = self._read(environ)
        if credential is None:
            return None
        text = str(credential)
        return text if text.strip() else None

    def is_anonymous(self, environ: dict[str, Any]) -> bool:
        """True when ``bind`` is on and the request carries no credential. Such a request
        is never deferred (docs/security.md, "Anonymous requesters"): there is nobody to
        bind its task to, and binding it to "no credential" would share it, and its
        quota, with every other anonymous client."""
        return self._read is not None and self.credential(environ) is None

    def owner_of(self, environ: dict[str, Any]) -> str | None:
        """The keyed hash of the requester's credential; None when unbound or anonymous
        (a status request without a credential never matches any task's owner)."""
        credential = self.credential(environ)
        if credential is None:
            return None
        data = credential.encode("utf-8", "surrogatepass")
        return hmac.new(self._secret(), data, hashlib.sha256).hexdigest()

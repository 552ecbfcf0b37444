"""``bind``: tie a status URL to the requester that created the task (docs/protocol.md).

The credential named by ``bind`` is read from the request and only a keyed hash of it
(HMAC-SHA256 with the store's shared secret) is stored, never the credential itself. A status
request whose credential hashes differently gets the same ``404`` as an unknown id.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

from werkzeug.http import parse_cookie

from .errors import ConfigurationError

__all__ = ["BindOption", "Binding"]

BindOption = str | Callable[[dict[str, Any]], str | None] | None


def _cookie(name: str) -> Callable[[dict[str, Any]], str | None]:
    def read(environ: dict[str, Any]) -> str | None:
        raw = environ.get("HTTP_COOKIE")
        if not raw:
            return None
        # werkzeug's parser, not http.cookies: SimpleCookie drops the *whole* header when
        # one unrelated cookie has a value it dislikes (JSON, say), which would turn the
        # victim into the anonymous owner.
        return parse_cookie(raw).get(name)

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

    def owner_of(self, environ: dict[str, Any]) -> str | None:
        if self._read is None:
            return None
        credential = self._read(environ)
        # A request without the credential still gets a key (of ""), so anonymous tasks are
        # visible only to anonymous requesters, never to a logged-in stranger or vice versa.
        data = ("" if credential is None else str(credential)).encode("utf-8", "surrogatepass")
        return hmac.new(self._secret(), data, hashlib.sha256).hexdigest()

"""One rule for the fields that belong to a single connection, applied in both directions:
request variables that the replay does not get, and response headers that are not stored.

RFC 9110 §7.6.1: "Intermediaries MUST parse a received Connection header field before a message
is forwarded and, for each connection-option in this field, remove any header or trailer field(s)
from the message with the same name as the connection-option, and then remove the Connection
header field itself". A replay is a new hop (a new "connection" from the app's point of view), and
so is each later fetch of a stored response.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "CONNECTION_SPECIFIC_FIELDS",
    "connection_options",
    "hop_by_hop_fields",
    "is_hop_by_hop",
    "variable_field_name",
]

#: Lower-case names of the fields that never travel past one hop, whatever ``Connection`` says:
#:
#: * ``connection``, ``proxy-connection``, ``keep-alive``, ``te``, ``transfer-encoding``,
#:   ``upgrade``: the connection-specific fields RFC 9110 §7.6.1 lists. The replay reads a
#:   de-chunked body of exact ``CONTENT_LENGTH``; a copied ``Transfer-Encoding: chunked`` would
#:   make werkzeug ignore that length and read nothing.
#: * ``trailer`` (RFC 9110 §6.6.2): it announces trailer fields of a chunked body; the replayed
#:   body is de-chunked and has none.
#: * ``proxy-authenticate`` and ``proxy-authorization`` (RFC 9110 §11.7.1, §11.7.4): they apply
#:   "only to the next outbound client" / "the next inbound proxy", and Proxy-Authorization "is
#:   consumed by the first inbound proxy that was expecting to receive credentials". They are
#:   not for the application, and a proxy credential must not be kept in the task store.
CONNECTION_SPECIFIC_FIELDS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


def _normalise(name: str) -> str:
    # CGI turns "X-Foo" and "X_Foo" alike into HTTP_X_FOO (RFC 3875 §4.1.18), so names are
    # compared with "_" and "-" taken as the same character.
    return name.strip().lower().replace("_", "-")


def connection_options(values: Iterable[str]) -> frozenset[str]:
    """The field names listed in ``Connection`` field values: comma-separated tokens
    (RFC 9110 §7.6.1 ``Connection = #connection-option``), case-insensitive."""
    return frozenset(
        _normalise(token) for value in values for token in value.split(",") if token.strip()
    )


def hop_by_hop_fields(connection_values: Iterable[str] = ()) -> frozenset[str]:
    """Every field name that is hop-by-hop in a message whose ``Connection`` field values are
    *connection_values*: the fixed ones plus those the message names."""
    return CONNECTION_SPECIFIC_FIELDS | connection_options(connection_values)


def is_hop_by_hop(name: str, fields: frozenset[str] = CONNECTION_SPECIFIC_FIELDS) -> bool:
    """Whether the field *name* belongs to one connection, given the message's
    :func:`hop_by_hop_fields`."""
    return _normalise(name) in fields


def variable_field_name(key: str) -> str | None:
    """The field name behind a CGI ``HTTP_*`` variable (RFC 3875 §4.1.18), e.g.
    ``HTTP_X_TRACE`` -> ``x-trace``; None for other variables. ``CONTENT_TYPE`` and
    ``CONTENT_LENGTH`` describe the body, not the connection, and a client cannot name them
    away with ``Connection``."""
    if not key.startswith("HTTP_"):
        return None
    return key[5:].lower().replace("_", "-")

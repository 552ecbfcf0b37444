"""Request text made safe to write out: into a log line, or into a URL we send back.

Whatever a client puts in a path, a header or a body reaches us as text it chose. Two places
must not let it take control:

* **Logs** (:func:`log_safe`): a CR or LF in a logged path would end our line and forge the
  next one (``%0d%0a`` in a request path did: issue 8, finding 6); NUL truncates lines in some
  collectors, and other control characters move terminals. Every such character, and the
  backslash itself (so an escape cannot be faked), is written as a Python-style escape.
* **URLs** (:func:`url_prefix`): ``SCRIPT_NAME`` is the mount point the server or a proxy
  reports (gunicorn takes it from a ``SCRIPT_NAME`` header sent from ``forwarded_allow_ips``).
  A value starting ``//`` would turn our ``Location`` into a network-path reference to another
  host (RFC 3986 §4.2), an open redirect; so leading slashes collapse to one.
"""

from __future__ import annotations

__all__ = ["log_safe", "url_prefix"]

_ESCAPES: dict[int, str] = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)}
_ESCAPES.update({code: f"\\x{code:02x}" for code in range(0x80, 0xA0)})  # C1, incl. NEL
_ESCAPES.update(
    {
        ord("\\"): "\\\\",
        ord("\r"): "\\r",
        ord("\n"): "\\n",
        ord("\t"): "\\t",
        0x2028: "\\u2028",  # LINE SEPARATOR and PARAGRAPH SEPARATOR: line ends to some
        0x2029: "\\u2029",  # log viewers and JSON-lines tools
    }
)


def log_safe(text: str) -> str:
    """*text* with every control character (C0, DEL, C1, U+2028/9) and backslash escaped:
    always exactly one line, and the original recoverable from it."""
    return text.translate(_ESCAPES)


def url_prefix(script_name: str) -> str:
    """``SCRIPT_NAME`` as the path prefix of a URL we send: ``""`` or ``"/x/y"``, never
    starting with ``//`` (which a browser reads as another host) and never ending in ``/``."""
    stripped = script_name.strip("/")
    return "/" + stripped if stripped else ""

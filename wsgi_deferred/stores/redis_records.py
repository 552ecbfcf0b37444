"""How :class:`~wsgi_deferred.stores.redis.RedisStore` keeps a TaskRecord in a Redis hash.

One field per record field; a field that is None is absent, floats are ``repr`` (exact
round trip), headers JSON. The Lua scripts (``redis_lua.py``) read the same fields by name.
"""

from __future__ import annotations

import json

from ..task import TaskRecord

__all__ = ["decode", "encode", "fields", "glob_escape", "optional"]

_FLOATS = ("created", "started", "finished", "progress", "lease_expires", "expires")
_TEXTS = ("message", "owner", "label", "status")


def optional(value: object) -> tuple[str, str]:
    """A (present, text) pair: a Lua script cannot tell None from "" otherwise."""
    if value is None:
        return ("0", "")
    return ("1", repr(float(value)) if isinstance(value, (int, float)) else str(value))


def encode(record: TaskRecord) -> dict[str, str]:
    data = record.to_dict()
    data.pop("id")
    if data["headers"] is not None:
        data["headers"] = json.dumps(data["headers"])
    return {
        name: repr(float(value)) if name in _FLOATS else str(value)  # type: ignore[arg-type]
        for name, value in data.items()
        if value is not None
    }


def fields(flat: list[bytes]) -> dict[str, bytes]:
    """HGETALL's flat name, value, name, value... list as a dict."""
    return {k.decode(): v for k, v in zip(flat[::2], flat[1::2], strict=True)}


def decode(task_id: str, fields: dict[str, bytes]) -> TaskRecord:
    text = {name: value.decode() for name, value in fields.items()}
    data: dict[str, object] = {"id": task_id, "state": text["state"]}
    data.update({name: float(text[name]) if name in text else None for name in _FLOATS})
    data.update({name: text.get(name) for name in _TEXTS})
    data["headers"] = json.loads(text["headers"]) if "headers" in text else None
    data["body_size"] = int(text["body_size"]) if "body_size" in text else None
    data["attempts"] = int(text.get("attempts", "0"))
    data["max_attempts"] = int(text.get("max_attempts", "1"))
    return TaskRecord.from_dict(data)


def glob_escape(text: str) -> str:
    """*text* matched literally by a Redis glob pattern (SCAN MATCH)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)

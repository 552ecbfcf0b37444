"""Where deferred tasks run: the executors and :func:`open_executor` to pick one.

``executor=None`` is this process's thread pool; ``"celery+amqp://..."``,
``"celery+redis://..."`` or a ``celery.Celery`` app sends tasks to Celery workers;
``"rq+redis://..."`` or an ``rq.Queue`` to RQ workers. Engines are imported only when used.
A new executor is added to :data:`SCHEMES` (and, for engine objects, :data:`OBJECT_MODULES`)
or registered with :func:`register_executor`; the middleware never changes for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..runner import TaskRunner
    from .base import Executor

__all__ = ["OBJECT_MODULES", "SCHEMES", "open_executor", "register_executor"]

#: URL scheme prefix -> "module:class" of the executor (imported on use).
SCHEMES: dict[str, str] = {
    "threads": "wsgi_deferred.executors.threads:ThreadExecutor",
    "celery": "wsgi_deferred.executors.celery:CeleryExecutor",
    "rq": "wsgi_deferred.executors.rq:RQExecutor",
}
#: Top-level package of an engine object (a celery.Celery app, an rq.Queue) -> scheme.
OBJECT_MODULES: dict[str, str] = {"celery": "celery", "rq": "rq"}


def register_executor(scheme: str, target: str, object_module: str | None = None) -> None:
    """Make ``executor="<scheme>+..."`` (and objects from *object_module*) use the class
    that the import string *target* (``"pkg.module:Class"``) names."""
    SCHEMES[scheme] = target
    if object_module is not None:
        OBJECT_MODULES[object_module] = scheme


def _load(scheme: str) -> type[Executor]:
    module_name, _, name = SCHEMES[scheme].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"executor {scheme!r} needs its engine installed: pip install "
            f"'wsgi_deferred[{scheme}]' ({exc})"
        ) from None
    return getattr(module, name)  # type: ignore[no-any-return]


def open_executor(spec: Any, runner: TaskRunner, **pool_options: Any) -> Executor:
    """The executor *spec* names (None, a URL, an engine object, or an Executor class)."""
    if spec is None or (isinstance(spec, str) and spec == "threads"):
        return _load("threads")(runner, **pool_options)
    if isinstance(spec, str):
        scheme, plus, rest = spec.partition("+")
        if not plus or not rest or scheme not in SCHEMES:
            known = ", ".join(f"{s}+..." for s in SCHEMES if s != "threads")
            raise ConfigurationError(f"executor {spec!r}: expected None, or one of {known}")
        return _load(scheme)(runner, engine=rest, **pool_options)  # type: ignore[call-arg]
    top = type(spec).__module__.partition(".")[0]
    if top in OBJECT_MODULES:
        return _load(OBJECT_MODULES[top])(runner, engine=spec, **pool_options)  # type: ignore[call-arg]
    raise ConfigurationError(
        f"executor must be None, a URL (celery+amqp://..., rq+redis://...), a celery.Celery "
        f"app or an rq.Queue, not {type(spec).__name__}"
    )

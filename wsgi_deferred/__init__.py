"""wsgi_deferred: WSGI middleware that turns slow requests into ``202 Accepted`` plus a status
URL, for any WSGI application.

    from wsgi_deferred import DeferredMiddleware
    app = DeferredMiddleware(app, routes=["POST /render/<id>"])
"""

from __future__ import annotations

from .errors import DeferredError, StoreUnavailable
from .factory import wrap
from .middleware import DeferredMiddleware
from .stores.base import Store
from .task import TaskRecord, TaskState
from .tasklog import TaskIdFilter, current_task_id

__all__ = [
    "DeferredError",
    "DeferredMiddleware",
    "Store",
    "StoreUnavailable",
    "TaskIdFilter",
    "TaskRecord",
    "TaskState",
    "current_task_id",
    "wrap",
]
__version__ = "0.1.0"

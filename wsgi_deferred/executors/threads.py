"""The default executor: this process's bounded thread pool (:mod:`wsgi_deferred.pool`).

A task runs in the web process that accepted it. With a shared store and a ``retry`` rule its
captured request is kept in the store too, so that when this process dies (``kill -9``, the
OOM killer) a sibling process's retry sweeper picks the task up.
"""

from __future__ import annotations

from .base import Executor

__all__ = ["ThreadExecutor"]


class ThreadExecutor(Executor):
    """Everything runs here, in ``workers`` threads (the behaviour of the bare pool)."""

    remote = False

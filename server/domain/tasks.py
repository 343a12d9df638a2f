"""Stopping background tasks for certain.

redis-py (seen with 6.4 and 8.1) can swallow a cancellation that lands while a command's
reply is on its way: the command returns normally in a task that was cancelled
(redis/redis-py#2028). Measured here against a real redis-server: one cancel in six to
eight that hits a command in flight. A background loop that then sleeps and goes round again
never ends, and whoever awaits it after one ``cancel()`` waits forever: a server that
did not stop on SIGTERM until it was killed. So these cancel again, every
``RECANCEL_S``, until the task is done.
"""

from __future__ import annotations

import asyncio
from typing import Any

RECANCEL_S = 0.05
"""How long a cancelled task may take to end before it is cancelled again (a task's own
cleanup on cancellation is short: closing a connection, a last log line)."""


async def _until_done(tasks: set[asyncio.Task[Any]]) -> None:
    pending = tasks
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_S)


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait until it is done; raises what it failed with, as awaiting
    it would (not its cancellation)."""
    if task is None or task is asyncio.current_task():
        return
    await _until_done({task})
    if not task.cancelled():
        task.result()


async def stop_tasks(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel every task and wait until all are done; what they failed with is dropped."""
    current = asyncio.current_task()
    await _until_done({t for t in tasks if t is not None and t is not current})
    for task in tasks:
        if task is not None and task.done() and not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at exit

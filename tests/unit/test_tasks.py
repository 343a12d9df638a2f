"""Stopping background tasks (``server/domain/tasks.py``) when a cancellation is swallowed,
as redis-py sometimes swallows one that lands while a reply is on its way."""

from __future__ import annotations

import asyncio

import pytest

from server.domain.tasks import stop_task, stop_tasks


async def _swallows_cancels(times: int, ended: list[bool]) -> None:
    """A loop that goes on after its first ``times`` cancellations, as a loop calling
    redis-py does when the command it was in returned normally."""
    swallowed = 0
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed += 1
            if swallowed > times:
                ended.append(True)
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]


async def test_a_task_that_swallows_its_cancellation_is_cancelled_again_until_it_ends() -> None:
    ended: list[bool] = []
    task = asyncio.create_task(_swallows_cancels(2, ended))
    await asyncio.sleep(0)
    async with asyncio.timeout(30):  # a hang guard, not a speed limit
        await stop_task(task)
    assert task.cancelled() and ended == [True]


async def test_stop_task_raises_what_the_task_failed_with_and_stop_tasks_drops_it() -> None:
    async def fails() -> None:
        raise RuntimeError("broken")

    for stop, raises in ((stop_task, True), (stop_tasks, False)):
        task = asyncio.create_task(fails())
        await asyncio.sleep(0)
        if raises:
            with pytest.raises(RuntimeError, match="broken"):
                await stop(task)
        else:
            await stop(task)


async def test_stop_tasks_stops_all_and_skips_the_caller_and_none() -> None:
    ended: list[bool] = []
    tasks = [asyncio.create_task(_swallows_cancels(n, ended)) for n in range(3)]

    async def stopper() -> None:
        await stop_tasks(asyncio.current_task(), None, *tasks)

    await asyncio.sleep(0)
    async with asyncio.timeout(30):
        await asyncio.create_task(stopper())
    assert all(t.cancelled() for t in tasks) and ended == [True] * 3

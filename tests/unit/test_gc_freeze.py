"""The collector policy (``server/web/gc_freeze.py``): freeze per burst, thaw on turnover."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from server.web.gc_freeze import FreezePolicy


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


async def test_the_first_accept_and_every_burst_freeze_and_turnover_thaws() -> None:
    policy = FreezePolicy(every=10)
    policy.opened()  # the first accept: the start-up objects are frozen
    await asyncio.sleep(0)
    assert gc.get_freeze_count() > 0 and policy.open_at_freeze == 1
    for _ in range(9):
        policy.opened()
    await asyncio.sleep(0)
    assert policy.open_at_freeze == 1  # no burst of 10 yet
    policy.opened()
    await asyncio.sleep(0)
    assert policy.open_at_freeze == 11  # frozen again after the burst
    for _ in range(5):
        policy.closed()
    await asyncio.sleep(0)
    assert gc.get_freeze_count() > 0  # 5 of 11 closed: still frozen
    policy.closed()
    await asyncio.sleep(0)
    assert gc.get_freeze_count() == 0  # half turned over: thawed and collected
    assert policy.open == 5


async def test_zero_never_freezes() -> None:
    policy = FreezePolicy(every=0)
    for _ in range(100):
        policy.opened()
    await asyncio.sleep(0)
    assert gc.get_freeze_count() == 0

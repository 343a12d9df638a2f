"""Fixtures of the reliability suite: server processes the test may kill, logs checked after.

Every server a test starts through ``spawn`` has its log searched for a Python traceback when
the test ends: a fault the server survives must not leave one behind either. Only a test
that breaks an invariant on purpose (which is logged with its traceback) opts out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from tests.reliability.helpers import FAST, assert_no_traceback, ledger_on
from tests.support.servers import ServerProcess

Spawn = Callable[..., ServerProcess]
Books = Callable[[str], Awaitable[Ledger]]


@pytest.fixture
async def books(keys: Keys) -> AsyncIterator[Books]:
    """A ledger of the test's own on a Redis URL (to set up and check the books); its
    client is closed at teardown even when the test fails."""
    opened: list[Ledger] = []

    async def open_books(url: str) -> Ledger:
        ledger = await ledger_on(url, keys)
        opened.append(ledger)
        return ledger

    yield open_books
    for ledger in opened:
        await ledger.redis.aclose()


@pytest.fixture
def spawn(tmp_path: Path, keys: Keys) -> Iterator[Spawn]:
    """Start a giftwire server on ``redis_url`` (the test's key prefix, FAST limits)."""
    started: list[ServerProcess] = []
    checked: list[ServerProcess] = []

    def start(
        redis_url: str, *, ready: bool = True, traceback_expected: bool = False, **env: str
    ) -> ServerProcess:
        server = ServerProcess(redis_url, keys.prefix, tmp_path, **{**FAST, **env})
        started.append(server)
        if not traceback_expected:
            checked.append(server)
        if ready:
            server.start()
        return server

    yield start
    for server in started:
        server.stop()
    assert_no_traceback(*(server.log_path for server in checked))

"""Fixtures of the reliability suite: server processes the test may kill, logs checked after.

Every server a test starts through ``spawn`` has its log searched for a Python traceback when
the test ends: a fault the server survives must not leave one behind either. Only a test
that breaks an invariant on purpose (which is logged with its traceback) opts out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.ledger.keys import Keys
from tests.reliability.helpers import FAST, assert_no_traceback
from tests.support.servers import ServerProcess

Spawn = Callable[..., ServerProcess]


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

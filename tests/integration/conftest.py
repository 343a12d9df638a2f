"""Fixtures of the integration tests beyond the shared ones in ``tests/conftest.py``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.ledger.embedded import RedisProcess

STARVED_MAXMEMORY = "8mb"
"""Small enough to fill in a moment, large enough for Redis to start and load the scripts."""


@pytest.fixture
def starved_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server of the test's own with a small ``maxmemory`` and ``noeviction``."""
    server = RedisProcess(tmp_path / "redis", maxmemory=STARVED_MAXMEMORY)
    server.start()
    yield server
    server.stop()

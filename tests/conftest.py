"""Shared fixtures: a real redis-server started by the tests, on a free port, in a temp dir."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from server.domain.catalog import load_catalog
from server.domain.limits import Limits
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """One redis-server for the whole session; tests isolate themselves by key prefix."""
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server of the test's own, which it may kill, restart or starve of memory."""
    server = RedisProcess(tmp_path / "redis", appendfsync="always")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def keys() -> Keys:
    return Keys(prefix=f"t{uuid.uuid4().hex[:10]}:")


@pytest.fixture
async def redis(redis_server: RedisProcess) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=False)
    yield client
    await client.aclose()


@pytest.fixture
def limits() -> Limits:
    # Generous rate limits so that tests of other rules are not throttled.
    return Limits(gifts_per_s_max=100_000, gift_burst_max=100_000)


@pytest.fixture
async def ledger(redis: Redis, keys: Keys, limits: Limits) -> Ledger:
    ledger = Ledger(redis, keys=keys, limits=limits)
    await ledger.prepare(load_catalog())
    return ledger

"""``change_rate.lua`` (``server/ledger/change_limits.py``) against real Redis, on one node
and on the loopback cluster: the per-user bucket of state-changing HTTP calls.

The script reads the clock from Redis (``TIME``), which a test cannot move: the refill is
tested by moving the stored ``at`` back, to where it would be after the clock moved. The
rate is one change a minute, so the clock's own progress during a test adds no token.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from server.domain.errors import ErrorCode, LedgerRefusal
from server.domain.limits import Limits
from server.ledger.change_limits import RATE_LIMITED_MESSAGE, ChangeKeys, ChangeLimiter
from server.ledger.cluster_keys import ClusterKeys, slot_of
from server.ledger.cluster_runner import ClusterScriptRunner
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.receipts import unpack
from server.ledger.runner import ScriptRunner
from server.ledger.scripts import ScriptName
from server.ledger.spending import ScriptRuns
from tests.support.cluster import RedisCluster

PER_MINUTE, BURST = 1, 3
LIMITS = Limits(changes_per_minute_max=PER_MINUTE, change_burst_max=BURST)


@dataclass
class Store:
    runner: ScriptRuns
    keys: ChangeKeys
    client_of: Callable[[str], Redis]
    """The Redis holding a key (on a cluster, its slot's primary)."""

    def limiter(self, limits: Limits = LIMITS) -> ChangeLimiter:
        return ChangeLimiter(self.runner, self.keys, limits)


@pytest.fixture(params=["single", "cluster"])
async def store(request: pytest.FixtureRequest, keys: Keys) -> AsyncIterator[Store]:
    if request.param == "single":
        server: RedisProcess = request.getfixturevalue("redis_server")
        redis = Redis.from_url(server.url)
        runner = ScriptRunner(redis, timeout_s=2)
        await runner.prepare()
        yield Store(runner, keys, lambda key: redis)
        await redis.aclose()
        return
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    on_cluster = ClusterScriptRunner(cluster.startup_urls, timeout_s=2)
    await on_cluster.prepare()

    def client_of(key: str) -> Redis:
        return on_cluster.client(on_cluster.primary_of(slot_of(key)))

    yield Store(on_cluster, ClusterKeys(keys.prefix), client_of)
    await on_cluster.aclose()


async def _refused(limiter: ChangeLimiter, user: str) -> dict[str, object]:
    with pytest.raises(LedgerRefusal) as refused:
        await limiter.take(user)
    assert refused.value.code is ErrorCode.RATE_LIMITED
    assert refused.value.message == RATE_LIMITED_MESSAGE
    assert refused.value.detail is not None
    return refused.value.detail


async def test_a_burst_then_refusals_that_write_nothing(store: Store) -> None:
    limiter = store.limiter()
    assert [await limiter.take("alice") for _ in range(BURST)] == [2, 1, 0]
    key = store.keys.changes("alice")
    redis = store.client_of(key)
    held = await redis.hgetall(key)
    detail = await _refused(limiter, "alice")
    retry_after_ms = detail["retry_after_ms"]
    assert isinstance(retry_after_ms, int) and 0 < retry_after_ms <= 60_000 // PER_MINUTE
    assert await redis.hgetall(key) == held  # a refusal spends nothing and moves nothing
    assert await limiter.take("bob") == BURST - 1  # another user's bucket is their own


async def test_the_bucket_expires_once_it_would_be_full(store: Store) -> None:
    await store.limiter().take("alice")
    key = store.keys.changes("alice")
    ttl_ms = await store.client_of(key).pttl(key)
    # One token spent, back in one minute: then the bucket is full and may as well be gone.
    assert 50_000 < ttl_ms <= 60_001


async def test_a_token_comes_back_at_the_rate(store: Store) -> None:
    limiter = store.limiter()
    for _ in range(BURST):
        await limiter.take("alice")
    key = store.keys.changes("alice")
    redis = store.client_of(key)
    at = int(await redis.hget(key, "at"))
    await redis.hset(key, "at", at - 60_000 // PER_MINUTE)  # as if a minute had passed
    assert await limiter.take("alice") == 0
    await _refused(limiter, "alice")


async def test_concurrent_takes_never_pass_the_burst(store: Store) -> None:
    limiter = store.limiter(Limits(changes_per_minute_max=1, change_burst_max=10))

    async def take() -> bool:
        try:
            await limiter.take("alice")
        except LedgerRefusal as refusal:
            assert refusal.code is ErrorCode.RATE_LIMITED
            return False
        return True

    taken = await asyncio.gather(*(take() for _ in range(60)))
    assert sum(taken) == 10


@pytest.mark.parametrize("args", [["0", "3"], ["1", "0"], ["1e3", "3"], ["60"]])
async def test_bad_arguments_are_refused_before_any_write(store: Store, args: list[str]) -> None:
    key = store.keys.changes("alice")
    reply = await store.runner.run(ScriptName.CHANGE_RATE, [key], args)
    with pytest.raises(LedgerRefusal) as refused:
        unpack(reply)
    assert refused.value.code is ErrorCode.INVALID_REQUEST
    assert await store.client_of(key).exists(key) == 0

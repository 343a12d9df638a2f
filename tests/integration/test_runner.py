"""The script runner against a real Redis: NOSCRIPT, shared pipelines, crashes, OOM, timeouts."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from server.domain.catalog import load_catalog
from server.domain.errors import InvariantError, UnavailableError
from server.domain.limits import Limits
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.ledger.runner import ScriptRunner
from tests.integration.helpers import (
    CREATOR,
    STREAM,
    assert_books_reconcile,
    gift,
    make_ledger,
    snapshot,
)


@pytest.fixture
async def own_client(own_redis: RedisProcess) -> AsyncIterator[Redis]:
    client = Redis.from_url(own_redis.url, decode_responses=False)
    yield client
    await client.aclose()


class PipelineSpy:
    """Counts the pipelines the runner sends, their sizes and how many overlap."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        self.in_flight = 0
        self.in_flight_most = 0
        original = ScriptRunner._pipeline

        async def counting(runner: ScriptRunner, batch: list[object]) -> list[object]:
            self.sizes.append(len(batch))
            self.in_flight += 1
            self.in_flight_most = max(self.in_flight_most, self.in_flight)
            try:
                return await original(runner, batch)  # type: ignore[arg-type]
            finally:
                self.in_flight -= 1

        monkeypatch.setattr(ScriptRunner, "_pipeline", counting)


# NOSCRIPT


async def test_script_flush_is_answered_by_loading_the_scripts_again(
    ledger: Ledger, redis: Redis
) -> None:
    first = await ledger.top_up(payment_id="pay1", user_id="alice", coins=10)
    await redis.script_flush()
    assert not await ledger.runner.scripts_loaded()
    second = await ledger.top_up(payment_id="pay2", user_id="alice", coins=5)
    assert not second.replayed and second.balance == 15
    assert await ledger.runner.scripts_loaded()
    await redis.script_flush()
    again = await ledger.top_up(payment_id="pay1", user_id="alice", coins=10)
    assert again.replayed and again.transfer_id == first.transfer_id
    await assert_books_reconcile(ledger)


async def test_script_flush_under_concurrent_calls_of_every_script(
    ledger: Ledger, redis: Redis
) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    await ledger.top_up(payment_id="pay-a", user_id="alice", coins=10_000)
    await gift(ledger, "big", gift_id="interstellar")  # 5000 diamonds for the creator
    await ledger.top_up(payment_id="pay-b", user_id="bob", coins=100)
    await redis.script_flush()
    results = await asyncio.gather(
        ledger.top_up(payment_id="pay-c", user_id="carol", coins=50),
        ledger.refund(payment_id="pay-b", user_id="bob", refund_id="r1", coins=100),
        ledger.cash_out(client_id="c1", creator_id=CREATOR, diamonds=1_000),
        ledger.start_stream(stream_id="live2", creator_id="creator2", title="t"),
        *(gift(ledger, f"g{i}", sender="carol") for i in range(20)),
    )
    assert not any(getattr(r, "replayed", True) for r in results)
    await ledger.end_stream(stream_id="live2", actor_id="creator2", is_admin=False)
    assert (await ledger.balance("carol")).coins == 30
    await assert_books_reconcile(ledger)


# Shared pipelines


async def test_concurrent_calls_share_pipelines(
    ledger: Ledger, limits: Limits, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = PipelineSpy(monkeypatch)
    calls = 200
    results = await asyncio.gather(
        *(ledger.top_up(payment_id=f"p{i}", user_id=f"user{i}", coins=1) for i in range(calls))
    )
    assert len(results) == calls and sum(spy.sizes) == calls
    assert len(spy.sizes) < calls
    assert len(spy.sizes) <= (
        math.ceil(calls / limits.pipeline_calls_max) + limits.pipelines_in_flight_max
    )
    await assert_books_reconcile(ledger)


async def test_pipelines_respect_their_size_and_concurrency_limits(
    redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits = Limits(pipeline_calls_max=4, pipelines_in_flight_max=2)
    ledger = await make_ledger(redis, keys, limits)
    spy = PipelineSpy(monkeypatch)
    await asyncio.gather(
        *(ledger.top_up(payment_id=f"p{i}", user_id=f"user{i % 3}", coins=1) for i in range(40))
    )
    assert sum(spy.sizes) == 40 and max(spy.sizes) <= 4
    assert spy.in_flight_most <= 2
    await assert_books_reconcile(ledger)


async def test_a_failing_script_fails_only_its_own_call(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await redis.hset(keys.account("broken"), "coins", "abc")
    results = await asyncio.gather(
        *(ledger.top_up(payment_id=f"p{i}", user_id="alice", coins=1) for i in range(5)),
        ledger.top_up(payment_id="bad", user_id="broken", coins=1),
        *(ledger.top_up(payment_id=f"q{i}", user_id="alice", coins=1) for i in range(5)),
        return_exceptions=True,
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], InvariantError)
    assert (await ledger.balance("alice")).coins == 10


# Redis going away


async def test_killed_redis_is_unavailable_and_a_retry_after_restart_replays(
    own_redis: RedisProcess, own_client: Redis, limits: Limits
) -> None:
    ledger = await make_ledger(own_client, Keys("gw:"), limits)
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=100)
    sent = await gift(ledger, "g1", gift_id="perfume")

    own_redis.kill()
    with pytest.raises(UnavailableError):
        await gift(ledger, "g2", gift_id="perfume")
    with pytest.raises(UnavailableError):
        await ledger.balance("alice")
    assert not await ledger.ping()

    # The same port and folder: the AOF (appendfsync always) brings back every
    # acknowledged write, but not the script cache, which the runner refills on NOSCRIPT.
    own_redis.start()
    assert not await ledger.runner.scripts_loaded()
    again = await gift(ledger, "g1", gift_id="perfume")
    assert again.replayed and again.transfer_id == sent.transfer_id and again.balance == 80
    # g2 failed before it reached Redis; its retry sends it for the first time.
    late = await gift(ledger, "g2", gift_id="perfume")
    assert not late.replayed and late.balance == 60
    assert await ledger.ping()
    await assert_books_reconcile(ledger)


async def test_a_timeout_is_unknown_and_the_retry_settles_it(
    own_redis: RedisProcess, own_client: Redis
) -> None:
    ledger = await make_ledger(own_client, Keys("gw:"), Limits(redis_timeout_s=0.2))
    admin = Redis.from_url(own_redis.url)
    try:
        # Hold every write: the script is sent but not answered within the timeout.
        await admin.client_pause(60_000, all=False)
        with pytest.raises(UnavailableError):
            await ledger.top_up(payment_id="pay1", user_id="alice", coins=100)
        await admin.client_unpause()
    finally:
        await admin.aclose()
    # Whether the first attempt ran or not, the retry settles it, and only once.
    receipt = await ledger.top_up(payment_id="pay1", user_id="alice", coins=100)
    assert receipt.balance == 100
    assert (await ledger.balance("alice")).coins == 100
    await assert_books_reconcile(ledger)


# Out of memory


async def _fill_memory(redis: Redis) -> None:
    """Write filler keys (outside every test prefix) until even a tiny write is refused."""
    index = 0
    for size in (100_000, 1_000, 10):
        try:
            while True:
                await redis.set(f"filler:{index}", b"x" * size)
                index += 1
        except redis_errors.OutOfMemoryError:
            pass
    with pytest.raises(redis_errors.OutOfMemoryError):
        await redis.set("filler:last", b"x")


async def _prepare_books(ledger: Ledger) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    await ledger.top_up(payment_id="pay-a", user_id="alice", coins=10_000)
    await ledger.top_up(payment_id="pay-b", user_id="bob", coins=100)
    await gift(ledger, "big", gift_id="interstellar")  # 5000 diamonds for the creator


OPERATIONS: dict[str, Callable[[Ledger], Awaitable[object]]] = {
    "top_up": lambda ledger: ledger.top_up(payment_id="pay-c", user_id="bob", coins=5),
    "refund": lambda ledger: ledger.refund(
        payment_id="pay-b", user_id="bob", refund_id="r1", coins=100
    ),
    "cash_out": lambda ledger: ledger.cash_out(client_id="c1", creator_id=CREATOR, diamonds=1000),
    "send_gift": lambda ledger: gift(ledger, "small", sender="bob"),
    "start_stream": lambda ledger: ledger.start_stream(
        stream_id="live2", creator_id="creator2", title="t"
    ),
    "end_stream": lambda ledger: ledger.end_stream(
        stream_id=STREAM, actor_id=CREATOR, is_admin=False
    ),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
async def test_out_of_memory_refuses_the_whole_script(
    starved_redis: RedisProcess, limits: Limits, operation: str
) -> None:
    client = Redis.from_url(starved_redis.url, decode_responses=False)
    try:
        keys = Keys("gw:")
        ledger = await make_ledger(client, keys, limits)
        await _prepare_books(ledger)
        await _fill_memory(client)
        before = await snapshot(client, keys)
        with pytest.raises(UnavailableError):
            await OPERATIONS[operation](ledger)
        assert await snapshot(client, keys) == before
        # Once memory is freed, the same call goes through.
        await _free_memory(client)
        await OPERATIONS[operation](ledger)
        await assert_books_reconcile(ledger)
    finally:
        await client.aclose()


async def _free_memory(redis: Redis) -> None:
    async for key in redis.scan_iter(match="filler:*", count=1000):
        await redis.delete(key)


async def test_a_redis_that_lost_its_data_gets_the_catalog_again(own_redis: RedisProcess) -> None:
    """Redis restarted without persistence: scripts and catalog are gone. The first call's
    NOSCRIPT reloads the scripts and republishes the catalog, so gifts are not all refused
    as unknown."""
    client = Redis.from_url(own_redis.url)
    try:
        ledger = Ledger(client, limits=Limits(gifts_per_s_max=1000, gift_burst_max=1000))
        await ledger.prepare(load_catalog())
        await client.flushall()
        await client.script_flush()
        await ledger.start_stream(stream_id="s1", creator_id="c1", title="again")
        await ledger.top_up(payment_id="p1", user_id="u1", coins=10)
        receipt = await ledger.send_gift(
            client_id="g1", sender_id="u1", sender_name="U", stream_id="s1",
            creator_id="c1", gift_id="rose", count=1,
        )  # fmt: skip
        assert receipt.balance == 9
    finally:
        await client.aclose()

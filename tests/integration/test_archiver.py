"""The archiver against a real Redis and a real PostgreSQL: every log entry recorded once,
acknowledged only after the commit, claimed after a crash, and the log trimmed safely."""

from __future__ import annotations

import asyncio

import pytest
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.record.archiver import GROUP, Archiver, ArchiverConfig
from server.record.connection import RecordPool
from server.record.postings import to_transfer
from server.record.store import record_transfers
from tests.integration.record_helpers import (
    mixed_transfers,
    recorded_balances,
    recorded_ids,
    unbalanced_transfers,
)

FAST = ArchiverConfig(batch_max=100, block_ms=20, claim_idle_ms=60_000, lease_ttl_ms=2_000)


def archiver(ledger: Ledger, pool: RecordPool, consumer: str = "a1") -> Archiver:
    return Archiver(ledger.redis, pool, ledger.keys, config=FAST, consumer=consumer)


async def _log_ids(redis: Redis, keys: Keys) -> list[str]:
    return [entry_id.decode() for entry_id, _ in await redis.xrange(keys.ledger())]


async def test_every_entry_is_recorded_once_with_balanced_postings(
    ledger: Ledger, record_pool: RecordPool
) -> None:
    ids = await mixed_transfers(ledger, 600)
    arch = archiver(ledger, record_pool)
    assert await arch.drain() == len(ids)
    assert sorted(await recorded_ids(record_pool)) == sorted(ids)
    assert await unbalanced_transfers(record_pool) == 0
    balances = await recorded_balances(record_pool)
    for user in {user for user, _ in balances if user}:
        held = await ledger.balance(user)
        assert balances.get((user, "coins"), 0) == held.coins
        assert balances.get((user, "diamonds"), 0) == held.diamonds
        assert -balances.get((user, "debt"), 0) == held.debt_coins
    platform = int(await ledger.redis.hget(ledger.keys.platform(), "coins") or 0)
    assert balances[(None, "platform")] == platform
    # A second pass finds nothing new, and a new transfer is picked up.
    assert await arch.drain() == 0
    more = await mixed_transfers(ledger, 650, seed=2)
    await arch.drain()
    assert sorted(await recorded_ids(record_pool)) == sorted(ids | more)


async def test_committed_but_unacknowledged_entries_are_replays(
    ledger: Ledger, record_pool: RecordPool
) -> None:
    ids = await mixed_transfers(ledger, 150)
    # An archiver that died after its commit and before its XACK: the entries are in the
    # record and still pending in the group.
    dead = archiver(ledger, record_pool, consumer="dead")
    await dead.ensure_group()
    reply = await ledger.redis.xreadgroup(GROUP, "dead", {ledger.keys.ledger(): ">"}, count=50)
    rows = reply[0][1]
    async with record_pool.connection() as conn:
        await record_transfers(
            conn,
            [
                to_transfer(i.decode(), {k.decode(): v.decode() for k, v in f.items()})
                for i, f in rows
            ],
        )
    alive = archiver(ledger, record_pool, consumer="alive")
    await alive.drain()
    assert (alive.stats.claimed, alive.stats.replayed) == (50, 50)
    assert alive.stats.recorded == len(ids) - 50
    assert sorted(await recorded_ids(record_pool)) == sorted(ids)
    consumers = await ledger.redis.xinfo_consumers(ledger.keys.ledger(), GROUP)
    assert [c["name"] for c in consumers] == [b"alive"]  # the dead one is forgotten


async def test_entries_pending_for_a_crashed_archiver_are_not_trimmed(
    ledger: Ledger, record_pool: RecordPool
) -> None:
    ids = await mixed_transfers(ledger, 1_000)
    arch = archiver(ledger, record_pool)
    await arch.ensure_group()
    reply = await ledger.redis.xreadgroup(GROUP, "dead", {ledger.keys.ledger(): ">"}, count=300)
    held = [entry_id.decode() for entry_id, _ in reply[0][1]]
    await arch.step()  # reads, records and acks new entries, never the dead one's
    while await arch.step():
        pass
    await arch.trim()
    left = await _log_ids(ledger.redis, ledger.keys)
    assert set(held) <= set(left)
    assert sorted(await recorded_ids(record_pool)) == sorted(set(ids) - set(held))
    # Taking over claims them; then the log is trimmed to about one node.
    await arch.drain()
    assert sorted(await recorded_ids(record_pool)) == sorted(ids)
    assert len(await _log_ids(ledger.redis, ledger.keys)) <= 100


async def test_the_log_is_trimmed_only_below_what_is_recorded(
    ledger: Ledger, record_pool: RecordPool
) -> None:
    await mixed_transfers(ledger, 2_000)
    arch = archiver(ledger, record_pool)
    await arch.drain()
    recorded = set(await recorded_ids(record_pool))
    left = await _log_ids(ledger.redis, ledger.keys)
    assert len(left) <= 100
    info = await ledger.redis.xinfo_stream(ledger.keys.ledger())
    assert int(info["entries-added"]) == len(recorded)
    # Nothing trimmed is missing from the record.
    assert arch.stats.trimmed == len(recorded) - len(left)


async def test_an_entry_without_a_posting_rule_stops_the_archiver(
    ledger: Ledger, record_pool: RecordPool
) -> None:
    ids = await mixed_transfers(ledger, 30)
    await ledger.redis.xadd(ledger.keys.ledger(), {"type": "bonus", "to": "x", "coins": "5"})
    arch = archiver(ledger, record_pool)
    with pytest.raises(Exception, match="no posting rule for entry type 'bonus'"):
        await arch.drain()
    # The batch holding it was not recorded, not acknowledged, and not trimmed.
    assert await recorded_ids(record_pool) == []
    assert len(await _log_ids(ledger.redis, ledger.keys)) == len(ids) + 1


async def test_a_lost_consumer_group_is_created_again(
    ledger: Ledger, record_pool: RecordPool
) -> None:
    ids = await mixed_transfers(ledger, 40)
    arch = archiver(ledger, record_pool)
    await arch.drain()
    await ledger.redis.xgroup_destroy(ledger.keys.ledger(), GROUP)
    more = await mixed_transfers(ledger, 40, seed=3)
    await arch.step()  # NOGROUP: recreated at the start of what is left
    await arch.drain()
    assert sorted(await recorded_ids(record_pool)) == sorted(ids | more)


async def test_one_archiver_is_active_at_a_time(ledger: Ledger, record_pool: RecordPool) -> None:
    first, second = archiver(ledger, record_pool, "one"), archiver(ledger, record_pool, "two")
    assert await first.lease.acquire_or_renew()
    assert not await second.lease.acquire_or_renew()
    assert await first.lease.acquire_or_renew()  # renewal
    await first.lease.release()
    assert await second.lease.acquire_or_renew()
    assert not await first.lease.acquire_or_renew()


async def test_run_archives_until_stopped_and_hands_over(
    ledger: Ledger, record_pool: RecordPool
) -> None:
    stop_one, stop_two = asyncio.Event(), asyncio.Event()
    one, two = archiver(ledger, record_pool, "one"), archiver(ledger, record_pool, "two")
    tasks = [asyncio.create_task(one.run(stop_one)), asyncio.create_task(two.run(stop_two))]
    ids = await mixed_transfers(ledger, 300)
    await _until(lambda: recorded_count(record_pool), len(ids))
    assert sorted([one.stats.batches > 0, two.stats.batches > 0]) == [False, True]
    active, standby = (one, two) if one.stats.batches else (two, one)
    (stop_one if active is one else stop_two).set()
    more = await mixed_transfers(ledger, 300, seed=4)
    await _until(lambda: recorded_count(record_pool), len(ids | more))
    assert standby.stats.batches > 0
    stop_one.set()
    stop_two.set()
    await asyncio.gather(*tasks)
    assert sorted(await recorded_ids(record_pool)) == sorted(ids | more)


async def recorded_count(pool: RecordPool) -> int:
    return len(await recorded_ids(pool))


async def _until(read: object, want: int, timeout_s: float = 30.0) -> None:
    assert callable(read)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (got := await read()) < want:
        assert asyncio.get_running_loop().time() < deadline, f"recorded {got} of {want}"
        await asyncio.sleep(0.05)


async def test_an_archiver_stopped_while_it_backs_off_still_trims_what_it_recorded(
    ledger: Ledger, record_pool: RecordPool
) -> None:
    # The timer's trims never come (a long interval), so only the last trim on stop can
    # shorten the log; the archiver stops while it backs off after an error, which took
    # the lease away from its loop (the lease itself is still its own in Redis).
    slow_trims = ArchiverConfig(
        batch_max=100, block_ms=20, claim_idle_ms=60_000, lease_ttl_ms=2_000,
        trim_interval_s=3600, retry_s_max=60,
    )  # fmt: skip
    arch = Archiver(ledger.redis, record_pool, ledger.keys, config=slow_trims, consumer="a1")
    ids = await mixed_transfers(ledger, 500)
    stop, failures = asyncio.Event(), [0]
    step = arch.step

    async def failing_once_recorded() -> int:
        if await recorded_count(record_pool) >= len(ids):
            failures[0] += 1
            raise redis_errors.ConnectionError("Redis went away")
        return await step()

    arch.step = failing_once_recorded  # type: ignore[method-assign]
    task = asyncio.create_task(arch.run(stop))
    await _until(lambda: _count(failures), 1)
    assert len(await _log_ids(ledger.redis, ledger.keys)) > 100  # nothing trimmed yet
    stop.set()
    await task
    assert len(await _log_ids(ledger.redis, ledger.keys)) <= 100


async def _count(box: list[int]) -> int:
    return box[0]

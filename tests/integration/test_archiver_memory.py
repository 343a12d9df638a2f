"""Redis' memory stays flat under a sustained load while the archiver runs, and grows
without it: the log is trimmed as fast as PostgreSQL records it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis

from server.domain.catalog import load_catalog
from server.domain.limits import Limits
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.record.archiver import Archiver, ArchiverConfig
from server.record.connection import RecordPool
from tests.integration.helpers import CREATOR, STREAM, gift

GIFTS = 30_000
CHECKPOINTS = 5
CONCURRENCY = 200
LOG_BYTES_BOUND = 256 * 1024
"""With the archiver on and caught up, the log holds no more than about a batch and a node
or two of entries: far below this (30,000 entries take about 3.5 MB)."""
CATCH_UP_S_MAX = 20.0
RECEIPT_TTL_S = 1


async def _caught_up(redis: Redis, keys: Keys) -> None:
    """Wait until the archiver has recorded all but one batch of the log."""
    deadline = asyncio.get_running_loop().time() + CATCH_UP_S_MAX
    while asyncio.get_running_loop().time() < deadline:
        groups = await redis.xinfo_groups(keys.ledger())
        if groups and int(groups[0]["lag"] or 0) + int(groups[0]["pending"]) <= 1_000:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the archiver did not catch up")


async def _load(ledger: Ledger, redis: Redis, tag: str, archiving: bool) -> list[tuple[int, int]]:
    """Send ``GIFTS`` gifts; (used_memory, log bytes) at each checkpoint."""
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="memory")
    senders = [f"{tag}-{i}" for i in range(50)]
    for sender in senders:
        await ledger.top_up(payment_id=f"p-{sender}", user_id=sender, coins=10**9)
    samples: list[tuple[int, int]] = []
    per_checkpoint = GIFTS // CHECKPOINTS
    for checkpoint in range(CHECKPOINTS):
        for start in range(0, per_checkpoint, CONCURRENCY):
            await asyncio.gather(
                *(
                    gift(ledger, f"{tag}-{checkpoint}-{start + i}", sender=senders[i % 50])
                    for i in range(CONCURRENCY)
                )
            )
        if archiving:
            await _caught_up(redis, ledger.keys)
        # Let every receipt of this checkpoint outlive its TTL, then SCAN the keyspace, which
        # deletes expired keys (Redis's own expiry only samples them): what is left to
        # measure is the log and state of a fixed size. The archiver trims meanwhile.
        await asyncio.sleep(RECEIPT_TTL_S + 0.2)
        async for _ in redis.scan_iter(count=1_000):
            pass
        info = await redis.info("memory")
        samples.append(
            (int(info["used_memory"]), int(await redis.memory_usage(ledger.keys.ledger()) or 0))
        )
    return samples


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("archiving", [True, False], ids=["archiver-on", "archiver-off"])
async def test_redis_memory_is_flat_with_the_archiver_and_grows_without(
    archiving: bool, tmp_path: Path, record_pool: RecordPool
) -> None:
    with RedisProcess(tmp_path / "redis") as server:
        redis = Redis.from_url(server.url)
        # Receipts expire within a second, so that only the log could grow.
        limits = Limits(gifts_per_s_max=10**6, gift_burst_max=10**6, receipt_ttl_s=RECEIPT_TTL_S)
        ledger = Ledger(redis, keys=Keys("mem:"), limits=limits)
        await ledger.prepare(load_catalog())
        stop = asyncio.Event()
        config = ArchiverConfig(block_ms=50, trim_interval_s=0.1)
        archiver = Archiver(redis, record_pool, ledger.keys, config=config)
        task = asyncio.create_task(archiver.run(stop)) if archiving else None
        try:
            samples = await _load(ledger, redis, "on" if archiving else "off", archiving)
        finally:
            stop.set()
            if task:
                await task
            await redis.aclose()
    used = [u for u, _ in samples]
    log_bytes = [b for _, b in samples]
    if archiving:
        assert max(log_bytes) < LOG_BYTES_BOUND, log_bytes
        # From the second checkpoint on, Redis as a whole grows by less than 1 MB
        # (the log alone would add about 0.7 MB per checkpoint).
        assert used[-1] - used[1] < 1024 * 1024, used
    else:
        # About 115 B per entry: each checkpoint adds 10,000 entries.
        assert log_bytes[-1] > log_bytes[0] + (CHECKPOINTS - 1) * (GIFTS // CHECKPOINTS) * 80
        # Redis as a whole grows with it.
        assert used[-1] - used[0] > (CHECKPOINTS - 1) * (GIFTS // CHECKPOINTS) * 80, used

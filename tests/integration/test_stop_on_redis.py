"""Background loops that call Redis stop when asked, every time: redis-py can swallow a
cancellation that lands while a reply is on its way (one in six to eight cancels of a
command in flight, measured here), and a loop that then goes round again never ended: a
server whose lifespan waited for its catalog schedule did not stop on SIGTERM until it
was killed (``tests/reliability/test_redis_data_loss.py``'s teardown, now and then 10 s).
"""

from __future__ import annotations

import asyncio
import random

from redis.asyncio import Redis

from server.domain.catalog import load_catalog
from server.domain.limits import Limits
from server.ledger.catalog_schedule import CatalogSchedule
from server.ledger.connection import make_client
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger

STOPS = 150


async def test_a_catalog_schedule_stopped_at_any_moment_of_its_redis_calls_ends(
    redis_server: RedisProcess, keys: Keys
) -> None:
    client: Redis = make_client(redis_server.url, timeout_s=5.0)
    try:
        ledger = Ledger(client, keys=keys, limits=Limits())
        await ledger.prepare(load_catalog())
        rng = random.Random(7)
        for _ in range(STOPS):
            # interval 0: the loop is always in one of its Redis calls or about to be.
            schedule = CatalogSchedule(ledger.catalogs, interval_s=0.0)
            schedule.start()
            await asyncio.sleep(rng.random() * 0.003)
            async with asyncio.timeout(30):  # a hang guard, not a speed limit
                await schedule.stop()
            assert schedule._task is not None and schedule._task.done()
    finally:
        await client.aclose()

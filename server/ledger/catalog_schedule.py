"""Publish scheduled catalog edits at their time, from every process at once.

Every process runs one ``CatalogSchedule``. It sleeps until the soonest edit's time (by
Redis' clock, re-read each turn, and at most ``interval_s``), then asks
``CatalogStore.publish_due``: ``publish_catalog.lua`` writes the edit and removes it from
the schedule in one step, so however many processes try, exactly one version is written
per edit, and the others find it gone. A process that was down at the time publishes it
when it is back (an edit is never lost, only late). Guarantees: order (edits publish in
the order of their times; two at the same time in id order), at most once per edit, and
within ``interval_s`` of its time while any process runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from server.domain.errors import UnavailableError
from server.domain.tasks import stop_task
from server.ledger.catalogs import CatalogRedis, CatalogStore, Published
from server.ledger.watch import REDIS_FAILURES

log = logging.getLogger("giftwire.ledger")


async def redis_now_ms(redis: CatalogRedis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


class CatalogSchedule:
    def __init__(
        self,
        store: CatalogStore,
        *,
        interval_s: float,
        on_published: Callable[[Published], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.interval_s = interval_s
        self.on_published = on_published
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> tuple[Published | None, float]:
        """Publish the soonest edit if it is due. Returns what this call published (None:
        nothing, or another process did) and how long to sleep before the next turn."""
        due = await self.store.next_due()
        if due is None:
            return None, self.interval_s
        edit_id, at_ms = due
        now_ms = await redis_now_ms(self.store.redis)
        if at_ms > now_ms:
            return None, min(self.interval_s, (at_ms - now_ms) / 1000)
        published = await self.store.publish_due(edit_id)
        if published is not None and published.written:
            log.warning("scheduled catalog edit %s published as version %d", edit_id,
                        published.version)  # fmt: skip
            if self.on_published is not None:
                await self.on_published(published)
        return published, 0.0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await stop_task(self._task)

    async def _run(self) -> None:
        while True:
            delay = self.interval_s
            try:
                _, delay = await self.run_once()
            except (UnavailableError, *REDIS_FAILURES):
                pass  # an outage: /readyz says so; try again next turn
            except Exception:
                log.exception("publishing scheduled catalog edits failed")
            await asyncio.sleep(delay)

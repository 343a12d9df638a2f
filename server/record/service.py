"""The record inside a server process: its pool for reads, and optionally an archiver on
the same event loop (``giftwire serve`` runs the archiver as a process of its own instead,
``server.cli.archive.archiver_process``, so that recording never delays the workers).

Gifts never wait for PostgreSQL: Redis decides every transfer, and the record follows. So
a server starts without its database, and keeps serving gifts while the database is away;
the pool opens (and the schema migrates) in the background, retried with backoff, and the
archiver runs once it is open. Endpoints that read the record answer ``unavailable``
until then (``pool`` is None).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg

from server.ledger.connection import make_client
from server.ledger.keys import Keys
from server.record.archiver import Archiver, ArchiverConfig
from server.record.connection import RecordPool, open_record

log = logging.getLogger("giftwire.record")

ARCHIVER_REDIS_TIMEOUT_S = 10.0
"""Above the archiver's blocking read (``block_ms``), which holds its connection."""
OPEN_RETRY_S_MAX = 10.0


class RecordService:
    def __init__(
        self,
        database_url: str,
        redis_url: str,
        keys: Keys,
        *,
        config: ArchiverConfig | None = None,
        archive: bool = True,
    ) -> None:
        self.database_url = database_url
        self.redis_url = redis_url
        self.keys = keys
        self.config = config or ArchiverConfig()
        self.archive = archive
        self.pool: RecordPool | None = None
        self.archiver: Archiver | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="giftwire-record")

    async def _open(self) -> RecordPool | None:
        delay_s = 0.5
        where = self.database_url.split("@")[-1]
        while not self._stop.is_set():
            try:
                return await open_record(self.database_url)
            except (psycopg.Error, OSError) as e:
                log.warning("record: cannot open PostgreSQL at %s (%s); retrying", where, e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay_s)
            delay_s = min(delay_s * 2, OPEN_RETRY_S_MAX)
        return None

    async def _run(self) -> None:
        self.pool = await self._open()
        if self.pool is None or not self.archive:
            return
        # The archiver's reads block for up to block_ms: a client of its own, off the hot
        # path's pool.
        redis = make_client(self.redis_url, timeout_s=ARCHIVER_REDIS_TIMEOUT_S, pool_max=2)
        try:
            self.archiver = Archiver(redis, self.pool, self.keys, config=self.config)
            await self.archiver.run(self._stop)
        finally:
            await redis.aclose()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        if self.pool is not None:
            await self.pool.close()

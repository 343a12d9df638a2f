"""The connection pool of the durable record."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from server.record.migrate import migrate

RecordPool = AsyncConnectionPool[AsyncConnection[Any]]


async def open_record(url: str, *, size_max: int = 4, timeout_s: float = 10.0) -> RecordPool:
    """Open a pool on ``url`` (autocommit connections: every write names its transaction)
    and bring the schema up to date. Waits up to ``timeout_s`` for a first connection."""
    pool: RecordPool = AsyncConnectionPool(
        url,
        min_size=1,
        max_size=size_max,
        timeout=timeout_s,
        kwargs={"autocommit": True},
        open=False,
    )
    await pool.open(wait=True, timeout=timeout_s)
    try:
        async with pool.connection() as conn:
            await migrate(conn)
    except BaseException:
        await pool.close()
        raise
    return pool

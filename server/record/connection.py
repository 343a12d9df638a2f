"""Find or start the PostgreSQL of the durable record, and open its connection pool."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from server.record.embedded import PostgresProcess
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


_PORT_FILE = "postgres.port"
EMBEDDED_DATABASE = "giftwire"


def running_embedded_postgres(root: Path) -> str | None:
    """The URL of the embedded PostgreSQL a giftwire process runs in ``root``, if any."""
    port_file = root / _PORT_FILE
    try:
        port = int(port_file.read_text().strip())
    except (OSError, ValueError):
        return None
    probe = PostgresProcess(root, port=port)
    try:
        with psycopg.connect(probe.url(EMBEDDED_DATABASE), connect_timeout=2):
            return probe.url(EMBEDDED_DATABASE)
    except psycopg.OperationalError:
        return None


@contextmanager
def record_database_url(
    database_url: str | None, redis_url: str | None, data_dir: Path
) -> Iterator[str | None]:
    """Yield the PostgreSQL URL of the record, or None when there is no record.

    With ``database_url`` set, that. Else, when Redis is embedded too (``redis_url`` unset:
    a development machine or the demo), the embedded PostgreSQL of ``data_dir``: the one a
    running giftwire process already started there, or a new one in ``data_dir/postgres``
    that is stopped when the block ends. Else None: a deployment with its own Redis names
    its PostgreSQL explicitly rather than get one on a local disk by surprise.
    """
    if database_url:
        yield database_url
        return
    if redis_url:
        yield None
        return
    root = data_dir / "postgres"
    existing = running_embedded_postgres(root)
    if existing:
        yield existing
        return
    server = PostgresProcess(root, die_with_parent=True)
    server.start()
    url = server.create_database(EMBEDDED_DATABASE)
    (root / _PORT_FILE).write_text(str(server.port))
    try:
        yield url
    finally:
        (root / _PORT_FILE).unlink(missing_ok=True)
        server.stop()

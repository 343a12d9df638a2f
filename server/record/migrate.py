"""Versioned SQL migrations, shipped as package data and applied at start.

``server/record/migrations/NNNN_name.sql``, applied in order of ``NNNN``, each once, all in
one transaction under an advisory lock (so that several server processes starting at once
apply them once). ``schema_migrations`` records each applied version with the SHA-256 of
its file: a released migration edited afterwards stops the start with ``MigrationError``
instead of leaving databases that differ while claiming the same version.

A plain runner rather than a migration tool (Alembic, yoyo): the record has a handful of
append-only tables and no ORM, and this keeps the SQL the one source of the schema.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from psycopg import AsyncConnection

from server.domain.errors import GiftwireError

MIGRATION_LOCK_ID = 0x67_69_66_74_01
"""pg_advisory_xact_lock key of the migration runner."""
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(GiftwireError):
    """The migrations on disk and the ones recorded in the database disagree."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: bytes
    checksum: str


def load_migrations() -> list[Migration]:
    """Every migration file, in order; versions must run 1, 2, 3… without a gap."""
    found: list[Migration] = []
    for item in resources.files("server.record").joinpath("migrations").iterdir():
        match = _FILE_NAME.match(item.name)
        if match is None:
            continue
        body = item.read_bytes()
        found.append(Migration(int(match[1]), match[2], body, hashlib.sha256(body).hexdigest()))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise MigrationError(f"migration versions must be 1..n: {[m.version for m in found]}")
    return found


async def migrate(
    conn: AsyncConnection[Any], migrations: list[Migration] | None = None
) -> list[int]:
    """Apply the migrations the database lacks; return the versions applied now."""
    migrations = load_migrations() if migrations is None else migrations
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK_ID])
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute("SELECT version, checksum FROM schema_migrations")
        applied = {int(version): str(checksum) for version, checksum in await cursor.fetchall()}
        known = {m.version for m in migrations}
        if unknown := sorted(set(applied) - known):
            raise MigrationError(f"the database has migrations this code does not: {unknown}")
        for migration in migrations:
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} was changed "
                        "after it was applied: add a new migration instead"
                    )
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                [migration.version, migration.name, migration.checksum],
            )
            applied_now.append(migration.version)
    return applied_now

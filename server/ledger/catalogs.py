"""The versioned gift catalog in Redis: one catalog for every process.

Contract:

- **One current version.** ``{catalog}:prices`` holds the current version's prices and its
  number (``@version``); ``send_gift.lua`` reads both in the same atomic step in which it
  charges, so a gift is always charged at the prices of exactly one version, and a client
  that names the version it was shown (``catalog_version``) is refused with
  ``catalog_changed`` rather than charged at another one.
- **Versions only go up and are never rewritten.** Each version's document is kept in
  ``{catalog}:versions``; ``push`` writes current + 1, ``seed`` writes only into an empty
  Redis (first writer wins). Both run in ``publish_catalog.lua``, atomically.
- **Processes follow, they do not lead.** A process serves what Redis holds and reloads it
  when the version changes (``LedgerWatch`` polls; ``current`` re-reads the version).
  A process started with a different file does not overwrite Redis: ``giftwire serve``
  refuses to start, and the file becomes current only by ``giftwire catalog push``.
- **After a data loss** (Redis restarted empty), a process seeds the version it last
  served, under the same number, so clients holding that number are still served.

- **Managed edits** (``web/catalog_api.py``): an admin's edit is applied to the version
  it was made from and pushed compare-and-set on it (``catalog_changed`` if another edit
  came first). A scheduled edit waits in ``{catalog}:schedule`` / ``{catalog}:due``; at its
  time every process may try ``publish_due`` (``CatalogSchedule``); ``publish_catalog.lua``
  writes it and removes it from the schedule in one step, so exactly one process wins and
  the edit is applied once, to the version current then.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import orjson

from server.domain.catalog import Catalog, CatalogError, parse_catalog
from server.domain.catalog_edits import Change, apply, parse_changes
from server.domain.errors import ErrorCode, InvariantError, LedgerRefusal
from server.domain.limits import (
    CATALOG_SCHEDULE_AHEAD_MS_MAX,
    CATALOG_SCHEDULED_MAX,
    GIFT_COUNT_MAX,
    SEND_COINS_MAX,
)
from server.ledger.receipts import unpack
from server.ledger.scripts import ScriptName

log = logging.getLogger("giftwire.ledger")

VERSION_FIELD = "@version"
"""The field of ``{catalog}:prices`` that holds the version (gift ids cannot contain @)."""


@dataclass(frozen=True, slots=True)
class Published:
    """What ``seed`` or ``push`` found or did."""

    version: int
    written: bool
    """True when this call wrote the version; False when Redis already held it."""


@dataclass(frozen=True, slots=True)
class ScheduledEdit:
    """An edit waiting for its time (``at_ms``, Unix ms by Redis' clock)."""

    edit_id: str
    at_ms: int
    changes: list[Change]
    by: str

    def document(self) -> bytes:
        return orjson.dumps(
            {"id": self.edit_id, "at_ms": self.at_ms, "by": self.by,
             "changes": [c.to_json() for c in self.changes]}
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = orjson.loads(self.document())
        return doc

    @classmethod
    def from_document(cls, raw: bytes) -> ScheduledEdit:
        doc = orjson.loads(raw)
        return cls(doc["id"], int(doc["at_ms"]), parse_changes(doc["changes"]), doc["by"])


class CatalogRedis(Protocol):
    """The commands the store sends to the catalog's keys (all in the ``{catalog}`` slot):
    a ``redis.asyncio.Redis`` on one node, ``cluster_catalog.CatalogSlot`` on a cluster."""

    def hget(self, name: str, key: str, /) -> Any: ...
    def hgetall(self, name: str, /) -> Any: ...
    def zrange(self, name: str, start: int, end: int, /, *, withscores: bool) -> Any: ...
    def zrem(self, name: str, /, *values: str) -> Any: ...
    def time(self) -> Any: ...


class CatalogKeys(Protocol):
    """``Keys`` (single node) or ``ClusterKeys``: the same names, in one slot each way."""

    def catalog(self) -> str: ...
    def catalog_versions(self) -> str: ...
    def catalog_schedule(self) -> str: ...
    def catalog_due(self) -> str: ...


class CatalogRunner(Protocol):
    """``ScriptRunner`` or ``ClusterScriptRunner``."""

    async def run(
        self, name: ScriptName, keys: Sequence[str], args: Sequence[str | int]
    ) -> list[bytes]: ...
    async def run_now(
        self, name: ScriptName, keys: Sequence[str], args: Sequence[str | int]
    ) -> list[bytes]: ...


class CatalogStore:
    """Reads and writes the versioned catalog. Every write goes through the Lua script."""

    def __init__(self, redis: CatalogRedis, keys: CatalogKeys, runner: CatalogRunner) -> None:
        self.redis = redis
        self.keys = keys
        self.runner = runner

    def _catalog_keys(self) -> list[str]:
        k = self.keys
        return [k.catalog(), k.catalog_versions(), k.catalog_schedule(), k.catalog_due()]

    async def _publish(
        self, mode: str, catalog: Catalog, version: int, edit_id: str = ""
    ) -> Published | None:
        args: list[str | int] = [
            mode,
            catalog.document().decode(),
            version,
            SEND_COINS_MAX // GIFT_COUNT_MAX,
            edit_id,
        ]
        for gift_id, price in catalog.prices().items():
            args += [gift_id, price]
        # Outside the runner's lanes: seeding may be called from the runner's on_reload.
        reply = await self.runner.run_now(ScriptName.PUBLISH_CATALOG, self._catalog_keys(), args)
        if reply[0] in (b"gone", b"early"):
            return None
        if reply[0] in (b"exists", b"same"):
            return Published(int(reply[1]), written=False)
        body, _ = unpack(reply)
        return Published(int(body), written=True)

    async def seed(self, catalog: Catalog, version: int = 1) -> Published:
        """Write ``catalog`` as ``version`` if Redis holds no catalog; else change nothing."""
        published = await self._publish("seed", catalog, version)
        if published is None:
            raise InvariantError("publish_catalog answered a seed as if it were due")
        return published

    async def push(self, catalog: Catalog, *, expected_version: int = 0) -> Published:
        """Make ``catalog`` the next version (unless it is the current one already).

        With ``expected_version``, refused with ``catalog_changed`` unless that is the
        current version: an editor's change never silently replaces someone else's.
        """
        published = await self._publish("push", catalog, expected_version)
        if published is None:
            raise InvariantError("publish_catalog answered a push as if it were due")
        return published

    async def edit(self, changes: list[Change], *, expected_version: int) -> Published:
        """Apply ``changes`` to version ``expected_version`` (which must be current, else
        ``catalog_changed``) and make the result the next version. Raises ``CatalogError``
        (or its ``UnknownGiftError``, ``CatalogFullError``) when a change does not fit."""
        base = await self.read_current_or_changed(expected_version)
        edited = apply(base, changes, strict=True).catalog
        return await self.push(edited, expected_version=expected_version)

    async def read_current_or_changed(self, expected_version: int) -> Catalog:
        current = await self.current()
        if current is None or current.version != expected_version:
            raise LedgerRefusal(
                ErrorCode.CATALOG_CHANGED,
                detail={"catalog_version": current.version if current else 0},
            )
        return current

    # The schedule.

    async def schedule(self, edit: ScheduledEdit) -> bool:
        """Schedule ``edit`` (its changes checked against the current version now). True
        when this call added it, False when the same edit was already scheduled."""
        current = await self.current()
        if current is None:
            raise InvariantError("schedule before the catalog was seeded")
        apply(current, edit.changes, strict=True)
        reply = await self.runner.run(
            ScriptName.SCHEDULE_CATALOG,
            [self.keys.catalog_schedule(), self.keys.catalog_due()],
            [
                "add",
                edit.edit_id,
                edit.at_ms,
                edit.document().decode(),
                CATALOG_SCHEDULED_MAX,
                CATALOG_SCHEDULE_AHEAD_MS_MAX,
            ],
        )
        _, replayed = unpack(reply)
        return not replayed

    async def cancel(self, edit_id: str) -> None:
        """Remove a scheduled edit; ``LedgerRefusal(not_found)`` if it is not scheduled."""
        reply = await self.runner.run(
            ScriptName.SCHEDULE_CATALOG,
            [self.keys.catalog_schedule(), self.keys.catalog_due()],
            ["cancel", edit_id],
        )
        unpack(reply)

    async def scheduled(self) -> list[ScheduledEdit]:
        """Every scheduled edit, soonest first (at most ``CATALOG_SCHEDULED_MAX``)."""
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(self.keys.catalog_schedule()))
        edits = [ScheduledEdit.from_document(doc) for doc in raw.values()]
        return sorted(edits, key=lambda e: (e.at_ms, e.edit_id))

    async def next_due(self) -> tuple[str, int] | None:
        """The soonest scheduled edit's id and time, or None."""
        rows = cast(
            list[tuple[bytes, float]],
            await self.redis.zrange(self.keys.catalog_due(), 0, 0, withscores=True),
        )
        return (rows[0][0].decode(), int(rows[0][1])) if rows else None

    async def publish_due(self, edit_id: str) -> Published | None:
        """Publish scheduled edit ``edit_id`` if it is due and still scheduled: applied to
        the version current now (changes that no longer fit are skipped and logged). None
        when it is not due yet, or gone (another process published it, or it was
        cancelled). Retries on ``catalog_changed`` (another edit in between)."""
        for _ in range(5):
            raw = await self.redis.hget(self.keys.catalog_schedule(), edit_id)
            current = await self.current()
            if raw is None or current is None:
                # Published or cancelled: a time left behind would be found again and again.
                await self.redis.zrem(self.keys.catalog_due(), edit_id)
                return None
            edit = ScheduledEdit.from_document(cast(bytes, raw))
            try:
                applied = apply(current, edit.changes, strict=False)
            except CatalogError as e:
                log.error("scheduled catalog edit %s cannot apply: %s; cancelled", edit_id, e)
                await self.cancel(edit_id)
                return None
            for line in applied.skipped:
                log.warning("scheduled catalog edit %s: skipped: %s", edit_id, line)
            try:
                return await self._publish("due", applied.catalog, current.version, edit_id)
            except LedgerRefusal as e:
                if e.code is not ErrorCode.CATALOG_CHANGED:
                    raise
        raise InvariantError(f"scheduled catalog edit {edit_id}: the catalog kept changing")

    async def version(self) -> int | None:
        """The current version, or None when Redis holds no catalog."""
        raw = await self.redis.hget(self.keys.catalog(), VERSION_FIELD)
        return int(raw) if raw is not None else None

    async def read(self, version: int) -> Catalog:
        """The catalog of ``version``, as stored; InvariantError if Redis lacks it."""
        raw = await self.redis.hget(self.keys.catalog_versions(), str(version))
        if raw is None:
            raise InvariantError(f"catalog version {version} is not in Redis")
        parsed = parse_catalog(cast(bytes, raw))
        return Catalog(version=version, gifts=parsed.gifts)

    async def current(self) -> Catalog | None:
        """The current catalog, or None when Redis holds none."""
        version = await self.version()
        return None if version is None else await self.read(version)

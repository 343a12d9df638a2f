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

A managed catalog (an admin API) is a later piece: it would call ``push`` with the version
it edited (compare-and-set) and read ``version_document`` for history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis

from server.domain.catalog import Catalog, parse_catalog
from server.domain.errors import InvariantError
from server.domain.limits import GIFT_COUNT_MAX, SEND_COINS_MAX
from server.ledger.keys import Keys
from server.ledger.receipts import unpack
from server.ledger.runner import ScriptRunner
from server.ledger.scripts import ScriptName

VERSION_FIELD = "@version"
"""The field of ``{catalog}:prices`` that holds the version (gift ids cannot contain @)."""


@dataclass(frozen=True, slots=True)
class Published:
    """What ``seed`` or ``push`` found or did."""

    version: int
    written: bool
    """True when this call wrote the version; False when Redis already held it."""


class CatalogStore:
    """Reads and writes the versioned catalog. Every write goes through the Lua script."""

    def __init__(self, redis: Redis, keys: Keys, runner: ScriptRunner) -> None:
        self.redis = redis
        self.keys = keys
        self.runner = runner

    async def _publish(self, mode: str, catalog: Catalog, version: int) -> Published:
        args: list[str | int] = [
            mode,
            catalog.document().decode(),
            version,
            SEND_COINS_MAX // GIFT_COUNT_MAX,
        ]
        for gift_id, price in catalog.prices().items():
            args += [gift_id, price]
        # Outside the runner's lanes: seeding may be called from the runner's on_reload.
        reply = await self.runner.run_now(
            ScriptName.PUBLISH_CATALOG, [self.keys.catalog(), self.keys.catalog_versions()], args
        )
        if reply[0] in (b"exists", b"same"):
            return Published(int(reply[1]), written=False)
        body, _ = unpack(reply)
        return Published(int(body), written=True)

    async def seed(self, catalog: Catalog, version: int = 1) -> Published:
        """Write ``catalog`` as ``version`` if Redis holds no catalog; else change nothing."""
        return await self._publish("seed", catalog, version)

    async def push(self, catalog: Catalog, *, expected_version: int = 0) -> Published:
        """Make ``catalog`` the next version (unless it is the current one already).

        With ``expected_version``, refused with ``catalog_changed`` unless that is the
        current version: an editor's change never silently replaces someone else's.
        """
        return await self._publish("push", catalog, expected_version)

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

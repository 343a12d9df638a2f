"""The managed catalog on a cluster: the single-node store in the ``{catalog}`` slot, and a
new version copied into every slot before this process serves it.

The source is the same as on one node (``catalogs.py``): ``{catalog}:prices``,
``:versions``, ``:schedule`` and ``:due``, one slot (the *home* slot), written only by
``publish_catalog.lua`` and ``schedule_catalog.lua``, so edits, compare-and-set and the
schedule keep their single-node contracts. What differs is the debit: it prices a gift
from its own slot's copy ``{~N}:catalog``, so a new version is only charged where it was
copied (``ClusterLedger.copy_catalog``, ``copy_catalog.lua``: a whole version, never an
older one over a newer).

``CatalogFollower.follow`` is how a process takes a new version: it reads the home
version (every ``GIFTWIRE_REDIS_CHECK_INTERVAL_S``, as ``LedgerWatch`` does on one node,
and at once after its own edit), copies it into every slot still behind, and only then
serves and announces it (``catalog`` to its viewers). Several processes copy at once
harmlessly. A copy cut short is finished by the next turn of any process.

Prices a viewer is charged: the version the viewer names decides. A slot still at the old
version charges the old price to a viewer shown the old version; a viewer shown the new
one meets a slot not yet copied only if its debit outruns every copy (another process
announced first): ``ClusterLedger`` then copies the current version into that one slot and
debits again, so the debit charges the shown price or refuses ``catalog_changed``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from server.domain.catalog import Catalog
from server.ledger.catalogs import VERSION_FIELD
from server.ledger.cluster_keys import slot_of
from server.ledger.cluster_reads import ClusterReads

if TYPE_CHECKING:
    from server.ledger.cluster_ledger import ClusterLedger


class CatalogSlot:
    """``catalogs.CatalogRedis`` on a cluster: each command on the primary of its key's
    slot (the home slot), following a MOVED once (``ClusterReads.command``)."""

    def __init__(self, reads: ClusterReads) -> None:
        self._reads = reads

    async def hget(self, name: str, key: str, /) -> Any:
        return await self._reads.command(name, "HGET", key)

    async def hgetall(self, name: str, /) -> Any:
        return await self._reads.command(name, "HGETALL")

    async def zrange(self, name: str, start: int, end: int, /, *, withscores: bool) -> Any:
        if withscores:
            return await self._reads.command(
                name, "ZRANGE", start, end, "WITHSCORES", withscores=True
            )
        return await self._reads.command(name, "ZRANGE", start, end)

    async def zrem(self, name: str, /, *values: str) -> Any:
        return await self._reads.command(name, "ZREM", *values)

    async def time(self) -> Any:
        """Redis' clock, by the primary of the home slot (the schedule's times are its)."""
        runner = self._reads.runner
        home = runner.primary_of(slot_of(self._reads.keys.catalog()))
        return await runner.client(home).time()


class CatalogFollower:
    """Takes each new version: copied into every slot, then handed to ``serve``."""

    def __init__(self, ledger: ClusterLedger, *, copied_version: int) -> None:
        self.ledger = ledger
        self.copied_version = copied_version
        self._lock = asyncio.Lock()

    async def follow(self) -> Catalog | None:
        """The new current version, once every slot holds it; None if it is the one
        served. Raises ``UnavailableError`` (try again later: nothing is served yet)."""
        async with self._lock:
            raw = await self.ledger.command(self.ledger.keys.catalog(), "HGET", VERSION_FIELD)
            if raw is None or int(raw) == self.copied_version:
                return None
            catalog = await self.ledger.current_catalog()
            await self.ledger.copy_catalog(catalog)
            self.copied_version = catalog.version
            return catalog

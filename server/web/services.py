"""The parts a running server is made of, wired once by the app's lifespan."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from redis.asyncio import Redis

from server.domain.catalog import Catalog
from server.ledger.ledger import Ledger
from server.ledger.watch import LedgerWatch
from server.protocol import events
from server.realtime.hub import Hub
from server.record.service import RecordService
from server.settings import Settings


@dataclass(slots=True)
class Services:
    settings: Settings
    catalog: Catalog
    redis: Redis
    ledger: Ledger
    hub: Hub
    watch: LedgerWatch
    record: RecordService | None = None
    """The durable record (PostgreSQL); None without GIFTWIRE_DATABASE_URL."""
    connections_by_user: Counter[str] = field(default_factory=Counter)
    connections_by_ip: Counter[str] = field(default_factory=Counter)

    def follow_catalog(self, catalog: Catalog) -> None:
        """A new catalog version is current in Redis: serve and display it from now on, and
        tell every connected client (``catalog``). Once per version, whoever noticed it."""
        if catalog.version == self.catalog.version:
            return
        previous = self.catalog
        self.catalog = catalog
        # Events of a retired gift (in flight, resumed, paged) keep their display fields.
        self.hub.catalog = Catalog(catalog.version, {**previous.gifts, **catalog.gifts})
        self.hub.announce(events.catalog(catalog))

    async def catalog_changed(self, *_: object) -> None:
        """This process just wrote a new version: follow it now, not at the next check."""
        self.follow_catalog(await self.ledger.current_catalog())

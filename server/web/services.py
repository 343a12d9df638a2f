"""The parts a running server is made of, wired once by the app's lifespan."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from redis.asyncio import Redis

from server.domain.accounts import Balance
from server.domain.catalog import Catalog
from server.domain.streams import Stream
from server.ledger.ledger import Ledger
from server.ledger.receipts import GiftReceipt
from server.ledger.watch import LedgerWatch
from server.protocol import events
from server.realtime.hub import Hub
from server.record.service import RecordService
from server.settings import Settings


class SocketLedger(Protocol):
    """What the WebSocket endpoint asks of a ledger: ``Ledger`` on one Redis, the cluster
    ledger in cluster mode (``cluster_app.py``). Same contracts as ``Ledger``'s methods."""

    async def stream(self, stream_id: str) -> Stream | None: ...

    async def balance(self, user_id: str) -> Balance: ...

    async def fan_level(self, creator_id: str, user_id: str) -> int: ...

    async def send_gift(
        self,
        *,
        client_id: str,
        sender_id: str,
        sender_name: str,
        stream_id: str,
        creator_id: str,
        gift_id: str,
        count: int,
        catalog_version: int | None = None,
        to: str | None = None,
    ) -> GiftReceipt: ...


class SocketServices(Protocol):
    """The parts the WebSocket endpoint uses (``ws.py``), in either mode."""

    @property
    def settings(self) -> Settings: ...

    @property
    def hub(self) -> Hub: ...

    @property
    def ledger(self) -> SocketLedger: ...

    @property
    def connections_by_user(self) -> Counter[str]: ...

    @property
    def connections_by_ip(self) -> Counter[str]: ...


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

"""A broker's listener that records what it is handed, for the broker suites of both modes
(``tests/integration/test_broker.py``, ``test_realtime_backends.py``,
``tests/cluster/test_sharded_broker.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson

from server.realtime.ports import Broker


class Listener:
    """``ports.BrokerListener``: every room event as ``(stream_id, event)``, and every
    ``room_events_lost`` argument (``None``: every room)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.lost: list[str | None] = []
        self.changed = asyncio.Event()

    def room_event(self, stream_id: str, data: bytes) -> None:
        self.events.append((stream_id, orjson.loads(data)))
        self.changed.set()

    def room_events_lost(self, stream_id: str | None) -> None:
        self.lost.append(stream_id)
        self.changed.set()

    def seqs(self, stream_id: str | None = None) -> list[Any]:
        """The sequences of the gift events received (of one room, or of all)."""
        return [
            e["seq"]
            for s, e in self.events
            if (stream_id is None or s == stream_id) and e["type"] == "gift"
        ]

    async def wait(self, predicate: Callable[[], bool], timeout_s: float = 20) -> None:
        """Until ``predicate()`` holds, checked after each event or loss."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


@asynccontextmanager
async def listening(broker: Broker) -> AsyncIterator[Listener]:
    """``broker`` started with a new ``Listener``, stopped at the end."""
    listener = Listener()
    await broker.start(listener)
    try:
        yield listener
    finally:
        await broker.stop()

"""The live score of this process's battling rooms, and battles ended on time.

The gift script writes each side's score in its own stream's keys; nothing publishes the
*other* side's score to a room (on a cluster the two rooms live in different slots, and a
script may publish only in its own, ``docs/ledger.md``, "Battles"). So every process reads
both sides of each battle one of its rooms is in, every ``BATTLE_TICK_S``, and sends the
room a ``battle_score`` when it changed (and every few ticks anyway, for viewers who just
joined). The start (``battle``) and the result (``battle_end``) are published by the
scripts to both rooms; this watch only follows them, through ``Hub.on_room_event``.

A battle whose time is up is ended here by whichever process notices first
(``end_battle.lua`` is idempotent): the scores stopped at ``ends_at`` anyway, this stores
the result and tells both rooms.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

import orjson

from server.domain.errors import GiftwireError, UnavailableError
from server.domain.limits import BATTLE_TICK_S
from server.domain.tasks import stop_task
from server.ledger.battles import BattleReply, Doc
from server.protocol import events
from server.protocol.events import Message
from server.realtime.hub import Hub

log = logging.getLogger("giftwire.battles")

RESEND_TICKS = 4
"""A running battle's score is sent again after this many ticks without a change."""


class BattleReads(Protocol):
    """What the watch needs of ``Battles`` (single node) or ``ClusterBattles``."""

    async def live(self, stream_id: str, opponent: str | None = None) -> Doc | None: ...

    async def finish_due(self, stream_id: str) -> BattleReply | None: ...


class BattleWatch:
    def __init__(self, hub: Hub, battles: BattleReads, tick_s: float = BATTLE_TICK_S) -> None:
        self.hub = hub
        self.battles = battles
        self.tick_s = tick_s
        self.active: dict[str, str] = {}
        """Stream id -> the id of the battle it is in, for this process's rooms."""
        self._opponents: dict[str, str] = {}
        self._checked: set[str] = set()
        self._last: dict[str, tuple[bytes, int]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.hub.on_room_event = self.room_event
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await stop_task(self._task)

    def room_event(self, stream_id: str, event: Message) -> None:
        kind = event.get("type")
        if kind == "battle":
            self._follow(stream_id, event)
        elif kind == "battle_end":
            self._forget(stream_id)

    def _follow(self, stream_id: str, battle: Message) -> None:
        self.active[stream_id] = str(battle["battle_id"])
        self._last.pop(stream_id, None)
        for side in battle.get("sides", ()):
            if side.get("stream_id") != stream_id:
                self._opponents[stream_id] = str(side.get("stream_id"))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self.tick()
            except UnavailableError:
                continue
            except GiftwireError:
                log.exception("battle tick failed")

    async def tick(self) -> None:
        """One round: find the battles of rooms opened since the last one, send scores,
        end the battles whose time is up."""
        rooms = self.hub.rooms
        for stream_id in list(self._checked - rooms.keys()):
            self._checked.discard(stream_id)
            self._forget(stream_id)
        for stream_id in list(rooms.keys() - self._checked):
            self._checked.add(stream_id)
            live = await self.battles.live(stream_id)
            if live is not None and live["state"] == "running":
                self._follow(stream_id, live)
        # One read per battle, even when both of its rooms are open here.
        by_battle: dict[str, list[str]] = {}
        for stream_id, battle_id in self.active.items():
            by_battle.setdefault(battle_id, []).append(stream_id)
        for streams in by_battle.values():
            await self._score(streams)

    def _forget(self, stream_id: str) -> None:
        self.active.pop(stream_id, None)
        self._opponents.pop(stream_id, None)
        self._last.pop(stream_id, None)

    async def _stopped(self, streams: list[str], live: Doc | None) -> None:
        """The battle of ``streams`` no longer runs: its result reached the rooms from the
        script that stored it (``battle_end``), so there is nothing left to follow."""
        for stream_id in streams:
            self._forget(stream_id)

    async def _score(self, streams: list[str]) -> None:
        first = streams[0]
        live = await self.battles.live(first, self._opponents.get(first))
        if live is None or live["state"] != "running":
            await self._stopped(streams, live)
            return
        now_ms = int(time.time() * 1000)
        if now_ms >= live["ends_at"]:
            await self.battles.finish_due(first)  # battle_end reaches the rooms
            return
        key = orjson.dumps(live["sides"])
        message = events.battle_score(live, now_ms)
        for stream_id in streams:
            room = self.hub.rooms.get(stream_id)
            last_key, ticks = self._last.get(stream_id, (b"", 0))
            if room is None or (key == last_key and ticks < RESEND_TICKS):
                self._last[stream_id] = (last_key, ticks + 1)
                continue
            self._last[stream_id] = (key, 0)
            room.broadcast(message)

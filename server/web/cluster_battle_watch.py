"""The battle watch of cluster mode: ``BattleWatch`` over ``ClusterBattles``.

Each tick reads both sides of each battle one of this process's rooms is in, each in its
own slot: the opponent's read is what carries its score across to this room (a script may
publish only in its own slot, ``docs/ledger.md``, "Battles in cluster mode"). What differs
from single-node mode is what happens when a battle stops running:

* its result is stored in the battle's own slot and published to both rooms by the server
  that ended it; if that server died in between, this watch finds the sides ended and the
  result stored, and sends the result to its own rooms' viewers itself;
* sides ended without a stored result (a crash between the ends and the result) and an
  accept stopped between its steps (side a ``starting``) are finished here
  (``ClusterBattles.finish_due``).
"""

from __future__ import annotations

from typing import Any

from server.ledger.battles import Doc
from server.web.battle_watch import BattleWatch


class ClusterBattleWatch(BattleWatch):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waited: set[str] = set()
        """Rooms whose battle was found ended with its result one tick ago: the result
        published by the server that ended it is given that tick to arrive first."""

    async def _stopped(self, streams: list[str], live: Doc | None) -> None:
        if live is not None and live["state"] in ("starting", "ended") and "result" not in live:
            await self.battles.finish_due(streams[0])
            return  # next tick: running, or ended with its result
        if live is not None and "result" in live:
            first = [s for s in streams if s not in self._waited]
            if first:
                self._waited.update(first)
                return
            for stream_id in streams:
                room = self.hub.rooms.get(stream_id)
                if room is not None:
                    room.broadcast(live["result"], droppable=False)
        await super()._stopped(streams, live)

    def _forget(self, stream_id: str) -> None:
        self._waited.discard(stream_id)
        super()._forget(stream_id)

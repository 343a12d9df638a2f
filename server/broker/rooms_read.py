"""What both Redis brokers read the same way, whichever pub/sub carries the rooms: presence
entries, the room snapshot built from a stream, and the position an epoch bump leaves.

Presence (the viewers of each room on each process) is a hash of ``process id ->
"count:expires_ms"``, written with every snapshot the stats tick asks for and parsed only
here. ``redis_pubsub.py`` (one Redis) and ``redis_sharded.py`` (a cluster, the key in its
slot) differ only in where they send the commands.
"""

from __future__ import annotations

from server.domain.goals import Goal
from server.domain.levels import TopGifter
from server.domain.streams import Stream
from server.ledger.ledger import EpochChange
from server.realtime.ports import RoomSnapshot, StreamPosition


def presence_entry(viewers_here: int, now_ms: int, ttl_ms: int) -> str:
    """This process's report of its viewers in a room, valid for ``ttl_ms``."""
    return f"{viewers_here}:{now_ms + ttl_ms}"


def viewers_sum(raw: dict[bytes, bytes], now_ms: int) -> tuple[int, list[bytes]]:
    """Sum of the live presence entries, and the fields of the expired (or malformed) ones,
    for the caller to delete."""
    total = 0
    stale: list[bytes] = []
    for process, value in raw.items():
        count, _, expires = value.partition(b":")
        if not expires.isdigit() or int(expires) < now_ms or not count.isdigit():
            stale.append(process)
        else:
            total += int(count)
    return total, stale


def room_snapshot(
    stream: Stream, *, viewers: int, top: list[TopGifter], goals: list[Goal]
) -> RoomSnapshot:
    """The snapshot of ``stream`` with its viewers, leaderboard and goals."""
    return RoomSnapshot(
        stream_id=stream.stream_id,
        creator_id=stream.creator_id,
        creator_name=stream.creator_name,
        title=stream.title,
        state=stream.state.value,
        position=StreamPosition(stream.last_sequence, stream.epoch),
        coins=stream.coins_total,
        diamonds=stream.diamonds_total,
        gifts=stream.gifts_total,
        viewers=viewers,
        top=top,
        goals=goals,
        prev_epoch=stream.prev_epoch,
        prev_epoch_seq=stream.prev_epoch_seq,
    )


def epoch_position(change: EpochChange, expected: str) -> StreamPosition:
    """Where history still holds after a bump from ``expected``: the last good sequence of
    the epoch before, or none when the stream moved on twice (no position of ours holds)."""
    if change.prev_epoch != expected:
        return StreamPosition(0, change.epoch)
    return StreamPosition(change.prev_epoch_seq, change.epoch)

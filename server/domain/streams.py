"""Live streams: owned by one creator, live or ended."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class StreamState(StrEnum):
    LIVE = "live"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class Stream:
    stream_id: str
    creator_id: str
    creator_name: str  # the creator's display name when the stream started
    state: StreamState
    title: str
    last_sequence: int
    coins_total: int
    diamonds_total: int
    gifts_total: int

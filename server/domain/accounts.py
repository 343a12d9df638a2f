"""Accounts and identities."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeGuard

from server.domain.limits import DISPLAY_NAME_LENGTH_MAX, ID_LENGTH_MAX

_ID_PATTERN = re.compile(rf"[A-Za-z0-9_.:-]{{1,{ID_LENGTH_MAX}}}")


class Role(StrEnum):
    VIEWER = "viewer"
    CREATOR = "creator"
    ADMIN = "admin"
    OVERLAY = "overlay"
    """Read-only: may watch the one stream its token names, and change nothing (an OBS
    browser source's URL gets shared with scene exports)."""


def is_valid_id(value: object) -> TypeGuard[str]:
    """Ids (users, streams, gifts, payments, client transfer ids) share one safe alphabet.

    The alphabet keeps ids usable inside Redis key names without escaping.
    """
    return isinstance(value, str) and _ID_PATTERN.fullmatch(value) is not None


def clean_display_name(value: str) -> str:
    """Strip control characters and bound the length of a display name."""
    printable = "".join(ch for ch in value if ch.isprintable())
    return printable.strip()[:DISPLAY_NAME_LENGTH_MAX] or "anonymous"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is acting: always taken from a verified token, never from a message field."""

    user_id: str
    role: Role
    display_name: str
    watch_stream: str | None = None
    """The one stream this identity may watch (overlay tokens); None: any stream."""

    @property
    def read_only(self) -> bool:
        """True when this identity may change nothing: no gift, stream or cash-out."""
        return self.role is Role.OVERLAY

    def may_watch(self, stream_id: str) -> bool:
        return self.watch_stream is None or self.watch_stream == stream_id


@dataclass(frozen=True, slots=True)
class Balance:
    """One account's balances, in integers."""

    user_id: str
    coins: int
    diamonds: int
    debt_coins: int
    held_diamonds: int = 0
    """Diamonds still in the payout hold (part of ``diamonds``)."""
    next_release_ms: int = 0
    """When the oldest held diamonds become withdrawable (ms); 0 with none held."""

    @property
    def withdrawable_diamonds(self) -> int:
        return self.diamonds - self.held_diamonds

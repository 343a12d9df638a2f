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


@dataclass(frozen=True, slots=True)
class Balance:
    """One account's balances, in integers."""

    user_id: str
    coins: int
    diamonds: int
    debt_coins: int

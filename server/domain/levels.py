"""Gifter levels: a viewer's lifetime coins spent on one creator give a level on a ladder.

The ladder (``LADDER``) is the one source of the thresholds. ``send_gift.lua`` receives it
as one ARGV string of fixed-width numbers (``ladder_arg``), so that the script finds the
threshold of any level with one ``string.sub`` and a binary search, without parsing 50
numbers on every gift; ``tests/integration/test_levels.py`` checks that the script's levels
agree with ``level_for`` at every threshold and beside it.

Level 0 is a viewer who never sent this creator a coin; the first coin is level 1. Level
``L >= 2`` starts at ``50 * (L - 1) ** 3`` coins: 50 for level 2, 3,200 for level 5,
36,450 for level 10, 342,950 for level 20, 5,882,450 for level 50 (the last). The cubic
keeps the first levels a few gifts apart and the top ones rare.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

LEVELS_MAX = 50
"""The top of the ladder."""
LADDER_DIGITS = 12
"""Width of each threshold in ``ladder_arg`` (zero-padded)."""

LADDER: tuple[int, ...] = (1, *(50 * (level - 1) ** 3 for level in range(2, LEVELS_MAX + 1)))
"""``LADDER[L - 1]``: the lifetime coins at which level ``L`` starts, ascending."""


def level_for(coins: int) -> int:
    """The level of a viewer who spent ``coins`` on a creator over all time (0 to 50)."""
    return bisect.bisect_right(LADDER, coins)


def ladder_arg(ladder: tuple[int, ...] = LADDER) -> str:
    """The ladder as send_gift.lua's ARGV: each threshold in ``LADDER_DIGITS`` digits."""
    if list(ladder) != sorted(set(ladder)) or not ladder[0] > 0 or len(ladder) > LEVELS_MAX:
        raise ValueError("a level ladder is at most 50 ascending positive thresholds")
    if ladder[-1] >= 10**LADDER_DIGITS:
        raise ValueError("a level threshold does not fit the ladder's width")
    return "".join(f"{threshold:0{LADDER_DIGITS}d}" for threshold in ladder)


@dataclass(frozen=True, slots=True)
class TopGifter:
    """One row of a stream's leaderboard: who (id and display name), coins, level."""

    user_id: str
    name: str
    coins: int
    level: int

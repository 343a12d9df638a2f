"""Money rules: the gift split, payouts and the economics' bounds, all in integers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.domain.limits import AMOUNT_MAX, SEND_COINS_MAX
from server.domain.money import BASIS_POINTS, Economics, Split, payout_cents, split_gift


@pytest.mark.parametrize(
    ("coins", "share_bps", "diamonds", "platform"),
    [
        (0, 5_000, 0, 0),
        (1, 5_000, 0, 1),
        (2, 5_000, 1, 1),
        (5, 5_000, 2, 3),
        (598, 5_000, 299, 299),
        (99, 7_000, 69, 30),  # 69.3
        (10, 3_333, 3, 7),  # 3.333
        (100, 0, 0, 100),
        (100, BASIS_POINTS, 100, 0),
        (AMOUNT_MAX, 5_000, AMOUNT_MAX // 2, AMOUNT_MAX // 2),
    ],
)
def test_split_examples(coins: int, share_bps: int, diamonds: int, platform: int) -> None:
    assert split_gift(coins, share_bps) == Split(coins, diamonds, platform)


@settings(derandomize=True, database=None)
@given(st.integers(0, AMOUNT_MAX), st.integers(0, BASIS_POINTS))
def test_split_is_exact_and_rounds_towards_the_platform(coins: int, share_bps: int) -> None:
    split = split_gift(coins, share_bps)
    assert split.coins == coins
    assert split.diamonds + split.platform_coins == coins
    assert split.diamonds >= 0 and split.platform_coins >= 0
    # The creator gets the exact share rounded down: never more, and less by under a diamond.
    exact = coins * share_bps
    assert split.diamonds * BASIS_POINTS <= exact < (split.diamonds + 1) * BASIS_POINTS


@settings(derandomize=True, database=None)
@given(st.integers(1, SEND_COINS_MAX), st.integers(0, BASIS_POINTS))
def test_the_platform_gets_at_least_its_exact_share(coins: int, share_bps: int) -> None:
    split = split_gift(coins, share_bps)
    assert split.platform_coins * BASIS_POINTS >= coins * (BASIS_POINTS - share_bps)


def test_many_small_gifts_never_favour_the_creator() -> None:
    # Rounding each gift separately can only move remainders to the platform.
    one_by_one = [split_gift(1, 5_000) for _ in range(1_000)]
    assert sum(s.diamonds for s in one_by_one) <= split_gift(1_000, 5_000).diamonds


@pytest.mark.parametrize("coins", [-1, AMOUNT_MAX + 1])
def test_split_refuses_amounts_out_of_range(coins: int) -> None:
    with pytest.raises(ValueError, match="coins out of range"):
        split_gift(coins, 5_000)


@pytest.mark.parametrize(
    ("diamonds", "rate", "cents"),
    [(0, 50, 0), (1, 50, 0), (2, 50, 1), (1_001, 50, 500), (1_000, 50, 500), (7, 10_000, 700)],
)
def test_payout_rounds_down_to_a_whole_cent(diamonds: int, rate: int, cents: int) -> None:
    assert payout_cents(diamonds, rate) == cents


def test_default_economics() -> None:
    economics = Economics()
    assert (economics.creator_share_bps, economics.cents_per_100_diamonds) == (5_000, 50)


@pytest.mark.parametrize(
    ("share_bps", "rate", "message"),
    [
        (-1, 50, "creator_share_bps"),
        (BASIS_POINTS + 1, 50, "creator_share_bps"),
        (5_000, 0, "cents_per_100_diamonds"),
        (5_000, 10_001, "cents_per_100_diamonds"),
    ],
)
def test_economics_refuses_rates_out_of_range(share_bps: int, rate: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Economics(creator_share_bps=share_bps, cents_per_100_diamonds=rate)

"""The economics' bounds. The split and payout rules live in the Lua scripts and are tested
against a real Redis (tests/integration/test_rounding.py)."""

from __future__ import annotations

import pytest

from server.domain.money import BASIS_POINTS, Economics


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

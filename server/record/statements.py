"""Creator statements from the record: earnings per stream and per day (a month's) or per
month (a year's, for tax), in diamonds and their cash value, with the cash-outs.

Periods are calendar months and years in UTC, bounded by the transfers' log time (Redis'
clock when the gift committed). Cash value is ⌊diamonds × cents_per_100_diamonds / 100⌋,
computed for each row and for the total on its own, so rows may add up to a few cents less
than the total: each is rounded down once, never summed from rounded parts.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from server.domain.errors import ErrorCode, RequestError
from server.record.connection import RecordPool

_MONTH = re.compile(r"^([0-9]{4})-([0-9]{2})$")
_YEAR = re.compile(r"^([0-9]{4})$")

# A gift's earnings: the single-node `gift` entry, or the credit leg's `gift_credit` on a
# cluster (its debit, `gift_debit`, earns nothing yet).
_EARNINGS = """
SELECT to_char(date_trunc(%s, t.at AT TIME ZONE 'UTC'), %s) AS bucket, t.stream_id,
       sum(t.count)::bigint, sum((t.fields->>'coins')::bigint)::bigint,
       sum((t.fields->>'diamonds')::bigint)::bigint
  FROM transfers t
 WHERE t.to_user = %s AND t.type IN ('gift', 'gift_credit') AND t.log_ms >= %s
   AND t.log_ms < %s
 GROUP BY 1, 2 ORDER BY 1, 2
"""

_CASH_OUTS = """
SELECT count(*), coalesce(sum((t.fields->>'diamonds')::bigint), 0)::bigint,
       coalesce(sum((t.fields->>'cents')::bigint), 0)::bigint
  FROM transfers t
 WHERE t.from_user = %s AND t.type = 'cash_out' AND t.log_ms >= %s AND t.log_ms < %s
"""

_CLAWBACKS = """
SELECT count(*), coalesce(sum((t.fields->>'diamonds')::bigint), 0)::bigint
  FROM transfers t
 WHERE t.from_user = %s AND t.type = 'clawback' AND t.log_ms >= %s AND t.log_ms < %s
"""

_PAYOUTS = """
SELECT t.fields->>'state', count(*), coalesce(sum((t.fields->>'diamonds')::bigint), 0)::bigint,
       coalesce(sum((t.fields->>'cents')::bigint), 0)::bigint
  FROM transfers t
 WHERE t.to_user = %s AND t.type = 'payout' AND t.log_ms >= %s AND t.log_ms < %s
 GROUP BY 1
"""


@dataclass(frozen=True, slots=True)
class Period:
    label: str
    """``YYYY-MM`` or ``YYYY``."""
    start: datetime
    end: datetime
    by: str
    """``day`` for a month's statement, ``month`` for a year's."""

    @property
    def start_ms(self) -> int:
        return int(self.start.timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        return int(self.end.timestamp() * 1000)


def parse_period(month: str | None, year: str | None) -> Period:
    """One of ``month=YYYY-MM`` or ``year=YYYY``; else ``RequestError(invalid_request)``."""
    if (month is None) == (year is None):
        raise RequestError(ErrorCode.INVALID_REQUEST, "give one of month=YYYY-MM or year=YYYY")
    if month is not None:
        match = _MONTH.fullmatch(month)
        if not match or not 1 <= int(match[2]) <= 12 or int(match[1]) < 1970:
            raise RequestError(ErrorCode.INVALID_REQUEST, "month must be YYYY-MM")
        y, m = int(match[1]), int(match[2])
        start = datetime(y, m, 1, tzinfo=UTC)
        end = datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=UTC)
        return Period(month, start, end, "day")
    match = _YEAR.fullmatch(year or "")
    if not match or not 1970 <= int(match[1]) <= 9998:
        raise RequestError(ErrorCode.INVALID_REQUEST, "year must be YYYY")
    y = int(match[1])
    return Period(
        match[1], datetime(y, 1, 1, tzinfo=UTC), datetime(y + 1, 1, 1, tzinfo=UTC), "month"
    )


def cash_value_cents(diamonds: int, cents_per_100_diamonds: int) -> int:
    return diamonds * cents_per_100_diamonds // 100


@dataclass(slots=True)
class StatementRow:
    period: str
    """The day (``YYYY-MM-DD``) or month (``YYYY-MM``)."""
    stream_id: str
    gifts: int
    coins: int
    """What the viewers spent on these gifts."""
    diamonds: int
    cents: int


@dataclass(slots=True)
class Statement:
    creator_id: str
    period: Period
    rows: list[StatementRow] = field(default_factory=list)
    gifts: int = 0
    coins: int = 0
    diamonds: int = 0
    cents: int = 0
    cash_outs: int = 0
    cashed_out_diamonds: int = 0
    cashed_out_cents: int = 0
    clawbacks: int = 0
    clawed_back_diamonds: int = 0
    """Diamonds that chargebacks took back from gifts still in the payout hold (in the
    period of the chargeback; the gift's row still shows what it earned)."""
    cents_per_100_diamonds: int = 0
    payouts: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    """Settled in the period, by outcome (``paid``, ``failed``): (count, diamonds, cents).
    A failed payout's diamonds went back to the creator."""

    def _payout(self, state: str) -> dict[str, int]:
        count, diamonds, cents = self.payouts.get(state, (0, 0, 0))
        return {"count": count, "diamonds": diamonds, "cents": cents}

    def to_json(self) -> dict[str, object]:
        return {
            "creator_id": self.creator_id,
            "period": self.period.label,
            "from": self.period.start.isoformat(),
            "to": self.period.end.isoformat(),
            "by": self.period.by,
            "rows": [
                {
                    "period": r.period,
                    "stream_id": r.stream_id,
                    "gifts": r.gifts,
                    "coins": r.coins,
                    "diamonds": r.diamonds,
                    "cents": r.cents,
                }
                for r in self.rows
            ],
            "totals": {
                "gifts": self.gifts,
                "coins": self.coins,
                "diamonds": self.diamonds,
                "cents": self.cents,
            },
            "cash_outs": {
                "count": self.cash_outs,
                "diamonds": self.cashed_out_diamonds,
                "cents": self.cashed_out_cents,
            },
            "clawbacks": {
                "count": self.clawbacks,
                "diamonds": self.clawed_back_diamonds,
                "cents": self.clawed_back_cents,
            },
            "payouts": {"paid": self._payout("paid"), "failed": self._payout("failed")},
        }

    @property
    def clawed_back_cents(self) -> int:
        return cash_value_cents(self.clawed_back_diamonds, self.cents_per_100_diamonds)

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([self.period.by, "stream_id", "gifts", "coins", "diamonds", "cents"])
        for r in self.rows:
            writer.writerow([r.period, r.stream_id, r.gifts, r.coins, r.diamonds, r.cents])
        writer.writerow(["total", "", self.gifts, self.coins, self.diamonds, self.cents])
        writer.writerow(
            ["cashed_out", "", self.cash_outs, "", self.cashed_out_diamonds,
             self.cashed_out_cents]
        )  # fmt: skip
        for state in ("paid", "failed"):
            p = self._payout(state)
            writer.writerow([f"payouts_{state}", "", p["count"], "", p["diamonds"], p["cents"]])
        if self.clawbacks:
            # Last, and only when there were any: the lines above keep their places.
            writer.writerow(
                ["clawed_back", "", self.clawbacks, "", self.clawed_back_diamonds,
                 self.clawed_back_cents]
            )  # fmt: skip
        return out.getvalue()


async def creator_statement(
    pool: RecordPool, creator_id: str, period: Period, cents_per_100_diamonds: int
) -> Statement:
    statement = Statement(creator_id, period, cents_per_100_diamonds=cents_per_100_diamonds)
    fmt = "YYYY-MM-DD" if period.by == "day" else "YYYY-MM"
    bounds = [creator_id, period.start_ms, period.end_ms]
    async with pool.connection() as conn:
        rows = await (await conn.execute(_EARNINGS, [period.by, fmt, *bounds])).fetchall()
        cash = await (await conn.execute(_CASH_OUTS, bounds)).fetchone()
        payouts = await (await conn.execute(_PAYOUTS, bounds)).fetchall()
        clawed = await (await conn.execute(_CLAWBACKS, bounds)).fetchone()
    if clawed is not None:
        statement.clawbacks, statement.clawed_back_diamonds = int(clawed[0]), int(clawed[1])
    for bucket, stream_id, gifts, coins, diamonds in rows:
        cents = cash_value_cents(int(diamonds), cents_per_100_diamonds)
        statement.rows.append(
            StatementRow(bucket, stream_id, int(gifts), int(coins), int(diamonds), cents)
        )
        statement.gifts += int(gifts)
        statement.coins += int(coins)
        statement.diamonds += int(diamonds)
    statement.cents = cash_value_cents(statement.diamonds, cents_per_100_diamonds)
    if cash is not None:
        statement.cash_outs, statement.cashed_out_diamonds, statement.cashed_out_cents = (
            int(v) for v in cash
        )
    statement.payouts = {
        str(state): (int(count), int(diamonds), int(cents))
        for state, count, diamonds, cents in payouts
    }
    return statement

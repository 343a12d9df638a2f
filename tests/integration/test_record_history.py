"""Reads of the record: a wallet's history paged newest first, and creator statements whose
JSON and CSV totals equal the ledger's."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest

from server.domain.errors import RequestError
from server.ledger.ledger import Ledger
from server.record.archiver import Archiver, ArchiverConfig
from server.record.connection import RecordPool
from server.record.history import wallet_history
from server.record.statements import creator_statement, parse_period
from tests.integration.helpers import CREATOR, STREAM, gift

RATE = 50  # cents per 100 diamonds


async def _archive(ledger: Ledger, pool: RecordPool) -> None:
    archiver = Archiver(ledger.redis, pool, ledger.keys, config=ArchiverConfig(block_ms=20))
    await archiver.drain()


async def test_history_pages_newest_first_through_every_kind(
    ledger: Ledger, record_pool: RecordPool
) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    made = [(await ledger.top_up(payment_id="p1", user_id="alice", coins=100_000)).transfer_id]
    for i in range(25):
        made.append((await gift(ledger, f"g{i}", gift_id="cap", count=1 + i % 2)).transfer_id)
    tiny = await gift(ledger, "tiny", gift_id="rose")  # may earn 0 diamonds (or a carried 1)
    made.append(tiny.transfer_id)
    made.append((await ledger.top_up(payment_id="p2", user_id="alice", coins=10)).transfer_id)
    made.append(
        (
            await ledger.refund(payment_id="p2", user_id="alice", refund_id="r1", coins=10)
        ).transfer_id
    )
    await _archive(ledger, record_pool)

    pages, before = [], None
    while True:
        page = await wallet_history(record_pool, "alice", before=before, limit=7)
        pages.append(page.items)
        if page.next_before is None:
            break
        before = tuple(int(part) for part in page.next_before.split("-"))  # type: ignore[assignment]
    items = [item for items in pages for item in items]
    assert [len(p) for p in pages] == [7, 7, 7, 7, 1]
    assert [item["transfer_id"] for item in items] == made[::-1]
    kinds = [item["kind"] for item in items]
    assert kinds == ["refund", "top_up", *["gift_sent"] * 26, "top_up"]
    refund, _, last_gift = items[0], items[1], items[3]
    assert (refund["coins"], refund["debt_coins"], refund["payment_id"]) == (-10, 0, "p2")
    assert (last_gift["gift_id"], last_gift["count"], last_gift["counterparty"]) == (
        "cap", 1, CREATOR,
    )  # fmt: skip
    assert last_gift["coins"] == -99
    # The creator sees the same gifts as received, in diamonds.
    creator = await wallet_history(record_pool, CREATOR, before=None, limit=100)
    assert [i["kind"] for i in creator.items] == ["gift_received"] * 26
    assert (creator.items[0]["gift_id"], creator.items[0]["diamonds"]) == ("rose", tiny.diamonds)
    held = await ledger.balance(CREATOR)
    assert sum(i["diamonds"] for i in creator.items) == held.diamonds
    assert creator.items[0]["counterparty"] == "alice"
    # Someone with no transfers has an empty history.
    assert (await wallet_history(record_pool, "nobody", before=None, limit=5)).items == []


async def test_statement_totals_equal_the_ledgers_in_json_and_csv(
    ledger: Ledger, record_pool: RecordPool
) -> None:
    first = await ledger.start_stream(stream_id="s-a", creator_id=CREATOR, title="a")
    await ledger.start_stream(stream_id="s-b", creator_id=CREATOR, title="b")
    assert first.state == "live"
    await ledger.top_up(payment_id="p1", user_id="alice", coins=10**7)
    sent = []
    for i in range(30):
        sent.append(
            await gift(ledger, f"g{i}", gift_id=("rose", "lion", "cap")[i % 3], count=1 + i % 4,
                       stream="s-a" if i % 2 else "s-b")
        )  # fmt: skip
    cash = await ledger.cash_out(client_id="c1", creator_id=CREATOR, diamonds=10_000)
    for client_id, outcome in (("c2", "failed"), ("c3", "paid")):
        await ledger.cash_out(client_id=client_id, creator_id=CREATOR, diamonds=1_000)
        await ledger.settle_payout(client_id=client_id, creator_id=CREATOR, outcome=outcome)
    await _archive(ledger, record_pool)

    month = datetime.fromtimestamp(sent[0].ts / 1000, UTC).strftime("%Y-%m")
    statement = await creator_statement(record_pool, CREATOR, parse_period(month, None), RATE)
    doc = statement.to_json()
    streams = [await ledger.stream(s) for s in ("s-a", "s-b")]
    diamonds = sum(s.diamonds_total for s in streams if s)
    totals = doc["totals"]
    assert isinstance(totals, dict)
    assert totals["diamonds"] == diamonds == sum(r.diamonds for r in sent)
    assert totals["coins"] == sum(s.coins_total for s in streams if s)
    assert totals["gifts"] == sum(s.gifts_total for s in streams if s)
    assert totals["cents"] == diamonds * RATE // 100
    assert doc["cash_outs"] == {"count": 3, "diamonds": 12_000, "cents": cash.cents + 1_000}
    assert doc["payouts"] == {
        "paid": {"count": 1, "diamonds": 1_000, "cents": 500},
        "failed": {"count": 1, "diamonds": 1_000, "cents": 500},
    }
    assert {r.stream_id for r in statement.rows} == {"s-a", "s-b"}
    assert sum(r.diamonds for r in statement.rows) == diamonds

    rows = list(csv.reader(io.StringIO(statement.to_csv())))
    assert rows[0] == ["day", "stream_id", "gifts", "coins", "diamonds", "cents"]
    body = rows[1:-4]
    assert sum(int(r[4]) for r in body) == diamonds
    assert rows[-4] == ["total", "", str(totals["gifts"]), str(totals["coins"]), str(diamonds),
                        str(totals["cents"])]  # fmt: skip
    assert rows[-3] == ["cashed_out", "", "3", "", "12000", str(cash.cents + 1_000)]
    assert rows[-2:] == [["payouts_paid", "", "1", "", "1000", "500"],
                         ["payouts_failed", "", "1", "", "1000", "500"]]  # fmt: skip

    year = await creator_statement(record_pool, CREATOR, parse_period(None, month[:4]), RATE)
    assert year.diamonds == diamonds
    assert {r.period for r in year.rows} == {month}
    other = "1999-01"
    empty = await creator_statement(record_pool, CREATOR, parse_period(other, None), RATE)
    assert (empty.rows, empty.diamonds, empty.cash_outs) == ([], 0, 0)
    # Another creator's statement does not see these gifts.
    stranger = await creator_statement(record_pool, "alice", parse_period(month, None), RATE)
    assert stranger.diamonds == 0


@pytest.mark.parametrize(
    ("month", "year"),
    [(None, None), ("2026-11", "2026"), ("2026-13", None), ("2026-1", None), ("26-11", None),
     ("２０２６-11", None), (None, "20266"), (None, "1969"), ("2026-00", None)],
)  # fmt: skip
def test_a_period_is_one_month_or_one_year(month: str | None, year: str | None) -> None:
    with pytest.raises(RequestError):
        parse_period(month, year)


def test_periods_cover_whole_calendar_months_and_years_in_utc() -> None:
    december = parse_period("2026-12", None)
    assert (december.start.isoformat(), december.end.isoformat()) == (
        "2026-12-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00",
    )  # fmt: skip
    year = parse_period(None, "2026")
    assert (year.start_ms, year.end_ms, year.by) == (1_767_225_600_000, 1_798_761_600_000, "month")

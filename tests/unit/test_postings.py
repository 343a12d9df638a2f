"""Log entries to postings: one rule per entry type, every transfer sums to zero."""

from __future__ import annotations

import pytest

from server.record.postings import RULES, Account, Posting, RecordError, to_transfer

GIFT = {
    "type": "gift", "client_id": "c1", "from": "alice", "to": "bob", "stream": "s1",
    "gift": "rose", "count": "3", "coins": "3", "diamonds": "1", "platform": "2", "seq": "7",
}  # fmt: skip


def test_a_gift_moves_coins_to_diamonds_and_the_platform() -> None:
    transfer = to_transfer("1700000000000-4", GIFT)
    assert (transfer.log_ms, transfer.log_seq, transfer.transfer_id) == (
        1_700_000_000_000,
        4,
        "1700000000000-4",
    )
    assert transfer.postings == (
        Posting("alice", Account.COINS, -3),
        Posting("bob", Account.DIAMONDS, 1),
        Posting(None, Account.PLATFORM, 2),
    )
    assert transfer.count == 3
    assert transfer.fields == GIFT


def test_a_gift_split_between_guests_credits_each_of_them() -> None:
    entry = {**GIFT, "to": "*", "coins": "5", "diamonds": "2", "platform": "3",
             "recipients": "g:1:3:2:0;h.2:2:0:9000"}  # fmt: skip  # an id may hold ":"
    assert to_transfer("1-0", entry).postings == (
        Posting("alice", Account.COINS, -5),
        Posting("g:1", Account.DIAMONDS, 2),  # h.2's 2 coins earned 0 (carried): no line
        Posting(None, Account.PLATFORM, 3),
    )


def test_a_top_up_repays_debt_first() -> None:
    entry = {"type": "top_up", "payment": "p1", "to": "al", "coins": "100", "credited": "60",
             "repaid": "40"}  # fmt: skip
    assert to_transfer("5-0", entry).postings == (
        Posting(None, Account.PROVIDER, -100),
        Posting("al", Account.COINS, 60),
        Posting("al", Account.DEBT, 40),
    )


def test_a_refund_claws_back_and_records_the_rest_as_debt() -> None:
    entry = {"type": "refund", "payment": "p1", "from": "al", "coins": "100", "clawed": "30",
             "debt": "70"}  # fmt: skip
    assert to_transfer("6-0", entry).postings == (
        Posting(None, Account.PROVIDER, 100),
        Posting("al", Account.COINS, -30),
        Posting("al", Account.DEBT, -70),
    )


def test_zero_amounts_are_left_out() -> None:
    entry = {"type": "top_up", "payment": "p1", "to": "al", "coins": "100", "credited": "100",
             "repaid": "0"}  # fmt: skip
    assert len(to_transfer("5-0", entry).postings) == 2


def test_a_cash_out_moves_diamonds_to_pending_payouts() -> None:
    entry = {"type": "cash_out", "client_id": "c", "from": "bob", "diamonds": "1000",
             "cents": "500"}  # fmt: skip
    assert to_transfer("7-1", entry).postings == (
        Posting("bob", Account.DIAMONDS, -1000),
        Posting(None, Account.PAYOUTS, 1000),
    )


@pytest.mark.parametrize("kind", sorted(RULES))
def test_every_rule_refuses_an_entry_without_its_amounts(kind: str) -> None:
    with pytest.raises(RecordError, match=kind):
        to_transfer("1-0", {"type": kind, "from": "a", "to": "b"})


def test_an_unbalanced_gift_is_refused() -> None:
    with pytest.raises(RecordError, match="sum to 1, not 0"):
        to_transfer("1-0", {**GIFT, "platform": "3"})


@pytest.mark.parametrize("bad", ["-3", "3.0", "1e3", "٣", "", " 3"])
def test_amounts_must_be_plain_non_negative_integers(bad: str) -> None:
    with pytest.raises(RecordError, match="not a non-negative integer"):
        to_transfer("1-0", {**GIFT, "coins": bad})


def test_an_unknown_entry_type_is_refused_not_skipped() -> None:
    with pytest.raises(RecordError, match="no posting rule for entry type 'bonus'"):
        to_transfer("1-0", {"type": "bonus", "to": "a", "coins": "5"})


@pytest.mark.parametrize("entry_id", ["1", "a-1", "1-", "-1", "1-2-3", "١-0"])
def test_entry_ids_must_be_stream_ids(entry_id: str) -> None:
    with pytest.raises(RecordError, match="not a stream entry id"):
        to_transfer(entry_id, GIFT)


def test_a_paid_payout_moves_pending_diamonds_out() -> None:
    entry = {"type": "payout", "client_id": "c", "to": "bob", "state": "paid",
             "diamonds": "1000", "cents": "500"}  # fmt: skip
    assert to_transfer("8-0", entry).postings == (
        Posting(None, Account.PAYOUTS, -1000),
        Posting(None, Account.PAID_OUT, 1000),
    )


def test_a_failed_payout_returns_the_diamonds() -> None:
    entry = {"type": "payout", "client_id": "c", "to": "bob", "state": "failed",
             "diamonds": "1000", "cents": "500"}  # fmt: skip
    assert to_transfer("8-0", entry).postings == (
        Posting(None, Account.PAYOUTS, -1000),
        Posting("bob", Account.DIAMONDS, 1000),
    )
    with pytest.raises(RecordError, match="neither paid nor failed"):
        to_transfer("8-0", {**entry, "state": "pending"})


def test_coins_withheld_for_an_earlier_refund_are_not_owed_to_the_provider() -> None:
    entry = {"type": "top_up", "payment": "p1", "to": "al", "coins": "100", "credited": "70",
             "repaid": "0", "withheld": "30"}  # fmt: skip
    assert to_transfer("5-0", entry).postings == (
        Posting(None, Account.PROVIDER, -70),
        Posting("al", Account.COINS, 70),
    )


def test_a_partial_refund_posts_what_it_refunded() -> None:
    entry = {"type": "refund", "payment": "p1", "refund_id": "r1", "from": "al",
             "coins": "100", "refunded": "40", "clawed": "25", "debt": "15",
             "before_payment": "0"}  # fmt: skip
    assert to_transfer("6-0", entry).postings == (
        Posting(None, Account.PROVIDER, 40),
        Posting("al", Account.COINS, -25),
        Posting("al", Account.DEBT, -15),
    )


def test_a_clawback_reverses_a_held_gift_to_the_buyer() -> None:
    entry = {"type": "clawback", "payment": "p1", "refund_id": "r1", "from": "bob",
             "to": "al", "coins": "7", "diamonds": "3", "platform": "4", "share_bps": "5000",
             "share_rem": "5000", "day": "20000"}  # fmt: skip
    assert to_transfer("6-0", entry).postings == (
        Posting("bob", Account.DIAMONDS, -3),
        Posting(None, Account.PLATFORM, -4),
        Posting("al", Account.COINS, 7),
    )


def test_a_refund_takes_the_coins_its_clawbacks_gave_back() -> None:
    entry = {"type": "refund", "payment": "p1", "refund_id": "r1", "from": "al",
             "coins": "100", "refunded": "100", "clawed": "20", "reversed": "70", "debt": "10",
             "before_payment": "0"}  # fmt: skip
    assert to_transfer("6-1", entry).postings == (
        Posting(None, Account.PROVIDER, 100),
        Posting("al", Account.COINS, -90),
        Posting("al", Account.DEBT, -10),
    )


def test_a_cluster_gift_is_a_debit_into_transit_and_a_credit_out_of_it() -> None:
    debit = {"type": "gift_debit", "client_id": "c1", "from": "al", "to": "bob",
             "stream": "s", "gift": "rose", "count": "3", "price": "1", "coins": "3",
             "catalog_version": "1", "share_bps": "5000"}  # fmt: skip
    credit = {"type": "gift_credit", "transfer_id": "al|c1|5-0", "client_id": "c1",
              "from": "al", "to": "bob", "stream": "s", "gift": "rose", "count": "3",
              "price": "1", "coins": "3", "catalog_version": "1", "diamonds": "1",
              "platform": "2", "share_bps": "5000", "share_rem": "5000", "seq": "1"}  # fmt: skip
    assert to_transfer("5-0", debit, 17).postings == (
        Posting("al", Account.COINS, -3),
        Posting(None, Account.TRANSIT, 3),
    )
    assert to_transfer("6-0", credit, 900).postings == (
        Posting(None, Account.TRANSIT, -3),
        Posting("bob", Account.DIAMONDS, 1),
        Posting(None, Account.PLATFORM, 2),
    )
    assert to_transfer("6-0", credit, 900).log_slot == 900


def test_a_cluster_gift_to_guests_stays_in_transit_until_each_guest_credit() -> None:
    credit = {"type": "gift_credit", "transfer_id": "al|c1|5-0", "client_id": "c1",
              "from": "al", "to": "bob", "stream": "s", "gift": "rose", "count": "5",
              "price": "1", "coins": "5", "catalog_version": "1", "diamonds": "0",
              "platform": "0", "share_bps": "5000", "share_rem": "0", "seq": "1",
              "recipient": "*", "recipients": "g:1:3;h.2:2"}  # fmt: skip
    assert to_transfer("6-0", credit).postings == ()  # all five coins still in transit
    guest = {"type": "guest_credit", "credit_id": "al|c1|5-0|g:1", "transfer_id": "al|c1|5-0",
             "from": "al", "to": "g:1", "creator": "bob", "stream": "s", "coins": "3",
             "diamonds": "1", "platform": "2", "share_bps": "5000", "share_rem": "5000",
             "seq": "1"}  # fmt: skip
    assert to_transfer("7-0", guest).postings == (
        Posting(None, Account.TRANSIT, -3),
        Posting("g:1", Account.DIAMONDS, 1),
        Posting(None, Account.PLATFORM, 2),
    )


def test_a_cluster_clawback_is_a_claim_out_of_transit_and_a_clawback_into_it() -> None:
    claim = {"type": "clawback_claim", "clawback_id": "p1|r1|bob", "payment": "p1",
             "refund_id": "r1", "from": "bob", "to": "al", "coins": "7",
             "items": "20000:5000:7"}  # fmt: skip
    clawback = {"type": "clawback", "clawback_id": "p1|r1|bob", "payment": "p1",
                "refund_id": "r1", "from": "bob", "to": "al", "coins": "7", "diamonds": "3",
                "platform": "4", "share_bps": "5000", "share_rem": "5000",
                "day": "20000"}  # fmt: skip
    assert to_transfer("6-0", claim, 17).postings == (
        Posting(None, Account.TRANSIT, -7),
        Posting("al", Account.COINS, 7),
    )
    assert to_transfer("7-0", clawback, 900).postings == (
        Posting("bob", Account.DIAMONDS, -3),
        Posting(None, Account.PLATFORM, -4),
        Posting(None, Account.TRANSIT, 7),
    )


def test_a_guest_clawback_is_forwarded_with_no_postings_and_paid_back_into_transit() -> None:
    forward = {"type": "clawback_forward", "clawback_id": "p1|r1|bob|gus", "parent": "p1|r1|bob",
               "payment": "p1", "refund_id": "r1", "from": "gus", "via": "bob", "to": "al",
               "coins": "7", "items": "20000:5000:7"}  # fmt: skip
    assert to_transfer("8-0", forward, 900).postings == ()
    clawback = {"type": "clawback", "clawback_id": "p1|r1|bob|gus", "payment": "p1",
                "refund_id": "r1", "from": "gus", "to": "al", "coins": "7", "diamonds": "3",
                "platform": "4", "share_bps": "5000", "share_rem": "5000", "day": "20000",
                "via": "bob"}  # fmt: skip
    assert to_transfer("9-0", clawback, 33).postings == (
        Posting("gus", Account.DIAMONDS, -3),
        Posting(None, Account.PLATFORM, -4),
        Posting(None, Account.TRANSIT, 7),
    )
    with pytest.raises(RecordError):
        to_transfer("9-1", {**forward, "coins": "x"}, 900)

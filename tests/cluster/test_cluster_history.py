"""A wallet's history from a cluster's record: paged by (time, seq, slot), since two slots'
logs may give two transfers one entry id, and every leg of the user's own side in it."""

from __future__ import annotations

from server.ledger.cluster_keys import ClusterKeys, slot_of
from server.ledger.keys import Keys
from server.record.connection import RecordPool
from server.record.history import parse_cursor, wallet_history
from tests.cluster.legs import funded, gift, live_stream, open_ledger, uid
from tests.cluster.record_helpers import cluster_record
from tests.cluster.test_cluster_guests import on_stage
from tests.cluster.test_cluster_hold import HELD
from tests.support.cluster import RedisCluster

PAIRS = 9


async def test_paging_through_two_slots_entries_of_one_id_skips_and_repeats_nothing(
    redis_cluster: RedisCluster, record_pool: RecordPool, keys: Keys
) -> None:
    ck = ClusterKeys(keys.prefix)
    user = uid("alice")
    home = slot_of(ck.account(user))
    other = next(s for s in (slot_of(ck.account(f"o{n}")) for n in range(100)) if s != home)
    async with cluster_record(redis_cluster, record_pool, keys) as record:
        # Two slots' logs written in the same ms give their entries the same id: forced here
        # with explicit ids, one pair per id, the user a party to both of each pair.
        made = []
        for n in range(PAIRS):
            for slot in (home, other):
                payment = f"p-{slot}-{n}"
                fields = {"type": "top_up", "payment": payment, "to": user, "coins": "5",
                          "credited": "5", "repaid": "0"}  # fmt: skip
                await record.client.xadd(ck.ledger_shard(slot), fields, id=f"1700000000{n:03d}-3")  # type: ignore[arg-type]
                made.append((n, slot, payment))
        await record.archiver().drain()

    seen, before, pages = [], None, 0
    while True:
        # An odd page size puts page ends between the two entries of one id.
        page = await wallet_history(record_pool, user, before=before, limit=3)
        seen += [(item["transfer_id"], item["log_slot"], item["payment_id"]) for item in page.items]
        pages += 1
        if page.next_before is None:
            break
        before = parse_cursor(page.next_before)
    want = [(f"1700000000{n:03d}-3", slot, p) for n, slot, p in sorted(made, reverse=True)]
    assert seen == want  # newest first, the higher slot first within one id
    assert len({p for *_, p in seen}) == 2 * PAIRS and pages == 6
    assert parse_cursor("1-2") == (1, 2, -1) and parse_cursor("7/1-2") == (1, 2, 7)


async def test_a_gift_that_earned_0_diamonds_is_in_the_creators_cluster_history(
    redis_cluster: RedisCluster, record_pool: RecordPool, keys: Keys
) -> None:
    ledger = await open_ledger(redis_cluster, keys.prefix)
    try:
        stream, creator = await live_stream(ledger)
        sender = await funded(ledger, 100)
        tiny = await gift(ledger, sender, stream, creator, gift_id="rose")  # 1 coin: 0 diamonds
        assert tiny.diamonds == 0
        await gift(ledger, sender, stream, creator, gift_id="rose")  # the carried half: 1
        async with cluster_record(redis_cluster, record_pool, keys) as record:
            await record.archiver().drain()
    finally:
        await ledger.aclose()
    items = (await wallet_history(record_pool, creator, before=None, limit=10)).items
    assert [(i["kind"], i["diamonds"], i["counterparty"]) for i in items] == [
        ("gift_received", 1, sender), ("gift_received", 0, sender),
    ]  # fmt: skip
    sent = (await wallet_history(record_pool, sender, before=None, limit=10)).items
    assert [(i["kind"], i["coins"]) for i in sent] == [
        ("gift_sent", -1), ("gift_sent", -1), ("top_up", 100),
    ]  # fmt: skip


async def test_a_gift_to_a_guest_is_sent_once_and_received_by_the_guest(
    redis_cluster: RedisCluster, record_pool: RecordPool, keys: Keys
) -> None:
    ledger = await open_ledger(redis_cluster, keys.prefix)
    try:
        stream, creator = await live_stream(ledger)
        guest = uid("guest")
        await on_stage(ledger, stream, creator, guest)
        sender = await funded(ledger, 100)
        await gift(ledger, sender, stream, creator, gift_id="cap", to=guest)
        async with cluster_record(redis_cluster, record_pool, keys) as record:
            await record.archiver().drain()
    finally:
        await ledger.aclose()
    sent = (await wallet_history(record_pool, sender, before=None, limit=10)).items
    assert [i["kind"] for i in sent] == ["gift_sent", "top_up"]  # not the guest's leg too
    got = (await wallet_history(record_pool, guest, before=None, limit=10)).items
    assert [(i["kind"], i["diamonds"], i["counterparty"]) for i in got] == [
        ("gift_received", 49, sender)
    ]


async def test_a_chargeback_of_a_gift_to_a_guest_in_both_histories(
    redis_cluster: RedisCluster, record_pool: RecordPool, keys: Keys
) -> None:
    """The guest sees the clawback of their diamonds, the buyer the reversal and the refund;
    the forward between the creator's slot and the guest's moves nothing and nobody sees it."""
    ledger = await open_ledger(redis_cluster, keys.prefix, HELD)
    try:
        stream, creator = await live_stream(ledger)
        guest, buyer = uid("guest"), uid("fan")
        await on_stage(ledger, stream, creator, guest)
        await ledger.top_up(payment_id="p" + buyer, user_id=buyer, coins=10_000)
        await gift(ledger, buyer, stream, creator, gift_id="interstellar", to=guest)
        await ledger.refund(payment_id="p" + buyer, user_id=buyer, refund_id="r1", coins=10_000)
        async with cluster_record(redis_cluster, record_pool, keys) as record:
            await record.archiver().drain()
    finally:
        await ledger.aclose()
    got = (await wallet_history(record_pool, guest, before=None, limit=10)).items
    assert [(i["kind"], i["diamonds"]) for i in got] == [
        ("clawback", -5_000), ("gift_received", 5_000),
    ]  # fmt: skip
    paid = (await wallet_history(record_pool, buyer, before=None, limit=10)).items
    assert [i["kind"] for i in paid] == ["refund", "gift_reversed", "gift_sent", "top_up"]
    hosted = (await wallet_history(record_pool, creator, before=None, limit=10)).items
    assert [(i["kind"], i["diamonds"]) for i in hosted] == [("gift_received", 0)]

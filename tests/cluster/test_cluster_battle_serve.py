"""A battle between two rooms on two ``giftwire serve`` processes in cluster mode, the rooms'
creators in slots of different primaries, with concurrent gifters in both: both rooms'
viewers see the same final score, and it is the coins each side's credits carried the
battle's id for, read back from each room's feed (docs/ledger.md, "Battles in cluster
mode")."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from client_demo.http import answer_battle, battle_result, invite_battle, stream_battle
from server.domain.accounts import Role
from server.ledger.cluster_keys import ClusterKeys, slot_of
from server.ledger.cluster_runner import ClusterScriptRunner
from server.ledger.keys import Keys
from tests.e2e.conftest import FAST
from tests.e2e.test_battle_e2e import _feed, _gift_until, _watch
from tests.support.cluster import RedisCluster
from tests.support.servers import ServerProcess, client, http_json, signed_webhook, token

GIFTERS = 3
DURATION_S = 2


@pytest.fixture
def battle_servers(
    redis_cluster: RedisCluster, keys: Keys, tmp_path: Path
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    env = {**FAST, "GIFTWIRE_BATTLE_SECONDS_MIN": "1", "GIFTWIRE_REDIS_CLUSTER": "true"}
    servers = [
        ServerProcess(redis_cluster.startup_urls[i], keys.prefix, tmp_path, **env) for i in range(2)
    ]
    try:
        for server in servers:
            server.start()
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()
    for server in servers:
        assert "Traceback" not in server.log()


async def _creators_on_two_primaries(cluster: RedisCluster, keys: Keys) -> tuple[str, str]:
    runner = ClusterScriptRunner(cluster.startup_urls, timeout_s=5.0)
    await runner.prepare()
    try:
        k = ClusterKeys(keys.prefix)
        first = f"host-a-{uuid.uuid4().hex[:6]}"
        primary = runner.primary_of(slot_of(k.account(first)))
        while True:
            second = f"host-b-{uuid.uuid4().hex[:6]}"
            if runner.primary_of(slot_of(k.account(second))) != primary:
                return first, second
    finally:
        await runner.aclose()


async def test_two_rooms_on_two_processes_see_the_same_exact_final_score_on_a_cluster(
    battle_servers: tuple[ServerProcess, ServerProcess], redis_cluster: RedisCluster, keys: Keys
) -> None:
    sa, sb = battle_servers
    ca, cb = await _creators_on_two_primaries(redis_cluster, keys)
    a, b = f"arena-{ca}", f"arena-{cb}"
    ta, tb = token(ca, Role.CREATOR), token(cb, Role.CREATOR)
    for server, stream, bearer in ((sa, a, ta), (sb, b, tb)):
        status, body = http_json(
            "POST", server.http + "/api/streams", {"stream_id": stream}, bearer=bearer
        )
        assert status == 201, body
    names = [f"fan-{side}{i}-{uuid.uuid4().hex[:4]}" for side in "ab" for i in range(GIFTERS)]
    for name in names:
        event = {
            "type": "payment.succeeded",
            "payment_id": f"pay-{name}",
            "user_id": name,
            "coins": 1_000_000,
        }
        status, _ = await asyncio.to_thread(signed_webhook, sa, event)
        assert status == 200

    stop = asyncio.Event()
    async with (
        client(sa, a, token("watcher-a")) as viewer_a,
        client(sb, b, token("watcher-b")) as viewer_b,
        client(sa, a, token(names[0])) as g0,
        client(sb, a, token(names[1])) as g1,
        client(sa, a, token(names[2])) as g2,
        client(sb, b, token(names[3])) as g3,
        client(sa, b, token(names[4])) as g4,
        client(sb, b, token(names[5])) as g5,
    ):
        watchers = [asyncio.create_task(_watch(v)) for v in (viewer_a, viewer_b)]
        senders = [
            asyncio.create_task(_gift_until(g, f"g{i}-", stop))
            for i, g in enumerate((g0, g1, g2, g3, g4, g5))
        ]
        await asyncio.sleep(0.3)  # gifts before the battle: they must not score
        invite = await asyncio.to_thread(invite_battle, sa.http, ta, a, b, DURATION_S)
        started = await asyncio.to_thread(answer_battle, sb.http, tb, invite)
        # The battle ends on time, by the servers' battle watch; gifts go on past it.
        (gifts_a, battle_a), (gifts_b, battle_b) = await asyncio.gather(*watchers)
        await asyncio.sleep(0.3)
        stop.set()
        acks = await asyncio.gather(*senders)

    result_a, result_b = battle_a[-1], battle_b[-1]
    assert result_a == result_b, "both rooms see the same result"
    assert result_a["reason"] == "time" and result_a["battle_id"] == started["battle_id"]
    assert result_a == await asyncio.to_thread(battle_result, sb.http, started["battle_id"])
    assert battle_a[0]["type"] == battle_b[0]["type"] == "battle"
    # Each room saw the other side's score move: carried across by the battle watch.
    for seen in (battle_a, battle_b):
        scores = [m["sides"] for m in seen if m["type"] == "battle_score"]
        assert scores and all(len(sides) == 2 for sides in scores)
        assert max(sides[0]["score"] for sides in scores) > 0
        assert max(sides[1]["score"] for sides in scores) > 0
    starts_at, ends_at = result_a["starts_at"], result_a["ends_at"]
    assert ends_at - starts_at == DURATION_S * 1000

    final = {side["stream_id"]: side["score"] for side in result_a["sides"]}
    for stream, live in ((a, gifts_a), (b, gifts_b)):
        feed = await _feed(sa, stream)
        in_window = [e for e in feed if e.get("battle_id") == started["battle_id"]]
        # Each credit leg decided on its own primary's clock, inside the shared window ...
        assert all(starts_at <= e["ts"] < ends_at for e in in_window)
        assert all(not e.get("battle_id") for e in feed if e["ts"] >= ends_at)
        assert any(e["ts"] < starts_at for e in feed) and any(e["ts"] >= ends_at for e in feed)
        # ... and the score is exactly those credits' coins, as the viewers saw them live.
        assert final[stream] == sum(e["coins"] for e in in_window) > 0
        live_scored = [e for e in live if e.get("battle_id") == started["battle_id"]]
        assert sum(e["coins"] for e in live_scored) == final[stream]
    # Every acknowledged gift is in its room's feed, once.
    acked = sum(len(x) for x in acks)
    assert acked == len(await _feed(sa, a)) + len(await _feed(sb, b))

    state = await asyncio.to_thread(stream_battle, sb.http, a)
    assert state["battle"]["state"] == "ended" and state["battle"]["result"] == result_a
    assert state["outgoing"] is None and state["incoming"] == []
    winner = max(final, key=lambda s: final[s]) if len(set(final.values())) > 1 else None
    assert result_a["winner"] == winner


async def test_decline_end_early_and_a_stream_end_over_http_on_a_cluster(
    battle_servers: tuple[ServerProcess, ServerProcess], redis_cluster: RedisCluster, keys: Keys
) -> None:
    sa, sb = battle_servers
    ca, cb = await _creators_on_two_primaries(redis_cluster, keys)
    a, b = f"arena-{ca}", f"arena-{cb}"
    ta, tb = token(ca, Role.CREATOR), token(cb, Role.CREATOR)
    for server, stream, bearer in ((sa, a, ta), (sb, b, tb)):
        status, body = http_json(
            "POST", server.http + "/api/streams", {"stream_id": stream}, bearer=bearer
        )
        assert status == 201, body
    invite = await asyncio.to_thread(invite_battle, sa.http, ta, a, b, 60)
    state = await asyncio.to_thread(stream_battle, sb.http, b)
    assert [i["battle_id"] for i in state["incoming"]] == [invite["battle_id"]]
    declined = await asyncio.to_thread(answer_battle, sb.http, tb, invite, accept=False)
    assert declined["battle_id"] == invite["battle_id"]
    assert (await asyncio.to_thread(stream_battle, sa.http, b))["incoming"] == []
    status, body = http_json(
        "POST",
        f"{sb.http}/api/battles/{invite['battle_id']}/accept",
        {"from_stream": a, "to_stream": b},
        bearer=tb,
    )
    assert status == 404 and body["error"]["code"] == "unknown_invite", body

    # Ended early by a creator, on the other process than the one that started it.
    invite = await asyncio.to_thread(invite_battle, sa.http, ta, a, b, 60)
    started = await asyncio.to_thread(answer_battle, sb.http, tb, invite)
    status, body = http_json("POST", f"{sb.http}/api/streams/{a}/battle/end", {}, bearer=ta)
    assert status == 200 and body["reason"] == "ended" and not body["replayed"], body
    status, again = http_json("POST", f"{sa.http}/api/streams/{b}/battle/end", {}, bearer=tb)
    assert status == 200 and again["replayed"] and again["battle_id"] == started["battle_id"]
    # Ended with a stream.
    invite = await asyncio.to_thread(invite_battle, sb.http, tb, b, a, 60)
    started = await asyncio.to_thread(answer_battle, sa.http, ta, invite)
    status, _ = http_json("POST", f"{sa.http}/api/streams/{a}/end", {}, bearer=ta)
    assert status == 200
    result = await asyncio.to_thread(battle_result, sb.http, started["battle_id"])
    assert result["reason"] == "stream_ended" and result["draw"] is True
    assert [s["stream_id"] for s in result["sides"]] == [b, a]


@pytest.mark.slow
@pytest.mark.parametrize("step", ["1", "2"])
async def test_kill_9_of_the_server_between_the_accept_steps_is_finished_by_the_retry(
    redis_cluster: RedisCluster, keys: Keys, tmp_path: Path, step: str
) -> None:
    """The process that accepts dies after step 1 (side a starting) or step 2 (side b
    running too): the creator's retry on another process finishes the same battle, and
    side a scores from then on, not before."""
    env = {**FAST, "GIFTWIRE_REDIS_CLUSTER": "true"}
    urls = redis_cluster.startup_urls
    doomed = ServerProcess(
        urls[0], keys.prefix, tmp_path, **env, GIFTWIRE_TEST_CRASH_IN_ACCEPT=step
    )
    survivor = ServerProcess(urls[1], keys.prefix, tmp_path, **env)
    doomed.start()
    survivor.start()
    try:
        ca, cb = await _creators_on_two_primaries(redis_cluster, keys)
        a, b = f"arena-{ca}", f"arena-{cb}"
        ta, tb = token(ca, Role.CREATOR), token(cb, Role.CREATOR)
        for stream, bearer in ((a, ta), (b, tb)):
            status, body = http_json(
                "POST", survivor.http + "/api/streams", {"stream_id": stream}, bearer=bearer
            )
            assert status == 201, body
        fan = f"fan-{uuid.uuid4().hex[:6]}"
        event = {
            "type": "payment.succeeded",
            "payment_id": f"p-{fan}",
            "user_id": fan,
            "coins": 100,
        }
        assert (await asyncio.to_thread(signed_webhook, survivor, event))[0] == 200
        invite = await asyncio.to_thread(invite_battle, survivor.http, ta, a, b, 60)
        async with (
            client(survivor, a, token(fan)) as gifter,
            client(survivor, b, token("w")) as viewer_b,
        ):
            with pytest.raises(OSError):
                await asyncio.to_thread(answer_battle, doomed.http, tb, invite)
            assert doomed.process is not None and doomed.process.wait(10) == -9
            # Between the steps side a is starting: a gift to it does not score.
            await gifter.send({"type": "send_gift", "id": "before", "gift": "rose"})
            assert (await gifter.recv_type("gift_ack"))["seq"] == 1
            # Reading the battle finishes an accept whose side b joined (step 3 is all that
            # is left); one that stopped after step 1 waits for the retry.
            state = await asyncio.to_thread(stream_battle, survivor.http, a)
            assert state["battle"]["state"] == ("starting" if step == "1" else "running")
            retried = await asyncio.to_thread(answer_battle, survivor.http, tb, invite)
            assert retried["replayed"] is True and retried["battle_id"] == invite["battle_id"]
            assert (await gifter.recv_type("battle"))["battle_id"] == invite["battle_id"]
            assert (await viewer_b.recv_type("battle"))["battle_id"] == invite["battle_id"]
            await gifter.send({"type": "send_gift", "id": "after", "gift": "rose"})
            assert (await gifter.recv_type("gift_ack"))["seq"] == 2
        state = await asyncio.to_thread(stream_battle, survivor.http, a)
        assert state["battle"]["state"] == "running"
        assert [s["score"] for s in state["battle"]["sides"]] == [1, 0]
        feed = await _feed(survivor, a)
        assert [e.get("battle_id") for e in feed] == [None, invite["battle_id"]]
    finally:
        doomed.kill()
        survivor.stop()
    assert "Traceback" not in survivor.log()

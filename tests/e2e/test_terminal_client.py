"""The terminal client (``python -m client_demo``) as a subprocess against a real server."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import IO, Any

import orjson
import pytest

from client_demo.creator import InOrder
from server.domain.accounts import Role
from server.ledger.ledger import Ledger
from tests.integration.helpers import gift as send_gift
from tests.support.servers import REPO, ServerProcess, http_json, token

STREAM = "term1"
CREATOR = "star"
CLIENT_TIMEOUT_S = 30.0


async def _live(ledger: Ledger, *viewers: tuple[str, int]) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="Terminal!")
    for user, coins in viewers:
        await ledger.top_up(payment_id=f"pay-{user}", user_id=user, coins=coins)


async def _gift(ledger: Ledger, client_id: str, gift: str = "rose", sender: str = "bob") -> None:
    await send_gift(ledger, client_id, sender=sender, gift_id=gift, stream=STREAM, creator=CREATOR)


class LiveClient:
    """A running ``python -m client_demo`` whose ``--json`` lines are read as they come."""

    def __init__(
        self, process: asyncio.subprocess.Process, server: ServerProcess, stderr: IO[bytes]
    ) -> None:
        self.process = process
        self.server = server
        self.stderr = stderr
        self.lines: list[dict[str, Any]] = []

    async def next(self, *types: str, timeout_s: float = 15.0) -> dict[str, Any]:
        """The next line of one of ``types`` (every line read is kept in ``lines``)."""
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    raw = await self.process.stdout.readline()
                    if not raw:
                        raise EOFError("the client exited")
                    line: dict[str, Any] = orjson.loads(raw)
                    self.lines.append(line)
                    if line["type"] in types:
                        return line
        except (EOFError, TimeoutError) as e:
            raise AssertionError(f"no {types} line: {e!r}\n{self.diagnosis()}") from e

    def diagnosis(self) -> str:
        self.stderr.seek(0)
        return (
            f"client printed: {self.lines}\nclient stderr: {self.stderr.read().decode()}\n"
            f"server log: {self.server.log()}"
        )

    async def write(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode())
        await self.process.stdin.drain()

    async def close_stdin(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()

    async def finish(self) -> int:
        """Read the remaining lines and wait for the exit status."""
        assert self.process.stdout is not None
        async with asyncio.timeout(CLIENT_TIMEOUT_S):
            while raw := await self.process.stdout.readline():
                self.lines.append(orjson.loads(raw))
            return await self.process.wait()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["type"] == kind]


@asynccontextmanager
async def terminal(
    server: ServerProcess, bearer: str, *args: str, stdin: bool = True
) -> AsyncIterator[LiveClient]:
    command, *rest = args
    with tempfile.TemporaryFile() as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "client_demo",
            command,
            "--url",
            f"ws://127.0.0.1:{server.port}",
            "--json",
            *rest,
            cwd=REPO,
            env={**os.environ, "GIFTWIRE_TOKEN": bearer},
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
        client = LiveClient(process, server, stderr)
        try:
            yield client
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            if process.stdin is not None:
                process.stdin.close()


async def run(
    server: ServerProcess, bearer: str, args: Sequence[str], *, stdin: str | None = None
) -> tuple[int, LiveClient]:
    """Run the client to its end: ``(exit status, the client with every line it printed)``."""
    async with terminal(server, bearer, *args, stdin=stdin is not None) as client:
        if stdin is not None:
            await client.write(stdin)
            await client.close_stdin()
        status = await client.finish()
    return status, client


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_viewer_sends_from_arguments_and_stdin_and_sees_its_gifts(
    server: ServerProcess, ledger: Ledger, fmt: str
) -> None:
    await _live(ledger, ("alice", 100))
    status, client = await run(
        server,
        token("alice"),
        ["viewer", "--stream", STREAM, "--format", fmt, "--send", "rose:3", "--events", "3"],
        stdin="heart 2\n# a comment\nrose x0\n\nfinger_heart\n",
    )
    assert status == 0, client.lines
    welcome = client.of("welcome")[0]
    assert welcome["format"] == fmt and welcome["balance"]["coins"] == 100
    acks = client.of("gift_ack")
    assert [(a["gift"], a["count"], a["balance"]) for a in acks] == [
        ("rose", 3, 97),
        ("heart", 2, 95),
        ("finger_heart", 1, 90),
    ]
    assert not any(a["replayed"] for a in acks)
    assert [u["line"] for u in client.of("usage")] == ["rose x0"]  # refused locally
    assert [g["seq"] for g in client.of("gift")] == [1, 2, 3]
    assert client.of("gift")[0]["sender_name"] == "Alice"
    assert (await ledger.balance("alice")).coins == 90


async def test_refused_gift_is_reported_exits_1_and_moves_nothing(
    server: ServerProcess, ledger: Ledger
) -> None:
    await _live(ledger, ("alice", 10))
    status, client = await run(
        server, token("alice"), ["viewer", "--stream", STREAM, "--send", "universe", "--no-stdin"]
    )
    assert status == 1
    [error] = client.of("error")
    assert error["code"] == "insufficient_funds" and error["id"]
    assert error["detail"] == {"balance": 10, "price": 34999}
    assert (await ledger.balance("alice")).coins == 10
    assert (await ledger.stream(STREAM)).last_sequence == 0  # type: ignore[union-attr]


async def test_a_script_run_twice_with_one_id_prefix_sends_each_gift_once(
    server: ServerProcess, ledger: Ledger
) -> None:
    await _live(ledger, ("alice", 200))
    args = ["viewer", "--stream", STREAM, "--send", "cap", "--send", "rose:2", "--no-stdin"]
    args += ["--id-prefix", "nightly-job"]
    first_status, first = await run(server, token("alice"), args)
    second_status, second = await run(server, token("alice"), args)
    assert first_status == second_status == 0, (first.lines, second.lines)
    assert [a["replayed"] for a in first.of("gift_ack")] == [False, False]
    assert [a["replayed"] for a in second.of("gift_ack")] == [True, True]
    assert [a["id"] for a in second.of("gift_ack")] == ["nightly-job-1", "nightly-job-2"]
    assert [a["transfer_id"] for a in second.of("gift_ack")] == [
        a["transfer_id"] for a in first.of("gift_ack")
    ]
    assert (await ledger.balance("alice")).coins == 200 - 99 - 2


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_creator_prints_the_feed_since_a_sequence_then_live(
    server: ServerProcess, ledger: Ledger, fmt: str
) -> None:
    await _live(ledger, ("bob", 1000))
    for i in range(5):
        await _gift(ledger, f"before-{i}")
    bearer = token(CREATOR, Role.CREATOR)
    args = ["creator", "--stream", STREAM, "--since", "2", "--events", "6", "--format", fmt]
    async with terminal(server, bearer, *args, stdin=False) as client:
        welcome = await client.next("welcome")
        assert welcome["last_seq"] == 5 and welcome["you"]["role"] == "creator"
        for i in range(3):
            await _gift(ledger, f"after-{i}", gift="heart")
        assert await client.finish() == 0
    events = client.of("gift")
    assert [e["seq"] for e in events] == [3, 4, 5, 6, 7, 8]
    assert [e["gift_id"] for e in events] == ["rose"] * 3 + ["heart"] * 3


async def test_creator_resumes_across_a_server_restart_without_gap_or_duplicate(
    server: ServerProcess, ledger: Ledger
) -> None:
    await _live(ledger, ("bob", 1000))
    bearer = token(CREATOR, Role.CREATOR)
    args = ["creator", "--stream", STREAM, "--events", "7"]
    async with terminal(server, bearer, *args, stdin=False) as client:
        await client.next("welcome")
        for i in range(3):
            await _gift(ledger, f"g{i}")
        for _ in range(3):
            await client.next("gift")
        server.stop()
        await client.next("disconnected")
        for i in range(3, 6):  # while the creator is away
            await _gift(ledger, f"g{i}")
        server.start()
        await client.next("welcome", timeout_s=30)
        await _gift(ledger, "g6")
        assert await client.finish() == 0
    assert [e["seq"] for e in client.of("gift")] == list(range(1, 8))


async def test_viewer_sends_a_gift_typed_while_disconnected_once_after_reconnecting(
    server: ServerProcess, ledger: Ledger
) -> None:
    await _live(ledger, ("alice", 100))
    async with terminal(server, token("alice"), "viewer", "--stream", STREAM) as client:
        await client.next("welcome")
        server.stop()
        await client.next("disconnected")
        await client.write("cap\n")
        server.start()
        await client.next("welcome", timeout_s=30)
        ack = await client.next("gift_ack")
        assert ack["gift"] == "cap" and ack["balance"] == 1
        await client.close_stdin()
        assert await client.finish() == 0
    assert len(client.of("gift_ack")) == 1
    assert (await ledger.balance("alice")).coins == 1


async def test_creator_starts_a_stream_and_the_feed_stops_when_it_ends(
    server: ServerProcess, ledger: Ledger
) -> None:
    await ledger.top_up(payment_id="pay-bob", user_id="bob", coins=100)
    bearer = token(CREATOR, Role.CREATOR)
    args = ["creator", "--stream", STREAM, "--start", "--title", "From the terminal"]
    async with terminal(server, bearer, *args, stdin=False) as feed:
        started = await feed.next("started")
        assert started["state"] == "live"
        assert (await feed.next("welcome"))["stream"]["title"] == "From the terminal"
        await _gift(ledger, "one")
        await feed.next("gift")
        status, ender = await run(server, bearer, ["creator", "--stream", STREAM, "--end"])
        assert status == 0 and ender.of("ended")[0]["state"] == "ended"
        assert (await feed.next("stream"))["state"] == "ended"
        assert await feed.finish() == 0  # ended and caught up: the feed is complete
    status, _ = http_json("GET", f"{server.http}/api/streams/{STREAM}")
    assert status == 200


@pytest.mark.parametrize(
    ("stream", "bearer", "code"),
    [
        (STREAM, "not-a-token", "unauthorized"),
        ("no-such-stream", token("alice"), "unknown_stream"),
    ],
)
async def test_a_refused_connection_exits_2_with_the_reason(
    server: ServerProcess, ledger: Ledger, stream: str, bearer: str, code: str
) -> None:
    await _live(ledger)
    status, client = await run(server, bearer, ["viewer", "--stream", stream, "--no-stdin"])
    assert status == 2
    assert client.of("refused")[0]["code"] == code


def test_in_order_holds_events_after_a_hole_and_skips_duplicates() -> None:
    order = InOrder(last_seq=2)
    events = [{"seq": s} for s in (5, 3, 2, 6)]
    assert [e["seq"] for e in order.offer(events)] == [3]
    assert order.waiting()  # 5 and 6 wait for 4
    assert [e["seq"] for e in order.offer([{"seq": 4}, {"seq": 5}])] == [4, 5, 6]
    assert not order.waiting()
    assert order.offer([{"seq": 9}]) == []
    assert [e["seq"] for e in order.skip_to(8)] == [9]  # a gap: 7 and 8 will never come
    assert order.last_seq == 9

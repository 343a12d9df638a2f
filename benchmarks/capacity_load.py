"""Gift load for the capacity check, in a process of its own (``capacity.py`` starts it):
real ``send_gift.lua`` calls at a set rate, ``--big-share`` of them into the measured room
and the rest spread over the small rooms. In its own process so that the 10,000 viewers'
client in the benchmark's process does not slow the senders down (or the reverse).

Prints one JSON line after ``--warmup-s`` and one at the end:
``{"at": monotonic seconds, "sent": gifts sent so far}``, for a person running it by hand;
``capacity.py`` takes its window's marks itself, inside this run, from the streams'
sequences in Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import orjson
from redis.asyncio import Redis

from server.domain.catalog import load_catalog
from server.domain.limits import Limits
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger


async def run(args: argparse.Namespace) -> None:
    client = Redis.from_url(args.redis_url)
    fast = Limits(gifts_per_s_max=1_000_000, gift_burst_max=1_000_000)
    ledger = Ledger(client, keys=Keys(args.prefix), limits=fast)
    await ledger.prepare(load_catalog())  # the scripts; the catalog is already there
    sent = [0]
    stop = asyncio.Event()
    every = round(1 / args.big_share)

    interval = args.senders / args.rate
    start = time.monotonic()

    async def sender(index: int) -> None:
        # Staggered evenly over the interval, so that calls mostly arrive alone (as at a
        # primary fed by many server processes); capacity.drive paces the same way.
        next_at = start + index * interval / args.senders
        for n in range(10**9):
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            if stop.is_set():
                return
            number = n * args.senders + index
            if number % every == 0:
                stream, creator = args.big_stream, args.big_creator
            else:
                small = number % args.small_rooms
                stream, creator = f"small{small}", f"c{small}"
            await ledger.send_gift(
                client_id=f"k{index}-{n}", sender_id=f"u{index}", sender_name="U",
                stream_id=stream, creator_id=creator, gift_id="rose", count=1,
            )  # fmt: skip
            sent[0] += 1

    tasks = [asyncio.create_task(sender(i)) for i in range(args.senders)]
    await asyncio.sleep(args.warmup_s)
    _line(sent[0])
    await asyncio.sleep(args.seconds)
    _line(sent[0])
    stop.set()
    await asyncio.gather(*tasks)
    await client.aclose()


def _line(sent: int) -> None:
    sys.stdout.write(orjson.dumps({"at": time.monotonic(), "sent": sent}).decode() + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--big-share", type=float, required=True)
    parser.add_argument("--big-stream", required=True)
    parser.add_argument("--big-creator", required=True)
    parser.add_argument("--small-rooms", type=int, required=True)
    parser.add_argument("--senders", type=int, default=64)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()

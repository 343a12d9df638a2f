"""Credits per second into one hot creator on a Redis Cluster: batched vs one per call.

``python -m benchmarks.cluster_credits [--transfers 20000] [--rounds 2]`` starts a loopback
3-primary + 3-replica cluster, debits ``--transfers`` one-coin gifts from ``--senders``
senders to **one** creator's stream (not timed; the credit leg switched off, so they wait in
the outboxes as after a crash), then credits them, timed, ``--in-flight`` at a time, through
``CreditBatcher`` with batches of up to 64 and with batches of 1 (one script call per gift,
as if there were no batching), alternating, each side's best round kept. It reports
credits/s, credits per script call and the creator's primary's CPU per credit (``INFO cpu``,
user + system), and checks that every transfer was credited exactly once (cluster
reconcile). Results: ``benchmarks/results/cluster_credits.json``.

What it can and cannot show on this machine: two cores run the cluster's six redis-servers,
the Python client and everything else on the box, so the absolute credits/s are the
client's as much as Redis'; the ratio batched/unbatched and Redis' CPU per credit are the
figures that carry over to a larger machine, where one creator's slot is bound by its
primary's one core.

Then the relay's lag under load: ``--relay-rate`` gifts per second for ``--relay-seconds``
with the fast path off (every gift left to the relay, as if each server died between the
legs), one relay with the default grace; the lag from each debit to its credit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.procs import REPO, machine
from server.domain.catalog import load_catalog
from server.domain.errors import UnavailableError
from server.domain.limits import Limits
from server.ledger.cluster_credits import CreditBatcher, CreditResult, Transfer
from server.ledger.cluster_keys import ClusterKeys, slot_of
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.cluster_reconcile import reconcile_cluster
from server.ledger.cluster_relay import Relay
from server.ledger.cluster_runner import ClusterScriptRunner
from tests.support.cluster import RedisCluster

RESULTS = REPO / "benchmarks" / "results" / "cluster_credits.json"
LIMITS = Limits(gifts_per_s_max=1_000_000, gift_burst_max=1_000_000)


async def _open(cluster: RedisCluster, prefix: str) -> ClusterLedger:
    runner = ClusterScriptRunner(cluster.startup_urls[:1], timeout_s=30.0)
    ledger = ClusterLedger(runner, keys=ClusterKeys(prefix), limits=LIMITS)
    await ledger.prepare(load_catalog())
    return ledger


async def _debited(ledger: ClusterLedger, transfers: int, senders: int) -> list[Transfer]:
    """Debit ``transfers`` one-coin gifts to one creator; return them as the outbox has them."""
    creator, stream = "hot_creator", "hot_stream"
    await ledger.start_stream(stream_id=stream, creator_id=creator, title="hot")
    users = [f"s{n}" for n in range(senders)]
    per = -(-transfers // senders)
    await asyncio.gather(*(ledger.top_up(payment_id=f"p{u}", user_id=u, coins=per) for u in users))

    async def parked(transfer: Transfer) -> CreditResult:
        raise UnavailableError("parked in the outbox for the benchmark")

    ledger.credits.credit = parked  # type: ignore[method-assign]
    made: list[Transfer] = []

    async def one(user: str, n: int) -> None:
        with contextlib.suppress(UnavailableError):  # the credit is parked: expected
            await ledger.send_gift(
                client_id=f"g{n}", sender_id=user, sender_name=user, stream_id=stream,
                creator_id=creator, gift_id="rose", count=1,
            )  # fmt: skip

    for start in range(0, transfers, 512):
        await asyncio.gather(
            *(one(users[n % senders], n) for n in range(start, min(transfers, start + 512)))
        )
    for key, _ in (await ledger.shards.lengths(ledger.keys.outbox_shards())).items():
        rows = await ledger.command(key, "XRANGE", "-", "+")
        made += [Transfer.from_outbox(fields) for _, fields in rows]
    return made


async def _cpu_s(ledger: ClusterLedger, slot: int) -> float:
    info = await ledger.runner.client(ledger.runner.primary_of(slot)).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _credit_round(
    ledger: ClusterLedger, transfers: list[Transfer], batch_max: int, in_flight: int
) -> dict[str, Any]:
    batcher = CreditBatcher(ledger.runner, ledger.keys, ledger.limits, batch_max=batch_max)
    slot = slot_of(ledger.keys.account("hot_creator"))
    queue = iter(transfers)
    credited = 0

    async def worker() -> None:
        nonlocal credited
        for transfer in queue:
            result = await batcher.credit(transfer)
            credited += result.status == "ok"

    cpu_before = await _cpu_s(ledger, slot)
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    cpu = await _cpu_s(ledger, slot) - cpu_before
    return {
        "batch_max": batch_max,
        "credits": credited,
        "seconds": round(elapsed, 3),
        "credits_per_s": round(len(transfers) / elapsed),
        "credits_per_call": round(len(transfers) / max(1, batcher.calls), 1),
        "redis_cpu_us_per_credit": round(cpu * 1e6 / len(transfers), 1),
    }


async def _relay_lag(
    sender: ClusterLedger, settler: ClusterLedger, rate: float, seconds: float, *, hinted: bool
) -> dict[str, Any]:
    """Gifts at ``rate`` per second sent by ``sender``, whose fast path is off (as if every
    server died between the legs), settled by one relay on ``settler`` with the default
    grace: the lag from each debit to its credit, by Redis' clocks. ``hinted``: the relay
    hears of the slots the sender left entries in (a relay in the same process, whose
    credits timed out); else it finds them by its full sweep (the sender process died)."""
    if hinted:
        settler.unsettled_slots = sender.unsettled_slots
    creator, stream = f"lag_creator{int(hinted)}", f"lag_stream{int(hinted)}"
    await sender.start_stream(stream_id=stream, creator_id=creator, title="lag")
    total = int(rate * seconds)
    users = [f"l{n}" for n in range(100)]
    await asyncio.gather(
        *(sender.top_up(payment_id=f"q{u}", user_id=u, coins=total) for u in users)
    )

    async def parked(transfer: Transfer) -> CreditResult:
        raise UnavailableError("parked for the relay")

    sender.credits.credit = parked  # type: ignore[method-assign]
    lags: list[int] = []
    real_batch = settler.credit_transfers

    async def measured(transfers: list[Transfer]) -> list[CreditResult]:
        results = await real_batch(transfers)
        lags.extend(r.ts - t.debit_ms for t, r in zip(transfers, results, strict=True) if r.ts)
        return results

    settler.credit_transfers = measured  # type: ignore[method-assign]
    relay_round_done = asyncio.Event()
    relay = Relay(settler, on_round=lambda _: relay_round_done.set())
    relay.start()
    started = time.perf_counter()
    sends = []
    for n in range(total):
        delay = started + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        gift = _parked_gift(sender, users[n % 100], n, stream, creator)
        sends.append(asyncio.ensure_future(gift))
    await asyncio.gather(*sends)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(60):
            while len(lags) < total:
                await relay_round_done.wait()
                relay_round_done.clear()
    await relay.stop()
    ordered = sorted(lags)

    def pct(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else -1

    return {
        "rate_per_s": rate,
        "gifts": total,
        "settled": len(lags),
        "lag_ms_p50": pct(0.5),
        "lag_ms_p99": pct(0.99),
        "lag_ms_max": ordered[-1] if ordered else -1,
        "grace_ms": relay.grace_ms,
        "round_interval_s": relay.interval_s,
        "full_sweep_s": relay.full_sweep_s,
        "hinted": hinted,
    }


async def _parked_gift(ledger: ClusterLedger, user: str, n: int, stream: str, creator: str) -> None:
    with contextlib.suppress(UnavailableError):
        await ledger.send_gift(
            client_id=f"q{n}", sender_id=user, sender_name=user, stream_id=stream,
            creator_id=creator, gift_id="rose", count=1,
        )  # fmt: skip


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rounds: dict[int, list[dict[str, Any]]] = {64: [], 1: []}
    with tempfile.TemporaryDirectory() as tmp:
        cluster = RedisCluster(Path(tmp))
        cluster.start()
        try:
            for r in range(args.rounds):
                for batch_max in (64, 1):
                    ledger = await _open(cluster, f"bench{r}b{batch_max}:")
                    try:
                        transfers = await _debited(ledger, args.transfers, args.senders)
                        result = await _credit_round(ledger, transfers, batch_max, args.in_flight)
                        report = await reconcile_cluster(ledger)
                        result["reconcile_ok"] = report.ok and not report.pending
                        rounds[batch_max].append(result)
                        print(f"round {r} batch {batch_max}: {result}", file=sys.stderr)
                    finally:
                        await ledger.aclose()
            lag: dict[str, Any] = {}
            for hinted in (True, False) if args.relay_rate > 0 else ():
                sender = await _open(cluster, f"benchlag{int(hinted)}:")
                settler = await _open(cluster, f"benchlag{int(hinted)}:")
                try:
                    lag["same_process" if hinted else "after_a_crash"] = one = await _relay_lag(
                        sender, settler, args.relay_rate, args.relay_seconds, hinted=hinted
                    )
                    print(f"relay lag: {one}", file=sys.stderr)
                finally:
                    await sender.aclose()
                    await settler.aclose()
        finally:
            cluster.stop()
    best = {b: max(rs, key=lambda x: x["credits_per_s"]) for b, rs in rounds.items()}
    return {
        "machine": machine(),
        "transfers": args.transfers,
        "senders": args.senders,
        "in_flight": args.in_flight,
        "rounds": {str(b): rs for b, rs in rounds.items()},
        "batched": best[64],
        "unbatched": best[1],
        "ratio": round(best[64]["credits_per_s"] / best[1]["credits_per_s"], 2),
        "relay_lag": lag,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transfers", type=int, default=20_000)
    parser.add_argument("--senders", type=int, default=500)
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--relay-rate", type=float, default=200.0, help="0: skip")
    parser.add_argument("--relay-seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


def options(scale: float = 1.0) -> argparse.Namespace:
    """The defaults, with the transfers scaled (for ``python -m benchmarks run --only
    cluster``, which runs this after ``cluster_scale``)."""
    args = _parser().parse_args([])
    args.transfers = max(1_000, round(10_000 * scale))
    return args


def table(result: dict[str, Any]) -> str:
    b, u = result["batched"], result["unbatched"]
    lines = [
        "| one hot creator | credits/s | credits per call | Redis CPU per credit |",
        "|---|---|---|---|",
        f"| batched (up to 64) | {b['credits_per_s']:,} | {b['credits_per_call']} "
        f"| {b['redis_cpu_us_per_credit']} µs |",
        f"| one per call | {u['credits_per_s']:,} | {u['credits_per_call']} "
        f"| {u['redis_cpu_us_per_credit']} µs |",
        f"\nbatched / one per call: {result['ratio']}x credits/s",
    ]
    for name, lag in result["relay_lag"].items():
        lines.append(
            f"relay lag, {name.replace('_', ' ')} ({lag['rate_per_s']:g} gifts/s, "
            f"{lag['settled']:,}/{lag['gifts']:,} settled): p50 {lag['lag_ms_p50']:,} ms, "
            f"p99 {lag['lag_ms_p99']:,} ms, max {lag['lag_ms_max']:,} ms"
        )
    return "\n".join(lines)


def main() -> None:
    args = _parser().parse_args()
    result = asyncio.run(run(args))
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(table(result))


if __name__ == "__main__":
    main()

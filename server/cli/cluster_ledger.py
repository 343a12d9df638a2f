"""Cluster-mode ledger commands: ``giftwire reconcile`` and ``giftwire relay`` on a cluster.

``reconcile`` reads every slot's log and outbox (``server/ledger/cluster_reconcile.py``) and
exits 1 on any problem; pending transfers (debited, not yet credited) are listed with their
age and are not a problem. ``relay`` runs the relay (``server/ledger/cluster_relay.py``) in
this process until stopped, or with ``--once`` until the outboxes are empty or it gives up:
``giftwire serve`` runs one in every server process already, so this is for operators who
want one apart, or to drain the outboxes while no server runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import orjson

from server.cli.common import CommandError, HelpFormatter, say
from server.domain.catalog import load_catalog
from server.domain.errors import UnavailableError
from server.ledger.cluster_keys import ClusterKeys
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.cluster_reconcile import reconcile_cluster
from server.ledger.cluster_relay import Relay
from server.ledger.cluster_runner import ClusterScriptRunner
from server.ledger.redis_config import Durability
from server.record.cluster_logs import recorded_entries
from server.record.cluster_reconcile import ClusterRecordReport, reconcile_cluster_record
from server.record.connection import open_record
from server.settings import Settings, env_name

ONCE_ROUNDS_MAX = 120
"""Rounds ``relay --once`` makes before it gives up on what stays pending (about 60 s)."""


async def open_cluster_ledger(settings: Settings) -> ClusterLedger:
    if not settings.redis_url:
        raise CommandError(f"cluster mode needs {env_name('redis_url')} (a node of the cluster)")
    limits = settings.limits
    # The relay's credits are acknowledged writes too: WAIT as the server's do.
    replicated = settings.durability_mode is Durability.ALWAYS_REPLICA
    runner = ClusterScriptRunner(
        [settings.redis_url],
        timeout_s=limits.redis_timeout_s,
        calls_per_pipeline_max=limits.pipeline_calls_max,
        pipelines_in_flight_max=limits.pipelines_in_flight_max,
        wait_replicas=settings.durability_replicas if replicated else 0,
        wait_timeout_ms=settings.durability_wait_ms,
        fence_keys=ClusterKeys(settings.key_prefix),
    )
    ledger = ClusterLedger(
        runner, keys=ClusterKeys(settings.key_prefix), limits=limits, economics=settings.economics
    )
    try:
        await ledger.prepare(load_catalog(settings.catalog_path))
    except (UnavailableError, OSError) as e:
        await ledger.aclose()
        raise CommandError(f"cannot reach the cluster: {e}", exit_code=3) from None
    return ledger


async def _reconcile(settings: Settings, as_json: bool) -> int:
    ledger = await open_cluster_ledger(settings)
    across: ClusterRecordReport | None = None
    try:
        if settings.database_url:
            # The archiver trims what it recorded: the logs' history is the record's part too.
            pool = await open_record(settings.database_url)
            try:
                recorded = await recorded_entries(pool, ledger.keys)
                report = await reconcile_cluster(ledger, recorded)
                across = await reconcile_cluster_record(ledger, pool, report)
            finally:
                await pool.close()
        else:
            report = await reconcile_cluster(ledger)
    finally:
        await ledger.aclose()
    problems = [*report.problems, *(across.problems if across else [])]
    ok = not problems
    if as_json:
        doc: dict[str, object] = {
            "ok": ok,
            "problems": problems,
            "totals": report.totals,
            "pending": [
                {"transfer_id": p.transfer_id, "coins": p.coins, "age_ms": p.age_ms}
                for p in report.pending
            ],
        }
        if across:
            doc["record"] = across.to_json()
        print(orjson.dumps(doc).decode())
    else:
        for label, value in report.totals.items():
            print(f"{label.replace('_', ' '):<24}{value:>20,}")
        for p in report.pending[:50]:
            print(f"  pending {p.transfer_id}: {p.coins} coins, {p.age_ms / 1000:.1f} s old")
        if across:
            _print_record(across)
        if ok:
            print("books reconcile: OK (every shard" + (" and the record)" if across else ")"))
        else:
            print(f"books DO NOT reconcile: {len(problems)} problem(s)")
            for problem in problems[:50]:
                print(f"  - {problem}")
    return 0 if ok else 1


def _print_record(across: ClusterRecordReport) -> None:
    record = across.record
    for label, value in (
        ("record transfers", record.recorded),
        ("record postings", record.postings),
        ("record transit", across.transit),
        ("lag entries", record.lag),
    ):
        print(f"{label:<24}{value:>20,}")
    for slot, lag in sorted(across.lag_per_slot.items())[:50]:
        print(f"  lag slot {slot}: {lag} entries not in the record yet")


def cmd_reconcile_cluster(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_reconcile(settings, args.json))


async def _relay(settings: Settings, once: bool) -> int:
    ledger = await open_cluster_ledger(settings)
    relay = Relay(ledger, full_sweep_s=0 if once else 10.0)
    try:
        if once:
            for _ in range(ONCE_ROUNDS_MAX):
                await relay.round()
                if relay.stats.pending == 0:
                    say(f"outboxes empty; {relay.settled} transfers settled")
                    return 0
                await asyncio.sleep(relay.interval_s)
            say(f"{relay.stats.pending} transfers still pending after {ONCE_ROUNDS_MAX} rounds")
            return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        relay.start()
        say(f"relay {relay.consumer} running")
        await stop.wait()
        await relay.stop()
        return 0
    finally:
        await ledger.aclose()


def cmd_relay(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.redis_cluster:
        raise CommandError(f"relay runs in cluster mode only ({env_name('redis_cluster')})")
    return asyncio.run(_relay(settings, args.once))


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    relay = sub.add_parser(
        "relay",
        help="cluster mode: settle debited gifts the fast path left in the outboxes",
        description="Run the relay: credit every transfer debited and not yet credited "
        "(each exactly once, by its transfer id), until stopped. `giftwire serve` runs one "
        "in every server process already.",
        formatter_class=HelpFormatter,
    )
    relay.add_argument("--once", action="store_true", help="drain the outboxes, then exit")
    relay.set_defaults(func=cmd_relay)

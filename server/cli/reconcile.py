"""``giftwire reconcile``: replay the ledger and check every balance."""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson
from redis import exceptions as redis_errors

from server.cli.cluster_ledger import cmd_reconcile_cluster
from server.cli.common import CommandError, HelpFormatter, say
from server.ledger.connection import ledger_redis_url, make_client, running_embedded
from server.ledger.keys import Keys
from server.ledger.reconcile import Report, reconcile
from server.record.connection import open_record, record_database_url
from server.record.reconcile import CrossReport, reconcile_across
from server.settings import Settings, env_name


def _print_report(report: Report | CrossReport) -> None:
    cross = report if isinstance(report, CrossReport) else None
    t = report.ledger.totals if isinstance(report, CrossReport) else report.totals
    rows = [
        ("ledger entries", t.entries),
        ("accounts", t.accounts),
        ("coins bought", t.coins_bought),
        ("  credited", t.coins_credited),
        ("  repaid debt", t.debt_repaid),
        ("coins clawed back", t.coins_clawed),
        ("coins held", t.coins_held),
        ("coins spent on gifts", t.coins_spent),
        ("  diamonds credited", t.diamonds_credited),
        ("  platform share", t.platform_coins),
        ("diamonds held", t.diamonds_held),
        ("diamonds cashed out", t.diamonds_cashed_out),
        ("payouts (cents)", t.payout_cents),
        ("debt outstanding", t.debt_held),
    ]
    if cross:
        r = cross.record
        rows += [
            ("record: transfers", r.recorded),
            ("  trimmed from Redis", r.trimmed),
            ("  left in Redis", r.redis_tail),
            ("  not archived (lag)", r.lag),
        ]
    for label, value in rows:
        print(f"{label:<24}{value:>20,}")
    problems = [*cross.ledger.problems, *cross.problems] if cross else report.problems
    if report.ok:
        print("books reconcile: OK" + (" (Redis and the record)" if cross else ""))
    else:
        print(f"books DO NOT reconcile: {len(problems)} problem(s)")
        for problem in problems[:50]:
            print(f"  - {problem}")


async def _reconcile(settings: Settings, url: str, as_json: bool, database_url: str | None) -> int:
    redis = make_client(url, timeout_s=30)
    last = 0

    def progress(entries: int) -> None:
        nonlocal last
        if not as_json and sys.stderr.isatty() and entries - last >= 50_000:
            last = entries
            print(f"\r  read {entries:,} ledger entries…", end="", file=sys.stderr, flush=True)

    report: Report | CrossReport
    try:
        if database_url:
            # The archiver trims Redis' log: the history is the record's part and the tail.
            pool = await open_record(database_url)
            try:
                report = await reconcile_across(
                    redis,
                    Keys(settings.key_prefix),
                    pool,
                    progress,
                    receipt_ttl_s=settings.limits.receipt_ttl_s,
                )
            finally:
                await pool.close()
        else:
            report = await reconcile(
                redis,
                Keys(settings.key_prefix),
                progress,
                receipt_ttl_s=settings.limits.receipt_ttl_s,
            )
    finally:
        await redis.aclose()
    if last:
        print(file=sys.stderr)
    if as_json:
        sys.stdout.write(orjson.dumps(report.to_json()).decode() + "\n")
    else:
        _print_report(report)
    return 0 if report.ok else 1


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    if settings.redis_cluster:
        return cmd_reconcile_cluster(args, settings)
    if not settings.redis_url:
        redis_dir = settings.data_dir / "redis"
        if running_embedded(redis_dir):
            say(f"reconciling the running demo's Redis ({redis_dir})")
        else:
            # No giftwire is running on this data folder: read its AOF with a Redis of our own.
            say(f"no giftwire running on {redis_dir}: reading its data with a private Redis")
    try:
        with (
            ledger_redis_url(settings.redis_url, settings.data_dir) as url,
            record_database_url(
                settings.database_url, settings.redis_url, settings.data_dir
            ) as database_url,
        ):
            return asyncio.run(_reconcile(settings, url, args.json, database_url))
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as e:
        where = (settings.redis_url or "").split("@")[-1]
        raise CommandError(
            f"cannot reach Redis at {where} ({e}): start it, or fix {env_name('redis_url')}",
            exit_code=3,
        ) from None


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rec = sub.add_parser(
        "reconcile",
        help="replay the ledger and check every balance",
        description="Replay the ledger and check every balance against it; exit 1 on any "
        "mismatch. With GIFTWIRE_REDIS_URL unset: the demo's Redis (started for the check "
        "if the demo is not running). With a durable record (GIFTWIRE_DATABASE_URL, or the "
        "demo's embedded PostgreSQL): the record's part of the history, then Redis' log, "
        "and both stores checked against each other.",
        formatter_class=HelpFormatter,
    )
    rec.add_argument("--json", action="store_true", help="one JSON object on stdout")
    rec.set_defaults(func=cmd_reconcile)

"""``giftwire`` commands: serve, demo, token, reconcile, settings."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence

import orjson

from server.ledger.connection import ledger_redis_url, make_client
from server.ledger.keys import Keys
from server.ledger.reconcile import Report, reconcile
from server.record.commands import add_record_commands
from server.record.connection import open_record, record_database_url
from server.record.reconcile import CrossReport, reconcile_across
from server.settings import Settings, SettingsError, load_settings, settings_table
from server.web.commands import add_commands


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
                report = await reconcile_across(redis, Keys(settings.key_prefix), pool, progress)
            finally:
                await pool.close()
        else:
            report = await reconcile(redis, Keys(settings.key_prefix), progress)
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
    with (
        ledger_redis_url(settings.redis_url, settings.data_dir) as url,
        record_database_url(settings.database_url, settings.redis_url, settings.data_dir) as db,
    ):
        return asyncio.run(_reconcile(settings, url, args.json, db))


def cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    if args.markdown:
        print("| variable | default | meaning |\n|---|---|---|")
        for name, default, meaning in settings_table():
            print(f"| `{name}` | {default and f'`{default}`'} | {meaning} |")
        return 0
    for name, default, meaning in settings_table():
        print(f"{name:<36}{default:<14}{meaning}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="giftwire", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("reconcile", help="replay the ledger and check every balance")
    rec.add_argument("--json", action="store_true", help="one JSON object on stdout")
    rec.set_defaults(func=cmd_reconcile)
    st = sub.add_parser("settings", help="list every GIFTWIRE_* setting and its default")
    st.add_argument("--markdown", action="store_true", help="as the README's table")
    st.set_defaults(func=cmd_settings)
    add_commands(sub)
    add_record_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    func: Callable[[argparse.Namespace, Settings], int] = args.func
    try:
        return func(args, settings)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

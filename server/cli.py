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
from server.settings import Settings, SettingsError, load_settings, settings_table
from server.web.commands import add_commands


def _print_report(report: Report) -> None:
    t = report.totals
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
    for label, value in rows:
        print(f"{label:<24}{value:>20,}")
    if report.ok:
        print("books reconcile: OK")
    else:
        print(f"books DO NOT reconcile: {len(report.problems)} problem(s)")
        for problem in report.problems[:50]:
            print(f"  - {problem}")


async def _reconcile(settings: Settings, url: str, as_json: bool) -> int:
    redis = make_client(url, timeout_s=30)
    last = 0

    def progress(entries: int) -> None:
        nonlocal last
        if not as_json and sys.stderr.isatty() and entries - last >= 50_000:
            last = entries
            print(f"\r  read {entries:,} ledger entries…", end="", file=sys.stderr, flush=True)

    try:
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
    with ledger_redis_url(settings.redis_url, settings.data_dir) as url:
        return asyncio.run(_reconcile(settings, url, args.json))


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

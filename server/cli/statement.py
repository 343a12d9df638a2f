"""``giftwire statement``: a creator's earnings for a month or a year, from the record."""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson

from server.cli.common import CommandError, HelpFormatter
from server.domain.accounts import is_valid_id
from server.domain.errors import RequestError
from server.record.connection import open_record, record_database_url
from server.record.statements import creator_statement, parse_period
from server.settings import Settings, env_name


async def _statement(database_url: str, settings: Settings, args: argparse.Namespace) -> int:
    period = parse_period(args.month, args.year)
    pool = await open_record(database_url)
    try:
        statement = await creator_statement(
            pool, args.creator, period, settings.economics.cents_per_100_diamonds
        )
    finally:
        await pool.close()
    if args.csv:
        sys.stdout.write(statement.to_csv())
    else:
        sys.stdout.write(orjson.dumps(statement.to_json(), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    return 0


def cmd_statement(args: argparse.Namespace, settings: Settings) -> int:
    if not is_valid_id(args.creator):
        raise CommandError("--creator must be a user id")
    try:
        parse_period(args.month, args.year)
    except RequestError as e:
        raise CommandError(e.message) from None
    with record_database_url(settings.database_url, settings.redis_url, settings.data_dir) as url:
        if url is None:
            raise CommandError(f"set {env_name('database_url')} to the record's PostgreSQL")
        return asyncio.run(_statement(url, settings, args))


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    statement = sub.add_parser(
        "statement",
        help="a creator's earnings for a month or a year",
        description="Gifts received per stream and per day (--month) or per month (--year, "
        "for tax), in diamonds and cash value, with the cash-outs and payouts, from the "
        "durable record (UTC).",
        formatter_class=HelpFormatter,
    )
    statement.add_argument("--creator", required=True, help="the creator's user id")
    period = statement.add_mutually_exclusive_group(required=True)
    period.add_argument("--month", help="YYYY-MM (UTC): per stream and per day")
    period.add_argument("--year", help="YYYY (UTC): per stream and per month, for tax")
    statement.add_argument("--csv", action="store_true", help="CSV instead of JSON")
    statement.set_defaults(func=cmd_statement)

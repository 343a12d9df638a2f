"""Command line of the terminal client: ``python -m client_demo viewer|creator``.

Exit status: 0 done; 1 some gift (or a creator's battle or stage action) was refused, or
left without an answer; 2 the server
refused the connection (bad token, unknown stream) or could not be reached; 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re

from client_demo.creator import (
    Creator,
    battle_answer,
    battle_end,
    battle_invite,
    end_stream,
    stage_change,
    start_stream,
)
from client_demo.output import Printer
from client_demo.viewer import GiftCommand, Viewer, parse_gift
from client_demo.wire import EXIT_CANNOT_CONNECT, EXIT_OK, EXIT_REFUSED_GIFTS, ConnectOptions

TOKEN_ENV = "GIFTWIRE_TOKEN"
URL_ENV = "GIFTWIRE_URL"
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
ID_PREFIX_LENGTH_MAX = 48  # leaves room for "-" and a counter within the 64 of an id


def _stream_id(text: str) -> str:
    if not _ID.fullmatch(text):
        raise argparse.ArgumentTypeError("an id is 1-64 of A-Z a-z 0-9 _ . : -")
    return text


def _id_prefix(text: str) -> str:
    if not _ID.fullmatch(text) or len(text) > ID_PREFIX_LENGTH_MAX:
        raise argparse.ArgumentTypeError(f"1-{ID_PREFIX_LENGTH_MAX} of A-Z a-z 0-9 _ . : -")
    return text


def _gift(text: str) -> GiftCommand:
    try:
        return parse_gift(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError("a positive integer")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a number of seconds") from None
    if not 0 < value < 10**7:
        raise argparse.ArgumentTypeError("a positive number of seconds")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get(URL_ENV, "ws://127.0.0.1:8000"),
        help=f"server, e.g. ws://127.0.0.1:8000 (default: ${URL_ENV} or that)",
    )
    parser.add_argument("--stream", type=_stream_id, default="demo", help="stream id")
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        help=f"access token (default: ${TOKEN_ENV}, which keeps it out of `ps`)",
    )
    parser.add_argument(
        "--format", choices=["json", "msgpack"], default="json", help="wire format (default json)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object a line")
    parser.add_argument("--verbose", action="store_true", help="also print stats and top lists")
    parser.add_argument("--events", type=_positive, metavar="N", help="exit after N gifts")
    parser.add_argument("--duration", type=_seconds, metavar="S", help="exit after S seconds")
    parser.add_argument(
        "--retries",
        type=int,
        default=10,
        help="reconnection attempts in a row before giving up (default 10)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client_demo", description="giftwire's terminal client"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    viewer = sub.add_parser("viewer", help="join a stream, show its events, send gifts")
    _common(viewer)
    viewer.add_argument(
        "--send",
        type=_gift,
        action="append",
        default=[],
        metavar="GIFT[:N]",
        help="send this gift first (repeatable), e.g. --send rose:3",
    )
    viewer.add_argument(
        "--no-stdin", action="store_true", help="do not read gift commands from standard input"
    )
    viewer.add_argument(
        "--follow", action="store_true", help="keep showing events after the input is done"
    )
    viewer.add_argument(
        "--id-prefix",
        type=_id_prefix,
        help="client ids are PREFIX-1, PREFIX-2, …: run a script again with "
        "the same prefix and no gift is sent twice",
    )
    viewer.add_argument(
        "--rate",
        type=float,
        default=10.0,
        metavar="GIFTS_PER_S",
        help="pace sends (default 10, the server's default; 0: no pacing)",
    )

    creator = sub.add_parser("creator", help="print the gift feed; start or end the stream")
    _common(creator)
    creator.add_argument(
        "--since",
        type=int,
        metavar="SEQ",
        help="first print every gift after SEQ (0: from the start)",
    )
    creator.add_argument("--start", action="store_true", help="start the stream first")
    creator.add_argument("--title", default="", help="title for --start")
    creator.add_argument("--end", action="store_true", help="end the stream and exit")
    creator.add_argument("--invite", type=_stream_id, metavar="STREAM", help="invite a battle")
    creator.add_argument(
        "--battle-seconds", type=_positive, metavar="S", help="length of the invited battle"
    )
    creator.add_argument(
        "--accept", type=_stream_id, metavar="STREAM", help="accept STREAM's battle invitation"
    )
    creator.add_argument(
        "--decline", type=_stream_id, metavar="STREAM", help="decline STREAM's invitation"
    )
    creator.add_argument("--end-battle", action="store_true", help="end the running battle")
    creator.add_argument(
        "--guest", type=_stream_id, action="append", default=[], metavar="USER",
        help="invite USER on stage (repeatable)",
    )  # fmt: skip
    creator.add_argument(
        "--remove-guest", type=_stream_id, action="append", default=[], metavar="USER",
        help="take USER off the stage (repeatable)",
    )  # fmt: skip
    return parser


async def _creator_actions(args: argparse.Namespace, out: Printer) -> bool:
    """The battle and stage actions asked for, in order; False when one was refused."""
    url, token, stream = args.url, args.token, args.stream
    ok = True
    for guest in args.guest:
        ok = await stage_change(url, token, stream, guest, True, out) and ok
    for guest in args.remove_guest:
        ok = await stage_change(url, token, stream, guest, False, out) and ok
    if args.invite:
        ok = await battle_invite(url, token, stream, args.invite, args.battle_seconds, out) and ok
    for from_stream, accept in ((args.accept, True), (args.decline, False)):
        if from_stream:
            ok = await battle_answer(url, token, stream, from_stream, accept, out) and ok
    if args.end_battle:
        ok = await battle_end(url, token, stream, out) and ok
    return ok


async def _run(args: argparse.Namespace, out: Printer) -> int:
    options = ConnectOptions(
        url=args.url,
        stream_id=args.stream,
        token=args.token,
        fmt=args.format,
        retries=max(0, args.retries),
        duration_s=args.duration,
    )
    if args.command == "viewer":
        viewer = Viewer(
            options,
            out,
            sends=args.send,
            read_stdin=not args.no_stdin,
            follow=args.follow,
            events_max=args.events,
            id_prefix=args.id_prefix,
            gifts_per_s=args.rate,
        )
        return await viewer.run()
    try:
        if args.end:
            ended = await end_stream(args.url, args.token, args.stream, out)
            return EXIT_OK if ended else EXIT_CANNOT_CONNECT
        if args.start and not await start_stream(
            args.url, args.token, args.stream, args.title, out
        ):
            return EXIT_CANNOT_CONNECT
        if not await _creator_actions(args, out):
            return EXIT_REFUSED_GIFTS
    except OSError as e:
        out.local("unreachable", f"cannot reach {args.url}: {e}", reason=str(e))
        return EXIT_CANNOT_CONNECT
    creator = Creator(options, out, since=args.since, events_max=args.events)
    return await creator.run()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.token:
        parser.error(f"a token is needed: --token or ${TOKEN_ENV}")
    if args.command == "creator" and args.since is not None and args.since < 0:
        parser.error("--since must be 0 or more")
    out = Printer(json_lines=args.json, verbose=args.verbose)
    try:
        return asyncio.run(_run(args, out))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # a reader that went away before the printer noticed
        return 0

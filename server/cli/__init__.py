"""The ``giftwire`` command: one module per subcommand, wired here.

Every command loads its settings once (paths absolute from then on) and reports what stops
it in one line with the fix, never with a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from server.cli import (
    archive,
    catalog,
    cluster_ledger,
    demo,
    reconcile,
    serve,
    show_settings,
    statement,
    tokens,
)
from server.cli.common import CommandError, HelpFormatter
from server.domain.errors import GiftwireError
from server.settings import Settings, SettingsError, load_settings

DESCRIPTION = "giftwire: a real-time gifting server for live streams."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="giftwire", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (
        serve,
        demo,
        tokens,
        reconcile,
        archive,
        statement,
        show_settings,
        catalog,
        cluster_ledger,
    ):
        command.add_parser(sub)
    return parser


def _quiet_stdout() -> None:
    """The reader of stdout went away (``| head``): drop whatever is still buffered."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace, Settings], int] = args.func
    try:
        settings = load_settings()
        code = func(args, settings)
        sys.stdout.flush()  # inside the try: a closed pipe shows up here, not at exit
        return code
    except SettingsError as e:
        print(e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except CommandError as e:
        print(f"giftwire: {e}", file=sys.stderr)
        return e.exit_code
    except GiftwireError as e:  # e.g. the embedded redis-server would not start
        print(f"giftwire: {e}", file=sys.stderr)
        return 2


__all__ = ["CommandError", "build_parser", "main"]

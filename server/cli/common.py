"""What every command shares: one-line errors, notices on stderr, the help layout."""

from __future__ import annotations

import argparse
import sys

from server.domain.errors import GiftwireError
from server.settings import Settings, env_name


class CommandError(GiftwireError):
    """A command cannot go on. The message is one line that says what to do about it."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def refuse_cluster(settings: Settings, command: str) -> None:
    """Commands that read or write the ledger as a single-node layout cannot run on a
    cluster yet (``docs/ledger.md``, "Redis Cluster", Status)."""
    if settings.redis_cluster:
        raise CommandError(
            f"{command} is not yet supported on a Redis Cluster "
            f"({env_name('redis_cluster')} is set)"
        )


def say(message: str) -> None:
    """A notice for the person at the terminal (stderr, so that stdout stays parseable)."""
    print(f"giftwire: {message}", file=sys.stderr, flush=True)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default; flags say ``off``, and options without a
    default (``None``) say in their own words what happens when they are left out."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)
        # argparse sizes the first column by the options alone, not the subcommands:
        # without a floor "reconcile" is longer than the column and its help wraps.
        self._action_max_length = 16

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "%(default)" in text or action.default is argparse.SUPPRESS or action.required:
            return text
        if not action.option_strings or action.default is None:
            return text
        if action.nargs == 0:  # store_true and friends
            return f"{text} (default: {'on' if action.default else 'off'})"
        return f"{text} (default: %(default)s)"

"""``giftwire settings``: every ``GIFTWIRE_*`` setting with its default."""

from __future__ import annotations

import argparse

from server.cli.common import HelpFormatter
from server.settings import Settings, settings_table


def cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    if args.markdown:
        print("| variable | default | meaning |\n|---|---|---|")
        for name, default, meaning in settings_table():
            print(f"| `{name}` | {default and f'`{default}`'} | {meaning} |")
        return 0
    for name, default, meaning in settings_table():
        print(f"{name:<36}{default:<26}{meaning}")
    print(f"\ndata folder in use: {settings.data_dir}")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    st = sub.add_parser(
        "settings",
        help="list every GIFTWIRE_* setting and its default",
        description="List every GIFTWIRE_* setting with its default and meaning.",
        formatter_class=HelpFormatter,
    )
    st.add_argument("--markdown", action="store_true", help="as the README's table")
    st.set_defaults(func=cmd_settings)

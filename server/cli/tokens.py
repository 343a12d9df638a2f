"""``giftwire token``: mint an access token for development."""

from __future__ import annotations

import argparse

from server.cli.common import CommandError, HelpFormatter
from server.cli.demo_secrets import with_demo_secrets
from server.domain.accounts import Role, is_valid_id
from server.settings import Settings, env_name
from server.web.auth import issue_token


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    settings = with_demo_secrets(settings)
    if not settings.jwt_secret:
        raise CommandError(
            f"no secret to sign with: set {env_name('jwt_secret')}, or run `giftwire demo` "
            f"once (it keeps its secrets in {settings.data_dir})"
        )
    role = Role(args.role)
    if role is Role.OVERLAY:
        if args.stream is None:
            raise CommandError("an overlay token watches one stream: add --stream STREAM")
        user = args.user or f"overlay:{args.stream}"
    else:
        if args.stream is not None:
            raise CommandError("--stream scopes overlay tokens only: add --role overlay")
        if args.user is None:
            raise CommandError("whose token? add --user USER (the demo's: alice, bob, carol, "
                               "demo_creator)")  # fmt: skip
        user = args.user
    for name, value in (("--user", user), ("--stream", args.stream)):
        if value is not None and not is_valid_id(value):
            raise CommandError(f"{name} must be an id: 1-64 of A-Z a-z 0-9 _ . : -")
    print(
        issue_token(
            settings.jwt_secret, user, role, name=args.name, ttl_s=args.ttl_s, stream=args.stream
        )
    )
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = sub.add_parser(
        "token",
        help="mint an access token for development",
        description="Print an HS256 access token signed with GIFTWIRE_JWT_SECRET, or with the "
        "demo's secret when that is unset.",
        formatter_class=HelpFormatter,
    )
    token.add_argument(
        "--user",
        help="user id (the token's sub); needed except with --role overlay (overlay:STREAM)",
    )
    token.add_argument("--role", choices=[r.value for r in Role], default="viewer", help="role")
    token.add_argument(
        "--stream", help="with --role overlay: the one stream the token may watch (read-only)"
    )
    token.add_argument("--name", help="display name (left out: the user id)")
    token.add_argument("--ttl-s", type=int, default=3600, help="lifetime (s)")
    token.set_defaults(func=cmd_token)

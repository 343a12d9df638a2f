"""The demo's secrets, kept in ``data_dir/demo-secrets.json``.

``giftwire demo`` creates the file once; ``giftwire token`` and the load tools read it when
``GIFTWIRE_JWT_SECRET`` / ``GIFTWIRE_WEBHOOK_SECRET`` are not set, so that everything run
against the demo agrees on the secrets, from any folder.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass
from pathlib import Path

import orjson

from server.cli.common import CommandError
from server.ledger.connection import running_embedded
from server.record.connection import running_embedded_postgres
from server.settings import Settings, load_settings

SECRETS_FILE = "demo-secrets.json"


def secrets_path(settings: Settings) -> Path:
    return settings.data_dir / SECRETS_FILE


def with_demo_secrets(settings: Settings, *, create: bool = False) -> Settings:
    """``settings`` with each secret the environment left empty taken from the file.

    With ``create``, the file is made (random secrets, mode 0600) when it does not exist;
    without, a missing file leaves ``settings`` as they are.
    """
    path = secrets_path(settings)
    if path.exists():
        try:
            stored = orjson.loads(path.read_bytes())
            jwt_secret, webhook_secret = str(stored["jwt_secret"]), str(stored["webhook_secret"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise CommandError(
                f"{path} is damaged: delete it and start `giftwire demo` again"
            ) from None
    elif create:
        jwt_secret, webhook_secret = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        stored = {"jwt_secret": jwt_secret, "webhook_secret": webhook_secret}
        path.write_bytes(orjson.dumps(stored, option=orjson.OPT_INDENT_2))
        path.chmod(0o600)
    else:
        return settings
    return dataclasses.replace(
        settings,
        jwt_secret=settings.jwt_secret or jwt_secret,
        webhook_secret=settings.webhook_secret or webhook_secret,
    )


@dataclass(frozen=True, slots=True)
class ClientSecrets:
    """What a tool that drives a server on this machine needs to know, found the way
    ``giftwire token`` finds it: the environment first, then the demo's data folder."""

    jwt_secret: str
    webhook_secret: str
    redis_url: str | None
    """``GIFTWIRE_REDIS_URL``, else the running demo's embedded Redis, else None."""
    database_url: str | None
    """``GIFTWIRE_DATABASE_URL``, else the running demo's embedded PostgreSQL, else None."""
    key_prefix: str
    source: str
    """Where the secrets came from, to say so in an error message."""


def client_secrets() -> ClientSecrets:
    """Raise ``SettingsError`` (one line per bad variable) when the environment is invalid."""
    settings = load_settings()
    filled = with_demo_secrets(settings)
    from_file = filled.jwt_secret != settings.jwt_secret
    redis_url = settings.redis_url or running_embedded(settings.data_dir / "redis")
    database_url = settings.database_url or running_embedded_postgres(
        settings.data_dir / "postgres"
    )
    return ClientSecrets(
        jwt_secret=filled.jwt_secret,
        webhook_secret=filled.webhook_secret,
        redis_url=redis_url,
        database_url=database_url,
        key_prefix=settings.key_prefix,
        source=str(secrets_path(settings)) if from_file else "the environment",
    )

"""Settings from GIFTWIRE_* variables: parsing, every refusal, and every limit as a setting."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from server import settings as settings_module
from server.domain.limits import Limits
from server.domain.money import Economics
from server.ledger.keys import DEFAULT_PREFIX
from server.settings import (
    Settings,
    SettingsError,
    default_data_dir,
    env_name,
    load_settings,
    settings_table,
)

LIMIT_FIELDS = [f.name for f in dataclasses.fields(Limits)]
ZERO_MEANS_NONE = {
    "daily_spend_coins_max", "cashout_diamonds_min", "monthly_spend_coins_max",
    "spend_raise_cooling_off_s", "minor_daily_spend_coins_max", "minor_monthly_spend_coins_max",
    "payout_hold_days",
}  # fmt: skip


def test_no_variables_give_the_defaults() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.redis_url is None and settings.key_prefix == DEFAULT_PREFIX
    assert settings.limits == Limits()
    assert settings.economics == Economics()


def test_empty_values_are_ignored() -> None:
    assert load_settings({"GIFTWIRE_BATCH_MS": "", "GIFTWIRE_DEMO_PAGES": ""}) == Settings()


def test_other_variables_are_ignored() -> None:
    assert load_settings({"BATCH_MS": "0", "GIFTWIRE": "x", "giftwire_batch_ms": "0"}) == Settings()


def test_variables_are_parsed_by_the_type_of_their_setting(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text("{}")
    settings = load_settings(
        {
            "GIFTWIRE_REDIS_URL": "redis://10.0.0.5:6380/2",
            "GIFTWIRE_DATA_DIR": "/srv/giftwire",
            "GIFTWIRE_KEY_PREFIX": "prod:",
            "GIFTWIRE_JWT_SECRET": "s" * 32,
            "GIFTWIRE_WEBHOOK_SECRET": "whsec",
            "GIFTWIRE_CATALOG_PATH": str(catalog),
            "GIFTWIRE_ALLOWED_ORIGINS": " https://a.example, https://b.example ,, ",
            "GIFTWIRE_DEMO_PAGES": "off",
            "GIFTWIRE_BATCH_MS": "25",
            "GIFTWIRE_HOT_ROOM_EVENTS_PER_S": "40",
            "GIFTWIRE_STATS_INTERVAL_S": "0.5",
            "GIFTWIRE_CREATOR_SHARE_BPS": "7000",
            "GIFTWIRE_CENTS_PER_100_DIAMONDS": "80",
            "GIFTWIRE_LOG_LEVEL": "DEBUG",
        }
    )
    assert settings == Settings(
        redis_url="redis://10.0.0.5:6380/2",
        data_dir=Path("/srv/giftwire"),
        key_prefix="prod:",
        jwt_secret="s" * 32,
        webhook_secret="whsec",
        catalog_path=catalog,
        allowed_origins=("https://a.example", "https://b.example"),
        demo_pages=False,
        batch_ms=25,
        hot_room_events_per_s=40,
        stats_interval_s=0.5,
        creator_share_bps=7_000,
        cents_per_100_diamonds=80,
        log_level="DEBUG",
    )
    assert settings.economics == Economics(7_000, 80)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        *[("1", True), ("true", True), ("YES", True), ("On", True)],
        *[("0", False), ("false", False), ("no", False), ("OFF", False)],
    ],
)
def test_booleans(raw: str, value: bool) -> None:
    assert load_settings({"GIFTWIRE_DEMO_PAGES": raw}).demo_pages is value


@pytest.mark.parametrize("url", ["redis://h:1/0", "rediss://h:1/0", "unix:///run/redis.sock"])
def test_redis_url_schemes(url: str) -> None:
    assert load_settings({"GIFTWIRE_REDIS_URL": url}).redis_url == url


def test_overrides_win_over_the_environment() -> None:
    settings = load_settings({"GIFTWIRE_KEY_PREFIX": "env:"}, key_prefix="arg:")
    assert settings.key_prefix == "arg:"


@pytest.mark.parametrize("name", LIMIT_FIELDS)
def test_every_limit_is_a_setting(name: str) -> None:
    default = getattr(Limits(), name)
    value = default * 2 if default else 7
    settings = load_settings({env_name(name): str(value)})
    assert getattr(settings.limits, name) == value
    assert env_name(name) == "GIFTWIRE_" + name.upper()


@pytest.mark.parametrize("name", sorted(ZERO_MEANS_NONE))
def test_limits_where_zero_means_none_accept_zero(name: str) -> None:
    assert getattr(load_settings({env_name(name): "0"}).limits, name) == 0


BAD_VALUES = [
    ("GIFTWIRE_DEMO_PAGES", "maybe", "expected true or false"),
    ("GIFTWIRE_BATCH_MS", "fast", "invalid literal for int()"),
    ("GIFTWIRE_BATCH_MS", "2.5", "invalid literal for int()"),
    ("GIFTWIRE_STATS_INTERVAL_S", "soon", "could not convert string to float"),
    ("GIFTWIRE_LAGGING_S_MAX", "nan", "expected a finite number"),
    ("GIFTWIRE_REDIS_TIMEOUT_S", "inf", "expected a finite number"),
    ("GIFTWIRE_FRAME_BYTES_MAX", "-1", "must not be negative"),
    ("GIFTWIRE_DAILY_SPEND_COINS_MAX", "-5", "must not be negative"),
    ("GIFTWIRE_PIPELINE_CALLS_MAX", "0", "must be positive"),
    ("GIFTWIRE_PIPELINES_IN_FLIGHT_MAX", "0", "must be positive"),
    ("GIFTWIRE_REDIS_TIMEOUT_S", "0", "must be positive"),
    ("GIFTWIRE_GIFTS_PER_S_MAX", "0", "must be positive"),
    ("GIFTWIRE_CREATOR_SHARE_BPS", "10001", "creator_share_bps must be within 0..10000"),
    ("GIFTWIRE_CENTS_PER_100_DIAMONDS", "0", "cents_per_100_diamonds must be within 1..10000"),
    ("GIFTWIRE_REDIS_URL", "localhost:6379", "expected redis://host:port/db"),
    ("GIFTWIRE_REDIS_CLUSTER", "true", "needs GIFTWIRE_REDIS_URL (a cluster node)"),
    ("GIFTWIRE_JWT_SECRET", "short", "use at least 32 characters"),
    ("GIFTWIRE_BATCH_MS", "0", "expected 1..1000"),
    ("GIFTWIRE_BATCH_MS", "1001", "expected 1..1000"),
    ("GIFTWIRE_LOG_LEVEL", "verbose", "expected debug, info, warning or error"),
    ("GIFTWIRE_CATALOG_PATH", "/no/such/catalog.json", "no such file /no/such/catalog.json"),
    ("GIFTWIRE_FRAME_BYTES_MAX", "255", "at least 256"),
    ("GIFTWIRE_STREAMS_PER_CREATOR_MAX", "1000001", "at most 1000000"),
    ("GIFTWIRE_GC_FREEZE_EVERY_CONNECTIONS", "-1", "0 (never) or more"),
    ("GIFTWIRE_REQUEST_TIMEOUT_S", "0", "must be positive"),
    ("GIFTWIRE_PENDING_REQUESTS_PER_IP_MAX", "0", "must be positive"),
]


@pytest.mark.parametrize(("variable", "raw", "message"), BAD_VALUES)
def test_each_bad_value_is_named_with_its_fix(variable: str, raw: str, message: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings({variable: raw})
    text = str(refused.value)
    assert text.startswith("invalid settings:")
    assert message in text
    # Each line names the variable, except the economics' own checks, which name the field.
    assert variable in text or variable.removeprefix("GIFTWIRE_").lower() in text


def test_cluster_mode_takes_a_node_url_and_a_prefix_without_braces() -> None:
    node = {"GIFTWIRE_REDIS_URL": "redis://10.0.0.7:7000/0"}
    assert load_settings({**node, "GIFTWIRE_REDIS_CLUSTER": "true"}).redis_cluster
    assert not load_settings(node).redis_cluster
    with pytest.raises(SettingsError, match="GIFTWIRE_KEY_PREFIX: no braces in cluster mode"):
        load_settings({**node, "GIFTWIRE_REDIS_CLUSTER": "true", "GIFTWIRE_KEY_PREFIX": "{gw}:"})


@pytest.mark.parametrize("name", sorted(set(LIMIT_FIELDS) - ZERO_MEANS_NONE))
def test_every_other_limit_must_be_positive(name: str) -> None:
    with pytest.raises(SettingsError, match=f"{env_name(name)}: must be positive"):
        load_settings({env_name(name): "0"})


def test_every_bad_value_of_a_kind_is_listed_at_once() -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(
            {
                "GIFTWIRE_DEMO_PAGES": "maybe",
                "GIFTWIRE_BATCH_MS": "fast",
                "GIFTWIRE_SEND_QUEUE_FRAMES_MAX": "-3",
            }
        )
    lines = str(refused.value).splitlines()[1:]
    assert len(lines) == 3
    assert [line.split("=")[0].split(":")[0].strip() for line in lines] == [
        "GIFTWIRE_DEMO_PAGES",
        "GIFTWIRE_BATCH_MS",
        "GIFTWIRE_SEND_QUEUE_FRAMES_MAX",
    ]
    with pytest.raises(SettingsError) as refused:
        load_settings(
            {
                "GIFTWIRE_REDIS_URL": "localhost",
                "GIFTWIRE_JWT_SECRET": "short",
                "GIFTWIRE_LOG_LEVEL": "loud",
            }
        )
    assert len(str(refused.value).splitlines()) == 4


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


def test_the_table_lists_every_setting_with_its_default() -> None:
    rows = {name: default for name, default, _ in settings_table()}
    scalars = [f.name for f in dataclasses.fields(Settings) if f.name != "limits"]
    assert set(rows) == {env_name(name) for name in scalars + LIMIT_FIELDS}
    assert rows["GIFTWIRE_KEY_PREFIX"] == DEFAULT_PREFIX
    assert rows["GIFTWIRE_FRAME_BYTES_MAX"] == str(Limits().frame_bytes_max)


def test_durability_settings_are_checked() -> None:
    from server.ledger.redis_config import Durability

    assert load_settings({}).durability_mode is Durability.EVERYSEC
    settings = load_settings(
        {"GIFTWIRE_DURABILITY": "always+replica", "GIFTWIRE_DURABILITY_REPLICAS": "2"}
    )
    assert settings.durability_mode is Durability.ALWAYS_REPLICA
    assert settings.durability_replicas == 2
    for env, needle in (
        ({"GIFTWIRE_DURABILITY": "sometimes"}, "GIFTWIRE_DURABILITY: expected everysec"),
        ({"GIFTWIRE_DURABILITY_REPLICAS": "0"}, "GIFTWIRE_DURABILITY_REPLICAS"),
        ({"GIFTWIRE_DURABILITY_WAIT_MS": "5000"}, "GIFTWIRE_DURABILITY_WAIT_MS"),
        ({"GIFTWIRE_REDIS_CHECK_INTERVAL_S": "0"}, "GIFTWIRE_REDIS_CHECK_INTERVAL_S"),
    ):
        with pytest.raises(SettingsError, match=needle):
            load_settings(env)


def test_the_cluster_subscribe_role_is_checked() -> None:
    cluster = {"GIFTWIRE_REDIS_URL": "redis://n1:7000/0", "GIFTWIRE_REDIS_CLUSTER": "true"}
    assert load_settings(cluster).cluster_subscribe == "primary"
    replica = load_settings({**cluster, "GIFTWIRE_CLUSTER_SUBSCRIBE": "replica"})
    assert replica.cluster_subscribe == "replica"
    for env, needle in (
        ({**cluster, "GIFTWIRE_CLUSTER_SUBSCRIBE": "replicas"},
         "GIFTWIRE_CLUSTER_SUBSCRIBE: expected primary or replica"),
        ({"GIFTWIRE_CLUSTER_SUBSCRIBE": "replica"},
         "GIFTWIRE_CLUSTER_SUBSCRIBE: needs GIFTWIRE_REDIS_CLUSTER=true"),
    ):  # fmt: skip
        with pytest.raises(SettingsError, match=needle):
            load_settings(env)


def test_the_embedded_redis_defaults_to_fsync_on_every_write() -> None:
    from server.ledger.redis_config import Durability

    assert load_settings({}).for_embedded_redis().durability_mode is Durability.ALWAYS
    external = load_settings({"GIFTWIRE_REDIS_URL": "redis://r:6379/0"})
    assert external.for_embedded_redis() == external
    assert external.durability_mode is Durability.EVERYSEC  # warnings only
    chosen = load_settings({"GIFTWIRE_DURABILITY": "everysec"})
    assert chosen.for_embedded_redis().durability_mode is Durability.EVERYSEC


# Paths: absolute once loaded, the same from any folder.

REPO = Path(__file__).resolve().parents[2]


def test_the_default_data_dir_is_the_checkouts_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings({}).data_dir == REPO / "var" / "giftwire"
    assert not (tmp_path / "var").exists()


def test_a_relative_data_dir_is_made_absolute_from_the_starting_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings({"GIFTWIRE_DATA_DIR": "here/data"})
    assert settings.data_dir == tmp_path.resolve() / "here" / "data"
    assert settings.data_dir.is_absolute()


def test_home_in_a_path_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_settings({"GIFTWIRE_DATA_DIR": "~/gw"}).data_dir == tmp_path.resolve() / "gw"


def test_a_relative_catalog_path_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "catalog.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    settings = load_settings({"GIFTWIRE_CATALOG_PATH": "catalog.json"})
    assert settings.catalog_path == tmp_path.resolve() / "catalog.json"


def test_an_override_path_is_made_absolute_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings({}, data_dir=Path("d")).data_dir == tmp_path.resolve() / "d"


def test_without_a_checkout_the_data_dir_is_the_xdg_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings_module, "CHECKOUT", tmp_path / "site-packages")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    xdg = tmp_path / "xdg"
    assert default_data_dir({"XDG_DATA_HOME": str(xdg)}) == xdg / "giftwire"
    # The XDG spec says to ignore a relative XDG_DATA_HOME.
    assert default_data_dir({"XDG_DATA_HOME": "rel"}) == tmp_path / "home/.local/share/giftwire"
    assert default_data_dir({}) == tmp_path / "home/.local/share/giftwire"


def test_the_table_shows_a_data_dir_default_that_is_the_same_on_every_machine() -> None:
    rows = {name: default for name, default, _ in settings_table()}
    assert rows["GIFTWIRE_DATA_DIR"] == "<checkout>/var/giftwire"

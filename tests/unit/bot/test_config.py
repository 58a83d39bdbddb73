"""Configuration loading, environment overrides, error messages, and the command-sync state."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import discord
import pytest
from discord import app_commands

from bot.app import sync as command_sync
from bot.ui.commands import StyleCommands
from bot.config import Config, ConfigError, DeliveryConfig, PresetConfig
from bot.config_loading import load_config, read_token

pytestmark = pytest.mark.timeout(60)

from conftest import REPO  # noqa: E402
EXAMPLE = REPO / "config.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def flat_keys(obj, prefix: str = "") -> set[str]:
    keys = set()
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys |= flat_keys(value, f"{prefix}{f.name}.")
        elif isinstance(value, dict):
            for name, preset in value.items():
                keys |= flat_keys(preset, f"{prefix}{f.name}.{name}.")
        else:
            keys.add(prefix + f.name)
    return keys


def test_the_example_file_documents_every_option_with_its_default():
    example = load_config(EXAMPLE, env={})
    assert example == Config()
    text = EXAMPLE.read_text()
    data = tomllib.loads(text)
    for key in flat_keys(Config()):
        *tables, name = key.split(".")
        node = data
        for table in tables:
            node = node[table]
        assert name in node, f"config.example.toml does not set {key}"
        if "presets" not in tables:  # the preset tables share one comment above them
            assert re.search(rf"^#.*\n{re.escape(name)}\s*=", text, re.M), f"{key} has no comment above it"
    assert "DISCORD_TOKEN" in text and "NSTBOT_" in text


def test_defaults_and_file_values(tmp_path):
    assert load_config(None, env={}) == Config()
    path = write(tmp_path, """
[discord]
api_base = "http://127.0.0.1:8080/api/v10"
dev_guild_ids = [123, 456]

[engine]
weights = "random"
backbone = "vgg16"
max_size = 768

[engine.presets.fast]
steps = 60

[limits]
queue_max = 5
""")
    config = load_config(path, env={})
    assert config.discord.api_base == "http://127.0.0.1:8080/api/v10"
    assert config.discord.dev_guild_ids == (123, 456)
    assert (config.engine.weights, config.engine.backbone, config.engine.max_size) == ("random", "vgg16", 768)
    assert config.engine.presets["fast"] == PresetConfig(size=384, steps=60, scales=2)  # size/scales kept
    assert config.engine.presets["best"] == Config().engine.presets["best"]
    assert config.limits.queue_max == 5 and config.limits.per_user_waiting == 2


def test_environment_overrides_any_key(tmp_path):
    path = write(tmp_path, "[limits]\nqueue_max = 5\n")
    env = {
        "NSTBOT_ENGINE__WEIGHTS": "random",
        "NSTBOT_LIMITS__QUEUE_MAX": "7",
        "NSTBOT_PROGRESS__EDIT_INTERVAL_S": "1.5",
        "NSTBOT_DISCORD__DEV_GUILD_IDS": "11, 22",
        "NSTBOT_ENGINE__PRESETS__BEST__SIZE": "640",
        "NSTBOT_SHUTDOWN__RUNNING_JOBS": "Cancel",
        "NSTBOT_STORAGE__PATH": str(tmp_path / "db.sqlite3"),
        "UNRELATED": "x",
    }
    config = load_config(path, env=env)
    assert config.engine.weights == "random"
    assert config.limits.queue_max == 7
    assert config.progress.edit_interval_s == 1.5
    assert config.discord.dev_guild_ids == (11, 22)
    assert config.engine.presets["best"].size == 640
    assert config.shutdown.running_jobs == "cancel"
    assert config.storage.state_dir == tmp_path


@pytest.mark.parametrize("text, env, message", [
    ("[limits]\nqueue_max = 'many'\n", {}, r"limits\.queue_max must be a whole number of at least 1, not 'many'"),
    ("[limits]\nqueue_max = 0\n", {}, r"limits\.queue_max must be a whole number of at least 1, not 0"),
    ("[limits]\nqueue_maxx = 3\n", {}, r"unknown key limits\.queue_maxx"),
    ("[limit]\nqueue_max = 3\n", {}, r"unknown key limit\b"),
    ("[engine]\nbackbone = 'resnet'\n", {}, r"engine\.backbone must be one of vgg19, vgg16, not 'resnet'"),
    ("[engine]\ndefault_preset = 'huge'\n", {}, r"engine\.default_preset must be one of fast, balanced, best"),
    ("[engine.presets.huge]\nsize = 9\n", {}, r"unknown preset engine\.presets\.huge"),
    ("[engine.presets.fast]\nsize = 9\n", {}, r"engine\.presets\.fast\.size must be a whole number from 16 to 4096"),
    ("[engine]\nweights = '/no/such/file.h5'\n", {}, r"engine\.weights: no weights file"),
    ("[discord]\ntoken = 'abc'\n", {}, r"discord\.token: the token is read only from the DISCORD_TOKEN"),
    ("[discord]\ninteraction_ttl_s = 10\ninteraction_margin_s = 10\n", {}, r"interaction_margin_s must be smaller"),
    ("[discord]\napi_base = 'discord.com'\n", {}, r"discord\.api_base must start with http"),
    ("[discord]\ndev_guild_ids = [1, 'x']\n", {}, r"discord\.dev_guild_ids\[1\] must be a whole number"),
    ("[pool]\ndevices = 'gpu'\n", {}, r"pool\.devices must be auto, cpu or GPU ids"),
    ("[discord]\nshard_ids = [0, 1]\n", {}, r"discord\.shard_ids needs discord\.shard_count"),
    ("[discord]\nshard_count = 4\nshard_ids = [3, 4]\n", {}, r"shard_ids must be below discord\.shard_count \(4\)"),
    ("[discord]\nshard_count = 4\nshard_ids = [1, 1]\n", {}, r"discord\.shard_ids lists a shard twice"),
    ("", {"NSTBOT_DISCORD__CALLS_PER_SECOND": "60"}, r"discord\.calls_per_second must be a whole number from 1 to 50"),
    ("[progress]\nedit_interval_s = true\n", {}, r"progress\.edit_interval_s must be a number"),
    ("", {"NSTBOT_LIMITS__PER_USER_WAITING": "two"},
     r"limits\.per_user_waiting must be a whole number.*\(set by NSTBOT_LIMITS__PER_USER_WAITING\)"),
    ("", {"NSTBOT_LIMITS__NOPE": "1"}, r"unknown key limits\.nope \(set by NSTBOT_LIMITS__NOPE\)"),
    ("", {"NSTBOT_DISCORD__TOKEN": "abc"}, r"read only from DISCORD_TOKEN"),
    ("this is = = not toml", {}, r"is not valid TOML"),
    ("[limits]\nqueue_max = '5'\n", {}, r"limits\.queue_max must be a whole number of at least 1, not '5'"),
    ("[limits]\nqueue_max = 5.0\n", {}, r"limits\.queue_max must be a whole number of at least 1, not 5\.0"),
    ("", {"NSTBOT_LIMITS__QUEUE_MAX": "0"}, r"at least 1, not 0 \(set by NSTBOT_LIMITS__QUEUE_MAX\)$"),
    ("", {"NSTBOT_PROGRESS__EDIT_INTERVAL_S": "inf"}, r"progress\.edit_interval_s must be a number of at least 0\.2"),
    ("", {"NSTBOT_LIMIT__QUEUE_MAX": "3"}, r"unknown key limit \(set by NSTBOT_LIMIT__QUEUE_MAX\) \(known keys: "),
    ("", {"NSTBOT_ENGINE__PRESETS__HUGE__SIZE": "64"},
     r"unknown preset engine\.presets\.huge \(set by NSTBOT_ENGINE__PRESETS__HUGE__SIZE\)"),
    ("", {"NSTBOT_ENGINE__PRESETS": '{"fast": {"size": 64}}'},
     r"engine\.presets must be a table of presets, not .* \(set by NSTBOT_ENGINE__PRESETS\)"),  # never JSON
    ("", {"NSTBOT_LIMITS____QUEUE_MAX": "3"}, r"NSTBOT_LIMITS____QUEUE_MAX: empty key part"),
])
def test_errors_name_the_bad_key(tmp_path, text, env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), env=env)


@pytest.mark.parametrize("text, env", [
    ("[pool]\nray_address = 'ray://head:10001'\n", {}),
    ("", {"NSTBOT_POOL__RAY_ADDRESS": "ray://head:10001"}),
])
def test_ray_client_addresses_are_refused(tmp_path, text, env):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), env=env)
    assert str(caught.value).startswith('pool.ray_address: Ray Client (ray://) is not supported; run the bot on a node '
                                        'of the cluster and use "auto" or "HEAD_IP:6379"')
    assert str(caught.value).endswith("(set by NSTBOT_POOL__RAY_ADDRESS)") == bool(env)
    for address in ("auto", "10.0.0.1:6379", ""):
        assert load_config(None, env={"NSTBOT_POOL__RAY_ADDRESS": address}).pool.ray_address == address


def test_lists_from_the_environment_and_the_file_agree(tmp_path):
    for ids in ("123,456", " 123 , 456 ", "[123, 456]"):
        assert load_config(None, env={"NSTBOT_DISCORD__DEV_GUILD_IDS": ids}).discord.dev_guild_ids == (123, 456)
    assert load_config(None, env={"NSTBOT_DISCORD__DEV_GUILD_IDS": "42"}).discord.dev_guild_ids == (42,)
    sharded = load_config(None, env={"NSTBOT_DISCORD__SHARD_COUNT": "8", "NSTBOT_DISCORD__SHARD_IDS": "4,5,6,7"})
    assert (sharded.discord.shard_count, sharded.discord.shard_ids) == (8, (4, 5, 6, 7))
    assert load_config(None, env={"NSTBOT_DISCORD__DEV_GUILD_IDS": ""}).discord.dev_guild_ids == ()
    with pytest.raises(ConfigError, match=r"discord\.dev_guild_ids must be a list, not '1,2'$"):
        load_config(write(tmp_path, "[discord]\ndev_guild_ids = '1,2'\n"), env={})  # the file has real lists


def test_settings_are_frozen_dataclasses_and_checked_only_when_loaded():
    config = load_config(None, env={"NSTBOT_LOGGING__LEVEL": "debug"})
    assert config.logging.level == "DEBUG"  # choices in any case, kept as spelled in the code
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.limits.queue_max = 3  # type: ignore[misc]
    assert hash(config.limits) == hash(Config().limits)
    assert dataclasses.asdict(config)["engine"]["presets"]["fast"] == {"size": 384, "steps": 120, "scales": 2}
    assert DeliveryConfig(timeout_s=0.2).timeout_s == 0.2  # built in code (tests): not held to the file's bounds


def test_missing_file_and_token():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/no/such/config.toml", env={})
    with pytest.raises(ConfigError, match="DISCORD_TOKEN"):
        read_token({})
    assert read_token({"DISCORD_TOKEN": " abc.def \n"}) == "abc.def"


def test_cli_reports_config_errors_without_a_traceback(tmp_path):
    path = write(tmp_path, "[limits]\nqueue_max = -1\n")
    env = {"PATH": "/usr/bin:/bin", "DISCORD_TOKEN": "secret-token"}
    run = subprocess.run([sys.executable, "-m", "bot", "--config", str(path)], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=60)
    assert run.returncode == 2
    assert "configuration error: limits.queue_max" in run.stderr and "Traceback" not in run.stderr
    ok = subprocess.run([sys.executable, "-m", "bot", "--config", str(EXAMPLE), "--check-config"],
                        capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert ok.returncode == 0 and json.loads(ok.stdout)["limits"]["queue_max"] == 20
    assert "secret-token" not in ok.stdout


# --------------------------------------------------------------------------- command sync state


class FakeTree:
    def __init__(self) -> None:
        self.synced: list[int | None] = []

    def get_commands(self):
        return []

    def copy_global_to(self, *, guild) -> None:
        pass

    async def sync(self, *, guild=None):
        self.synced.append(guild.id if guild is not None else None)
        return []


async def test_global_sync_only_when_definitions_change_or_forced(tmp_path, monkeypatch):
    config = load_config(None, env={"NSTBOT_STORAGE__PATH": str(tmp_path / "state" / "jobs.sqlite3"),
                                    "NSTBOT_DISCORD__DEV_GUILD_IDS": "42"})
    client = type("C", (), {"application_id": 1234})()
    tree = FakeTree()
    digest = {"value": "v1"}
    monkeypatch.setattr(command_sync, "commands_digest", lambda t: digest["value"])

    assert await command_sync.sync_commands(client, tree, config) is True
    assert tree.synced == [42, None]
    state = json.loads((tmp_path / "state" / command_sync.SYNC_STATE_FILE).read_text())
    assert state == {"1234": "v1"}
    assert await command_sync.sync_commands(client, tree, config) is False  # unchanged: guild only
    assert tree.synced == [42, None, 42]
    assert await command_sync.sync_commands(client, tree, config, force=True) is True
    digest["value"] = "v2"
    assert await command_sync.sync_commands(client, tree, config) is True
    assert tree.synced.count(None) == 3


def test_command_digest_follows_the_definitions():
    def digest(config: Config) -> str:
        client = discord.Client(intents=discord.Intents.none())
        tree = app_commands.CommandTree(client)
        scheduler = types.SimpleNamespace(per_guild_waiting=config.limits.per_guild_waiting)  # read by register()
        StyleCommands(config, scheduler=scheduler, starter=None, gatherer=None,  # type: ignore[arg-type]
                      settings=None).register(tree)
        return command_sync.commands_digest(tree)

    base = digest(Config())
    assert base == digest(Config())
    tuned = dataclasses.replace(Config(), engine=dataclasses.replace(
        Config().engine, presets={**Config().engine.presets, "fast": PresetConfig(256, 50, 1)}))
    assert digest(tuned) != base  # preset choices show their size and steps


# --------------------------------------------------------------------------- --check-config and the token


def _check_config(env_extra: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", **env_extra}
    return subprocess.run([sys.executable, "-m", "bot", "--config", str(EXAMPLE), "--check-config"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=60, **kwargs)


@pytest.mark.parametrize("how", ["environment", "pipe"])
def test_check_config_says_the_token_is_set_without_showing_it(how):
    secret = "MTIzNDU2Nzg5.recognisable-SECRET.token-value"
    if how == "environment":
        run = _check_config({"DISCORD_TOKEN": secret})
    else:  # the way the token arrives after main() re-executes itself
        import os

        read_end, write_end = os.pipe()
        os.write(write_end, secret.encode())
        os.close(write_end)
        try:
            run = _check_config({"STYLEBOT_TOKEN_FD": str(read_end)}, pass_fds=(read_end,))
        finally:
            os.close(read_end)
    assert run.returncode == 0, run.stderr
    assert secret not in run.stdout and secret not in run.stderr
    assert "recognisable-SECRET" not in run.stdout + run.stderr
    assert "DISCORD_TOKEN: set" in run.stderr.splitlines()
    json.loads(run.stdout)  # stdout stays the settings alone


@pytest.mark.parametrize("value", [None, "", "   "])
def test_check_config_says_when_the_token_is_not_set(value):
    run = _check_config({} if value is None else {"DISCORD_TOKEN": value})
    assert run.returncode == 0, run.stderr
    assert "DISCORD_TOKEN: not set (the bot needs it to start)" in run.stderr.splitlines()
    assert "DISCORD_TOKEN: set" not in run.stderr

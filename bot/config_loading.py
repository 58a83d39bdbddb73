"""Loading the bot's settings (:mod:`bot.config`): the TOML file, then the ``NSTBOT_*``
environment overrides, validated by pydantic-settings; the token from ``DISCORD_TOKEN`` only.

Every problem is a :class:`~bot.config.ConfigError` whose message names the key, what it
allows, the value, and the variable that set it, if one did.
"""

import dataclasses
import importlib.util
import os
import tomllib
import typing
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Mapping

from pydantic import Field, ValidationError, create_model
from pydantic.fields import FieldInfo
from pydantic_settings import (BaseSettings, EnvSettingsSource, SettingsConfigDict, SettingsError,
                               TomlConfigSettingsSource)

from nst_core.schedule import PRESETS

from bot.config import ENV_PREFIX, TOKEN_ENV, Config, ConfigError, PresetConfig, EnvText, OneOf

__all__ = ["load_config", "read_token"]



_SOURCES: ContextVar[tuple[Any, ...]] = ContextVar("_SOURCES")  # what load_config() reads, in priority order


class _SettingsBase(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", case_sensitive=False,
                                      extra="forbid")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], **defaults: Any) -> tuple[Any, ...]:
        return _SOURCES.get()


# Config's sections as a BaseSettings: what pydantic-settings fills from the file and the environment.
_Settings = create_model("_Settings", __base__=_SettingsBase, **{  # type: ignore[call-overload]
    f.name: (typing.get_type_hints(Config)[f.name], Field(default_factory=f.default_factory))
    for f in dataclasses.fields(Config)})


class _EnvSource(EnvSettingsSource):
    """The ``NSTBOT_<SECTION>__<KEY>`` variables of ``env`` (not necessarily os.environ), marked as such."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._env = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): EnvText(value.strip()) for name, value in self._env.items()
                if name.startswith(ENV_PREFIX) and "__" in name}

    def decode_complex_value(self, field_name: str, field: Any, value: Any) -> Any:
        return value  # never JSON: lists are comma-separated (_env_list), tables are set key by key


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None,
                warnings: list[str] | None = None) -> Config:
    """Read ``path`` (TOML; ``None``: defaults only), apply ``NSTBOT_*`` overrides, validate.

    Problems that do not stop the bot (an ``NSTBOT_`` variable that is not an override) are
    appended to ``warnings`` for the caller to log.
    """
    env = os.environ if env is None else env
    sources: list[Any] = []
    if path is not None:
        path = Path(path)
        if not path.expanduser().exists():
            raise ConfigError(f"config file {path} does not exist")
        if path.expanduser().is_dir():
            raise ConfigError(f"config file {path} cannot be read: Is a directory")
        try:
            sources.append(TomlConfigSettingsSource(_Settings, toml_file=path))
        except OSError as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        data = sources[0].toml_data
        if isinstance(data.get("discord"), dict) and "token" in data["discord"]:
            raise ConfigError(f"discord.token: the token is read only from the {TOKEN_ENV} environment variable; "
                              "remove it from the file")
    overrides = _overrides(env)
    if warnings is not None:
        warnings.extend(_ignored_env(env))
    reset = _SOURCES.set((_EnvSource(_Settings, env), *sources))  # the variables win over the file
    try:
        settings = _Settings()
    except ValidationError as exc:
        raise ConfigError(_message(exc.errors()[0], overrides)) from None
    except SettingsError as exc:  # pragma: no cover - a value pydantic-settings itself could not read
        raise ConfigError(f"{exc}: {exc.__cause__}") from None
    finally:
        _SOURCES.reset(reset)
    config = Config(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(Config)})
    _check(config)
    return config


def read_token(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    token = env.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(f"set the bot token in the {TOKEN_ENV} environment variable")
    return token


def _ignored_env(env: Mapping[str, str]) -> list[str]:
    """``NSTBOT_`` variables without the ``__`` that makes them overrides: most likely typos."""
    sections = [f.name for f in dataclasses.fields(Config)]
    found = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or "__" in name:
            continue
        rest = name[len(ENV_PREFIX):].lower()
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        hint = (f" (did you mean {ENV_PREFIX}{section.upper()}__{rest[len(section) + 1:].upper()}?)"
                if section else "")
        found.append(f"{name} is ignored: overrides are named {ENV_PREFIX}<SECTION>__<KEY>, with two underscores "
                     f"after the section{hint}")
    return found


def _overrides(env: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """The override variables by the key they set; a name that cannot be one is an error."""
    sections = [f.name for f in dataclasses.fields(Config)]
    found = {}
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = tuple(p.lower() for p in name[len(ENV_PREFIX):].split("__"))
        if not all(parts):
            raise ConfigError(f"{name}: empty key part in the variable name")
        if parts == ("discord", "token"):
            raise ConfigError(f"{name}: the token is read only from {TOKEN_ENV}")
        if parts[0] not in sections:  # pydantic-settings would pass over it in silence
            raise ConfigError(f"unknown key {parts[0]} (set by {name}) (known keys: {', '.join(sorted(sections))})")
        found[parts] = name
    return found


def _message(error: Any, overrides: Mapping[tuple[str, ...], str]) -> str:
    """One of pydantic's errors in this module's words: the key, what it allows, the value, the variable."""
    loc = tuple(error["loc"])
    if error["type"] == "unknown_preset":
        loc += (error["ctx"]["name"],)
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    origin = next((f" (set by {name})" for parts, name in overrides.items()
                   if parts[:len(loc)] == loc[:len(parts)]), "")
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        table = key.rpartition(".")[0]
        known = ", ".join(sorted(f.name for f in dataclasses.fields(_type_at(loc[:-1])[0])))
        return f"unknown key {key}{origin} (known keys{f' in {table}' if table else ''}: {known})"
    if error["type"] == "unknown_preset":
        return f"unknown preset {key}{origin} (presets: {', '.join(PRESETS)})"
    if error["type"] == "rule":
        return f"{key}: {error['msg']}{origin}"
    hint, meta = _type_at(loc)
    value = error["input"]
    if error["type"] in ("greater_than_equal", "less_than_equal") and isinstance(value, str):
        try:  # out of bounds, so it parsed: show the number read from the variable
            value = hint(value)
        except ValueError:
            pass
    return f"{key} must be {_expected(loc, hint, meta)}, not {value!r}{origin}"


def _type_at(loc: tuple[Any, ...]) -> tuple[Any, list[Any]]:
    """The type of the value at ``loc`` in a Config, and its annotations (bounds, choices)."""
    hint: Any = Config
    meta: list[Any] = []
    for part in loc:
        if dataclasses.is_dataclass(hint):
            hint = typing.get_type_hints(hint, include_extras=True)[part]
        else:  # an item of a list, or a value of a table
            hint = typing.get_args(hint)[0 if typing.get_origin(hint) is tuple else -1]
        meta = []
        if typing.get_origin(hint) is Annotated:
            hint, *more = typing.get_args(hint)
            meta = [m for item in more for m in (item.metadata if isinstance(item, FieldInfo) else [item])]
    return hint, meta


def _expected(loc: tuple[Any, ...], hint: Any, meta: list[Any]) -> str:
    choices = next((m.choices for m in meta if isinstance(m, OneOf)), None)
    if choices:
        return f"one of {', '.join(choices)}"
    if hint in (int, float):
        lo = next((m.ge for m in meta if hasattr(m, "ge")), None)
        hi = next((m.le for m in meta if hasattr(m, "le")), None)
        what = "a whole number" if hint is int else "a number"
        if lo is not None and hi is not None:
            return f"{what} from {lo:g} to {hi:g}"
        return f"{what} of at least {lo:g}" if lo is not None else what
    if hint is bool:
        return "true or false"
    if hint is str:
        return "a string"
    if typing.get_origin(hint) is tuple:
        return "a list"
    if typing.get_origin(hint) is dict:
        return f"a table of {loc[-1]}"
    return "a table with size, steps and scales" if hint is PresetConfig else "a table"
def _check(config: Config) -> None:
    """Rules that involve more than one key or the file system."""
    d = config.discord
    if d.api_base and not d.api_base.startswith(("http://", "https://")):
        raise ConfigError(f"discord.api_base must start with http:// or https://, not {d.api_base!r}")
    if d.gateway_url and not d.gateway_url.startswith(("ws://", "wss://")):
        raise ConfigError(f"discord.gateway_url must start with ws:// or wss://, not {d.gateway_url!r}")
    if d.interaction_margin_s >= d.interaction_ttl_s:
        raise ConfigError("discord.interaction_margin_s must be smaller than discord.interaction_ttl_s")
    if d.shard_ids and not d.shard_count:
        raise ConfigError("discord.shard_ids needs discord.shard_count: the shard count of the whole bot")
    if any(i >= d.shard_count for i in d.shard_ids):
        raise ConfigError(f"discord.shard_ids must be below discord.shard_count ({d.shard_count}), "
                          f"not {list(d.shard_ids)}")
    if len(set(d.shard_ids)) != len(d.shard_ids):
        raise ConfigError("discord.shard_ids lists a shard twice")
    weights = config.engine.weights
    if not weights:
        raise ConfigError("engine.weights must be imagenet, random or the path of a weights file")
    if weights not in ("imagenet", "random") and not Path(weights).expanduser().is_file():
        raise ConfigError(f"engine.weights: no weights file at {weights!r} (or use imagenet or random)")
    devices = config.pool.devices.strip().lower()
    if devices not in ("auto", "cpu") and not all(p.strip().isdigit() for p in devices.split(",")):
        raise ConfigError(f"pool.devices must be auto, cpu or GPU ids like \"0,1\", not {config.pool.devices!r}")
    if config.pool.backend == "ray":
        if devices not in ("auto", "cpu"):
            raise ConfigError("pool.devices must be auto or cpu with pool.backend = \"ray\" (Ray gives each actor one "
                              f"GPU of the cluster), not {config.pool.devices!r}")
        if importlib.util.find_spec("ray") is None:
            raise ConfigError('pool.backend = "ray" needs Ray, which is not installed: pip install "stylebot[ray]"')
    if config.styles.path and not Path(config.styles.path).expanduser().is_dir():
        raise ConfigError(f"styles.path: {config.styles.path!r} is not a folder")
    if not config.storage.path:
        raise ConfigError("storage.path must not be empty")
    if not config.health.host.strip():
        raise ConfigError("health.host must not be empty (127.0.0.1: this machine only; 0.0.0.0: every interface)")


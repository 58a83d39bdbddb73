"""The bot's settings: one TOML file, environment overrides, validated into frozen dataclasses.

Every option has a default (``config.example.toml`` documents them all). Any key can be
overridden by an environment variable ``NSTBOT_<SECTION>__<KEY>`` (nested tables add more
``__`` parts: ``NSTBOT_ENGINE__PRESETS__FAST__STEPS=60``; lists are comma-separated:
``NSTBOT_DISCORD__DEV_GUILD_IDS=123,456``). The Discord token is never part of the file: it
comes only from ``DISCORD_TOKEN``.

pydantic-settings reads the file and the variables and pydantic checks them against the
sections' annotations (bounds, choices). The sections stay plain frozen dataclasses: built in
code (tests, tools) they are not checked, and ``dataclasses.asdict``/``replace`` work.
:func:`load_config` turns pydantic's errors into :class:`ConfigError` messages that name the
bad key and, when a variable set it, the variable, e.g.
``limits.queue_max must be a whole number of at least 1, not 'many' (set by NSTBOT_LIMITS__QUEUE_MAX)``.
"""

import dataclasses
import importlib.util
import os
import tomllib
import typing
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Mapping

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, ValidationError, create_model, with_config
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError, core_schema
from pydantic_settings import (BaseSettings, EnvSettingsSource, SettingsConfigDict, SettingsError,
                               TomlConfigSettingsSource)

from nst_core.params import BACKBONES, PRECISIONS, MAX_STRENGTH
from nst_core.schedule import PRESETS

__all__ = [
    "Config", "DiscordConfig", "EngineConfig", "PresetConfig", "StylesConfig", "PoolConfig", "LimitsConfig",
    "ProgressConfig", "StorageConfig", "DeliveryConfig", "HealthConfig", "ShutdownConfig", "LoggingConfig",
    "ConfigError", "load_config",
    "read_token", "ENV_PREFIX", "TOKEN_ENV",
]

ENV_PREFIX = "NSTBOT_"
TOKEN_ENV = "DISCORD_TOKEN"


class ConfigError(ValueError):
    """The configuration is unusable; the message names the key and says what is allowed."""


# --------------------------------------------------------------------------- value types
# The file's values must have the key's type (TOML has numbers, strings and lists); values from
# the environment are text, parsed for the key's type. The messages are written by _message().


class _EnvText(str):
    """A value from the environment (stripped)."""


def _whole(value: Any) -> Any:
    if isinstance(value, (bool, float)) or (isinstance(value, str) and not isinstance(value, _EnvText)):
        raise PydanticCustomError("whole_number", "not a whole number")
    return value


def _number(value: Any) -> Any:
    if isinstance(value, bool) or (isinstance(value, str) and not isinstance(value, _EnvText)):
        raise PydanticCustomError("number", "not a number")
    return value


def _env_list(value: Any) -> Any:
    """A list from the environment is comma-separated: ``123,456`` (or ``[123, 456]``)."""
    if isinstance(value, _EnvText):
        return [_EnvText(v.strip().strip("'\"")) for v in value.strip("[]").split(",") if v.strip()]
    return value


class _OneOf:
    """The value is one of ``choices``, in any case (kept as spelled here)."""

    def __init__(self, *choices: str) -> None:
        self.choices = choices

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(self._pick, handler(source))

    def _pick(self, value: Any) -> str:
        match = next((c for c in self.choices if isinstance(value, str) and c.lower() == value.lower()), None)
        if match is None:
            raise PydanticCustomError("choice", "not one of the choices")
        return match


def _not_ray_client(address: str) -> str:
    if address.strip().lower().startswith("ray://"):
        raise PydanticCustomError("rule", 'Ray Client (ray://) is not supported; run the bot on a node of the cluster '
                                          'and use "auto" or "HEAD_IP:6379"')
    return address


Whole = Annotated[int, BeforeValidator(_whole)]
Number = Annotated[float, BeforeValidator(_number), Field(allow_inf_nan=False)]
_TABLE = ConfigDict(extra="forbid")  # a key the section does not have is an error


# --------------------------------------------------------------------------- settings


@with_config(_TABLE)
@dataclass(frozen=True)
class DiscordConfig:
    api_base: str = ""  # REST base, e.g. http://127.0.0.1:8080/api/v10; empty: Discord itself
    gateway_url: str = ""  # e.g. ws://127.0.0.1:8080/gateway; empty: Discord itself
    # guilds that get the commands synced on every start
    dev_guild_ids: Annotated[tuple[Whole, ...], BeforeValidator(_env_list)] = ()
    interaction_ttl_s: Annotated[Number, Field(ge=1.0)] = 900.0  # how long Discord honours an interaction token
    interaction_margin_s: Annotated[Number, Field(ge=0.0)] = 60.0  # deliver by channel message when less is left


@with_config(_TABLE)
@dataclass(frozen=True)
class PresetConfig:
    size: Annotated[Whole, Field(ge=16, le=4096)] = 512  # longer side of the output (before engine.max_size)
    steps: Annotated[Whole, Field(ge=1, le=20000)] = 300
    scales: Annotated[Whole, Field(ge=1, le=8)] = 3


def _default_presets() -> dict[str, PresetConfig]:
    return {name: PresetConfig(p.size, p.steps, p.scales) for name, p in PRESETS.items()}


def _merge_presets(value: Any) -> Any:
    """A preset given in part keeps the engine's values for the keys left out."""
    if not isinstance(value, dict):
        return value
    merged: dict[str, Any] = {name: dataclasses.asdict(p) for name, p in _default_presets().items()}
    for name, table in value.items():
        if name not in merged:
            raise PydanticCustomError("unknown_preset", "unknown preset {name}", {"name": name})
        merged[name] = {**merged[name], **table} if isinstance(table, dict) else table
    return merged


@with_config(_TABLE)
@dataclass(frozen=True)
class EngineConfig:
    backbone: Annotated[str, _OneOf(*BACKBONES)] = "vgg19"
    weights: str = "imagenet"  # imagenet | random | PATH to a Keras weights file
    default_preset: Annotated[str, _OneOf(*PRESETS)] = "balanced"
    max_size: Annotated[Whole, Field(ge=16, le=4096)] = 1024  # cap on the output's longer side
    precision: Annotated[str, _OneOf(*PRECISIONS)] = "auto"
    presets: Annotated[dict[str, PresetConfig], BeforeValidator(_merge_presets)] = field(
        default_factory=_default_presets)

    @property
    def picture_side(self) -> int:
        """The longer side an upload is kept at: what the largest preset needs (a remix may be Sharper)."""
        return min(self.max_size, max(p.size for p in self.presets.values()))


@with_config(_TABLE)
@dataclass(frozen=True)
class StylesConfig:
    path: str = ""  # folder of style images offered by /stylize library_style; empty: none
    builtin: bool = True  # offer the built-in paintings (bot/styles); false: only the folder at path


@with_config(_TABLE)
@dataclass(frozen=True)
class PoolConfig:
    devices: str = "auto"  # auto | cpu | comma-separated GPU ids ("0,1")
    workers: Annotated[Whole, Field(ge=1, le=64)] = 1  # worker processes when running on the CPU
    job_timeout_s: Annotated[Number, Field(ge=1.0)] = 900.0
    retries: Annotated[Whole, Field(ge=0, le=5)] = 1  # reruns of a job whose worker crashed, on a fresh worker
    backend: Annotated[str, _OneOf("local", "ray")] = "local"  # ray: workers are actors on a Ray cluster
    ray_address: Annotated[str, AfterValidator(_not_ray_client)] = ""  # "" starts Ray here; "auto"; "HEAD:6379"
    ray_actors: Annotated[Whole, Field(ge=1, le=256)] = 1  # actors on a Ray cluster without GPUs (else one per GPU)
    start_retry_max_s: Annotated[Number, Field(ge=1.0)] = 300.0  # longest pause between attempts to start a worker


@with_config(_TABLE)
@dataclass(frozen=True)
class LimitsConfig:
    max_upload_bytes: Annotated[Whole, Field(ge=1024)] = 8 * 1024 * 1024
    max_pixels: Annotated[Whole, Field(ge=1024)] = 16_000_000
    max_aspect_ratio: Annotated[Number, Field(ge=1.0)] = 10.0  # longer side / shorter side
    per_user_waiting: Annotated[Whole, Field(ge=1)] = 2
    queue_max: Annotated[Whole, Field(ge=1)] = 20
    per_guild_waiting: Annotated[Whole, Field(ge=1)] = 5  # one server's share of the line (at most queue_max)
    max_strength: Annotated[Number, Field(ge=0.0, le=MAX_STRENGTH)] = 5.0  # /stylize strength, 0 to this
    # What each server's admins may tighten with /stylebot-settings, never exceed:
    max_preset: Annotated[str, _OneOf(*PRESETS)] = "best"  # the largest preset anyone may use
    daily_jobs_per_member: Annotated[Whole, Field(ge=0)] = 0  # jobs per member per server in 24 hours; 0: no limit
    # Checking uploads (decoding them) runs on a small pool of its own, bounded in number and time:
    checks_at_once: Annotated[Whole, Field(ge=1, le=16)] = 2  # uploads decoded at the same time
    checks_waiting: Annotated[Whole, Field(ge=1)] = 16  # requests downloaded or checked at once (running ones included)
    check_timeout_s: Annotated[Number, Field(ge=1.0)] = 20.0  # one request's checks, from its turn, waiting included
    # Each server's share of the checks' CPU time: this many seconds within check_window_s; a server
    # past it waits (others go first, always) and its requests are refused once their time runs out.
    check_share_s: Annotated[Number, Field(gt=0.0)] = 30.0
    check_window_s: Annotated[Number, Field(ge=1.0)] = 300.0


@with_config(_TABLE)
@dataclass(frozen=True)
class ProgressConfig:
    edit_interval_s: Annotated[Number, Field(ge=0.2)] = 3.0  # Discord rate-limits message edits


@with_config(_TABLE)
@dataclass(frozen=True)
class StorageConfig:
    path: str = "data/stylebot.sqlite3"  # the job database (SQLite); small state files live beside it
    spool_path: str = ""  # input images and undelivered results; empty: "spool" beside the database
    spool_max_mb: Annotated[Number, Field(ge=1.0)] = 2048.0  # new jobs are refused while the spool holds more
    retention_hours: Annotated[Number, Field(ge=0.0)] = 168.0  # ended jobs' records (and leftover files) kept this long
    # a delivered job's pictures stay this long for the buttons under its result (counted in
    # spool_max_mb; the oldest go first when a new job needs the room); 0: no remix buttons
    reuse_hours: Annotated[Number, Field(ge=0.0)] = 24.0
    # the part of spool_max_mb one server may hold (its jobs' pictures and its members' saved
    # styles); over it, the server's own oldest kept pictures go first, then it is refused.
    # 1: no limit per server
    server_share: Annotated[Number, Field(ge=0.01, le=1.0)] = 0.1

    @property
    def state_dir(self) -> Path:
        return Path(self.path).expanduser().parent

    @property
    def spool_dir(self) -> Path:
        return Path(self.spool_path).expanduser() if self.spool_path else self.state_dir / "spool"


@with_config(_TABLE)
@dataclass(frozen=True)
class DeliveryConfig:
    timeout_s: Annotated[Number, Field(ge=1.0)] = 60.0  # one attempt on one route (discord.py's 5xx retries included)
    retries: Annotated[Whole, Field(ge=0, le=10)] = 2  # further attempts on a route after a timeout or lost connection
    backoff_s: Annotated[Number, Field(ge=0.0)] = 2.0  # wait before the first retry; doubles each time
    redeliver_after_s: Annotated[Number, Field(ge=1.0)] = 60.0  # all routes failed for a passing reason: retry after


@with_config(_TABLE)
@dataclass(frozen=True)
class HealthConfig:
    port: Annotated[Whole, Field(ge=0, le=65535)] = 0  # /healthz and /metrics; 0: no server
    host: str = "127.0.0.1"


@with_config(_TABLE)
@dataclass(frozen=True)
class ShutdownConfig:
    running_jobs: Annotated[str, _OneOf("finish", "cancel")] = "finish"
    timeout_s: Annotated[Number, Field(ge=0.0)] = 120.0  # "finish": cancel whatever still runs after this


@with_config(_TABLE)
@dataclass(frozen=True)
class LoggingConfig:
    level: Annotated[str, _OneOf("DEBUG", "INFO", "WARNING", "ERROR")] = "INFO"
    format: Annotated[str, _OneOf("json", "text")] = "json"


@with_config(_TABLE)
@dataclass(frozen=True)
class Config:
    discord: DiscordConfig = field(default_factory=DiscordConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    styles: StylesConfig = field(default_factory=StylesConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    progress: ProgressConfig = field(default_factory=ProgressConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    shutdown: ShutdownConfig = field(default_factory=ShutdownConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# --------------------------------------------------------------------------- loading


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
        return {name.lower(): _EnvText(value.strip()) for name, value in self._env.items()
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
    choices = next((m.choices for m in meta if isinstance(m, _OneOf)), None)
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


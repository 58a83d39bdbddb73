"""The bot's settings: one TOML file, environment overrides, validated into frozen dataclasses.

Every option has a default (``config.example.toml`` documents them all). Any key can be
overridden by an environment variable ``NSTBOT_<SECTION>__<KEY>`` (nested tables add more
``__`` parts: ``NSTBOT_ENGINE__PRESETS__FAST__STEPS=60``; lists are comma-separated:
``NSTBOT_DISCORD__DEV_GUILD_IDS=123,456``). The Discord token is never part of the file: it
comes only from ``DISCORD_TOKEN``.

pydantic-settings reads the file and the variables and pydantic checks them against the
sections' annotations (bounds, choices). The sections stay plain frozen dataclasses: built in
code (tests, tools) they are not checked, and ``dataclasses.asdict``/``replace`` work.
:func:`bot.config_loading.load_config` reads them and turns pydantic's errors into
:class:`ConfigError` messages that name the bad key and, when a variable set it, the
variable, e.g.
``limits.queue_max must be a whole number of at least 1, not 'many' (set by NSTBOT_LIMITS__QUEUE_MAX)``.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, with_config
from pydantic_core import PydanticCustomError, core_schema

from nst_core.params import BACKBONES, PRECISIONS, MAX_STRENGTH
from nst_core.schedule import PRESETS

__all__ = [
    "Config", "DiscordConfig", "EngineConfig", "PresetConfig", "StylesConfig", "PoolConfig", "LimitsConfig",
    "ProgressConfig", "StorageConfig", "DeliveryConfig", "HealthConfig", "ShutdownConfig", "LoggingConfig",
    "ConfigError", "ENV_PREFIX", "TOKEN_ENV", "EnvText", "OneOf",
]

ENV_PREFIX = "NSTBOT_"
TOKEN_ENV = "DISCORD_TOKEN"


class ConfigError(ValueError):
    """The configuration is unusable; the message names the key and says what is allowed."""


# --------------------------------------------------------------------------- value types
# The file's values must have the key's type (TOML has numbers, strings and lists); values from
# the environment are text, parsed for the key's type. The messages are written by _message().


class EnvText(str):
    """A value from the environment (stripped)."""


def _whole(value: Any) -> Any:
    if isinstance(value, (bool, float)) or (isinstance(value, str) and not isinstance(value, EnvText)):
        raise PydanticCustomError("whole_number", "not a whole number")
    return value


def _number(value: Any) -> Any:
    if isinstance(value, bool) or (isinstance(value, str) and not isinstance(value, EnvText)):
        raise PydanticCustomError("number", "not a number")
    return value


def _env_list(value: Any) -> Any:
    """A list from the environment is comma-separated: ``123,456`` (or ``[123, 456]``)."""
    if isinstance(value, EnvText):
        return [EnvText(v.strip().strip("'\"")) for v in value.strip("[]").split(",") if v.strip()]
    return value


class OneOf:
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
    # Gateway shards in all (0: as many as Discord recommends) and those this process runs (empty: all)
    shard_count: Annotated[Whole, Field(ge=0, le=100_000)] = 0
    shard_ids: Annotated[tuple[Annotated[Whole, Field(ge=0)], ...], BeforeValidator(_env_list)] = ()
    # REST calls a second the bot allows itself, interaction answers aside (Discord's global limit: 50)
    calls_per_second: Annotated[Whole, Field(ge=1, le=50)] = 40


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
    backbone: Annotated[str, OneOf(*BACKBONES)] = "vgg19"
    weights: str = "imagenet"  # imagenet | random | PATH to a Keras weights file
    default_preset: Annotated[str, OneOf(*PRESETS)] = "balanced"
    max_size: Annotated[Whole, Field(ge=16, le=4096)] = 1024  # cap on the output's longer side
    precision: Annotated[str, OneOf(*PRECISIONS)] = "auto"
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
    backend: Annotated[str, OneOf("local", "ray")] = "local"  # ray: workers are actors on a Ray cluster
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
    max_preset: Annotated[str, OneOf(*PRESETS)] = "best"  # the largest preset anyone may use
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
    running_jobs: Annotated[str, OneOf("finish", "cancel")] = "finish"
    timeout_s: Annotated[Number, Field(ge=0.0)] = 120.0  # "finish": cancel whatever still runs after this


@with_config(_TABLE)
@dataclass(frozen=True)
class LoggingConfig:
    level: Annotated[str, OneOf("DEBUG", "INFO", "WARNING", "ERROR")] = "INFO"
    format: Annotated[str, OneOf("json", "text")] = "json"


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

"""The bot's settings: one TOML file, environment overrides, validated into frozen dataclasses.

Every option has a default (``config.example.toml`` documents them all). Any key can be
overridden by an environment variable ``NSTBOT_<SECTION>__<KEY>`` (nested tables add more
``__`` parts: ``NSTBOT_ENGINE__PRESETS__FAST__STEPS=60``). The Discord token is never part
of the file: it comes only from ``DISCORD_TOKEN``.

Errors are :class:`ConfigError` with a message that names the bad key, e.g.
``limits.queue_max must be a whole number of at least 1, not 'many'``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from nst_core.params import BACKBONES, PRECISIONS
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


def _opt(default: Any, *, min: float | None = None, max: float | None = None,
         choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field whose bounds the loader checks (kept next to the default they limit)."""
    return field(default=default, metadata={"min": min, "max": max, "choices": choices})


@dataclass(frozen=True)
class DiscordConfig:
    api_base: str = ""  # REST base, e.g. http://127.0.0.1:8080/api/v10; empty: Discord itself
    gateway_url: str = ""  # e.g. ws://127.0.0.1:8080/gateway; empty: Discord itself
    dev_guild_ids: tuple[int, ...] = ()  # guilds that get the commands synced on every start
    interaction_ttl_s: float = _opt(900.0, min=1.0)  # how long Discord honours an interaction token
    interaction_margin_s: float = _opt(60.0, min=0.0)  # deliver by channel message when less is left


@dataclass(frozen=True)
class PresetConfig:
    size: int = _opt(512, min=16, max=4096)  # longer side of the output (before engine.max_size)
    steps: int = _opt(300, min=1, max=20000)
    scales: int = _opt(3, min=1, max=8)


def _default_presets() -> dict[str, PresetConfig]:
    return {name: PresetConfig(p.size, p.steps, p.scales) for name, p in PRESETS.items()}


@dataclass(frozen=True)
class EngineConfig:
    backbone: str = _opt("vgg19", choices=BACKBONES)
    weights: str = "imagenet"  # imagenet | random | PATH to a Keras weights file
    default_preset: str = _opt("balanced", choices=tuple(PRESETS))
    max_size: int = _opt(1024, min=16, max=4096)  # cap on the output's longer side
    precision: str = _opt("auto", choices=PRECISIONS)
    presets: dict[str, PresetConfig] = field(default_factory=_default_presets)


@dataclass(frozen=True)
class StylesConfig:
    path: str = ""  # folder of style images offered by /stylize library_style; empty: none


@dataclass(frozen=True)
class PoolConfig:
    devices: str = "auto"  # auto | cpu | comma-separated GPU ids ("0,1")
    workers: int = _opt(1, min=1, max=64)  # worker processes when running on the CPU
    job_timeout_s: float = _opt(900.0, min=1.0)
    retries: int = _opt(1, min=0, max=5)  # reruns of a job whose worker crashed, on a fresh worker
    backend: str = _opt("local", choices=("local", "ray"))  # ray: workers are actors on a Ray cluster
    ray_address: str = ""  # "" starts Ray on this machine; "auto"; "HEAD:6379"; "ray://HEAD:10001"
    ray_actors: int = _opt(1, min=1, max=256)  # actors on a Ray cluster without GPUs (else one per GPU)
    start_retry_max_s: float = _opt(300.0, min=1.0)  # longest pause between attempts to start a worker


@dataclass(frozen=True)
class LimitsConfig:
    max_upload_bytes: int = _opt(8 * 1024 * 1024, min=1024)
    max_pixels: int = _opt(16_000_000, min=1024)
    max_aspect_ratio: float = _opt(10.0, min=1.0)  # longer side / shorter side
    per_user_waiting: int = _opt(2, min=1)
    queue_max: int = _opt(20, min=1)
    per_guild_waiting: int = _opt(10, min=1)  # one server's share of the line
    # What each server's admins may tighten with /stylebot-settings, never exceed:
    max_preset: str = _opt("best", choices=tuple(PRESETS))  # the largest preset anyone may use
    daily_jobs_per_member: int = _opt(0, min=0)  # jobs per member per server in 24 hours; 0: no limit
    # Checking uploads (decoding them) runs on a small pool of its own, bounded in number and time:
    checks_at_once: int = _opt(2, min=1, max=16)  # uploads decoded at the same time
    checks_waiting: int = _opt(16, min=1)  # requests downloaded or checked at once (running ones included)
    check_timeout_s: float = _opt(20.0, min=1.0)  # one request's checks, waiting included


@dataclass(frozen=True)
class ProgressConfig:
    edit_interval_s: float = _opt(3.0, min=0.2)  # Discord rate-limits message edits


@dataclass(frozen=True)
class StorageConfig:
    path: str = "data/stylebot.sqlite3"  # the job database (SQLite); small state files live beside it
    spool_path: str = ""  # input images and undelivered results; empty: "spool" beside the database
    spool_max_mb: float = _opt(2048.0, min=1.0)  # new jobs are refused while the spool holds more
    retention_hours: float = _opt(168.0, min=0.0)  # ended jobs' records (and leftover files) kept this long

    @property
    def state_dir(self) -> Path:
        return Path(self.path).expanduser().parent

    @property
    def spool_dir(self) -> Path:
        return Path(self.spool_path).expanduser() if self.spool_path else self.state_dir / "spool"


@dataclass(frozen=True)
class DeliveryConfig:
    timeout_s: float = _opt(60.0, min=1.0)  # one attempt on one route (discord.py's own 5xx retries included)
    retries: int = _opt(2, min=0, max=10)  # further attempts on a route after a timeout or a lost connection
    backoff_s: float = _opt(2.0, min=0.0)  # wait before the first retry; doubles each time
    redeliver_after_s: float = _opt(60.0, min=1.0)  # every route failed for a passing reason: try again after


@dataclass(frozen=True)
class HealthConfig:
    port: int = _opt(0, min=0, max=65535)  # /healthz and /metrics; 0: no server
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class ShutdownConfig:
    running_jobs: str = _opt("finish", choices=("finish", "cancel"))
    timeout_s: float = _opt(120.0, min=0.0)  # "finish": cancel whatever still runs after this


@dataclass(frozen=True)
class LoggingConfig:
    level: str = _opt("INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    format: str = _opt("json", choices=("json", "text"))


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


class _EnvValue(str):
    """A value from the environment: text to be parsed for the key's type."""

    var: str = ""  # the variable it came from, for error messages


def _env_value(var: str, text: str) -> _EnvValue:
    value = _EnvValue(text)
    value.var = var
    return value


def _origin(value: Any) -> str:
    return f" (set by {value.var})" if isinstance(value, _EnvValue) and value.var else ""


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None,
                warnings: list[str] | None = None) -> Config:
    """Read ``path`` (TOML; ``None``: defaults only), apply ``NSTBOT_*`` overrides, validate.

    Problems that do not stop the bot (an ``NSTBOT_`` variable that is not an override) are
    appended to ``warnings`` for the caller to log.
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            with path.open("rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    if isinstance(data.get("discord"), dict) and "token" in data["discord"]:
        raise ConfigError(f"discord.token: the token is read only from the {TOKEN_ENV} environment variable; "
                          "remove it from the file")
    _apply_env(data, env)
    if warnings is not None:
        warnings.extend(_ignored_env(env))
    config = _build(Config, data, "")
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


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        if not all(parts):
            raise ConfigError(f"{name}: empty key part in the variable name")
        if parts == ["discord", "token"]:
            raise ConfigError(f"{name}: the token is read only from {TOKEN_ENV}")
        table = data
        for i, part in enumerate(parts[:-1]):
            nxt = table.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{name}: {'.'.join(parts[:i + 1])} is not a table")
            table = nxt
        table[parts[-1]] = _env_value(name, env[name])


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.')} must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        where = f" in {prefix.rstrip('.')}" if prefix else ""
        raise ConfigError(f"unknown key {prefix}{unknown[0]}{_origin(data[unknown[0]])} "
                          f"(known keys{where}: {known})")
    values = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = prefix + name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, data[name], key + ".")
        elif typing.get_origin(hint) is dict:
            values[name] = _build_presets(data[name], key)
        else:
            try:
                values[name] = _convert(key, data[name], hint, f.metadata)
            except ConfigError as exc:
                raise ConfigError(f"{exc}{_origin(data[name])}") from None
    return cls(**values)


def _build_presets(data: Any, key: str) -> dict[str, PresetConfig]:
    if not isinstance(data, dict):
        raise ConfigError(f"{key} must be a table of presets")
    presets = _default_presets()
    for name, table in data.items():
        if name not in presets:
            raise ConfigError(f"unknown preset {key}.{name} (presets: {', '.join(presets)})")
        base = dataclasses.asdict(presets[name])
        if not isinstance(table, dict):
            raise ConfigError(f"{key}.{name} must be a table with size, steps and scales")
        built = _build(PresetConfig, table, f"{key}.{name}.")
        given = {k: getattr(built, k) for k in table}
        presets[name] = PresetConfig(**{**base, **given})  # keys left out keep the engine's preset value
    return presets


def _convert(key: str, value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    from_env = isinstance(value, _EnvValue)
    if hint is bool:
        out = _to_bool(key, value)
    elif hint is int:
        out = _to_number(key, value, int, meta)
    elif hint is float:
        out = _to_number(key, value, float, meta)
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, not {value!r}")
        out = str(value).strip() if from_env else value
        if meta.get("choices"):
            choices = meta["choices"]
            match = next((c for c in choices if c.lower() == out.lower()), None)
            if match is None:
                raise ConfigError(f"{key} must be one of {', '.join(choices)}, not {out!r}")
            out = match
    elif typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        if from_env:
            text = value.strip().strip("[]")
            value = [v.strip().strip("'\"") for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, not {value!r}")
        out = tuple(_convert(f"{key}[{i}]", _EnvValue(v) if from_env else v, item, {}) for i, v in enumerate(value))
    else:  # pragma: no cover - a field type this loader does not know
        raise ConfigError(f"{key}: unsupported type {hint}")
    return out


def _to_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, _EnvValue):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
    raise ConfigError(f"{key} must be true or false, not {value!r}")


def _to_number(key: str, value: Any, kind: type, meta: Mapping[str, Any]) -> Any:
    lo, hi = meta.get("min"), meta.get("max")
    what = "a whole number" if kind is int else "a number"
    if lo is not None and hi is not None:
        what += f" from {lo:g} to {hi:g}"
    elif lo is not None:
        what += f" of at least {lo:g}"
    number: Any = None
    if isinstance(value, _EnvValue):
        try:
            number = kind(value.strip().replace("_", ""))
        except ValueError:
            number = None
    elif isinstance(value, bool):
        number = None
    elif kind is int and isinstance(value, int):
        number = value
    elif kind is float and isinstance(value, (int, float)):
        number = float(value)
    if number is None or (kind is float and not math.isfinite(number)):
        raise ConfigError(f"{key} must be {what}, not {value!r}")
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise ConfigError(f"{key} must be {what}, not {number!r}")
    return number


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


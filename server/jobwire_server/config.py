"""Server settings: one frozen dataclass, read from flags, ``JOBWIRE_*`` env and a TOML file.

Precedence is flags > environment > config file > defaults. Every value is validated when the
settings are built, and a bad one raises :class:`ConfigError` naming the setting and where it
came from, so ``jobwire serve`` can print one clear line and exit.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from jobwire_server.domain.bulk import DEFAULT_BATCH
from jobwire_server.engine.webhooks.signing import check_secret
from jobwire_server.schedule_file import DeclaredSchedule, ScheduleFileError, parse_schedules

SYNCHRONOUS_MODES = ("FULL", "NORMAL", "EXTRA")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


DAY = 86_400.0
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY}
TERMINAL_STATE_NAMES = ("SUCCEEDED", "FAILED", "CANCELLED")


class ConfigError(ValueError):
    """A setting is missing, malformed or out of range."""


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``jobwire serve`` needs, validated."""

    listen: str = "127.0.0.1:50051"
    db: str = "./jobwire.db"
    db_pool_size: int = 10
    concurrency: int = 100
    queue_concurrency: Mapping[str, int] = field(default_factory=dict)
    queue_concurrency_global: bool = False
    shutdown_grace: float = 10.0
    cancel_grace: float = 5.0
    lease_ttl: float = 30.0
    synchronous: str = "FULL"
    integrity_check: bool = True
    handlers: tuple[str, ...] = ()
    builtin_kinds: bool = True
    log_format: str = "text"
    log_level: str = "info"
    max_payload_bytes: int = 1 << 20
    max_message_bytes: int = 4 << 20
    max_concurrent_streams: int = 1000
    max_watch_streams: int = 10_000
    watch_buffer: int = 1000
    keepalive_time: float = 60.0
    keepalive_timeout: float = 20.0
    request_id_ttl: float = 86_400.0
    tokens_file: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    allow_unauthenticated: bool = False
    webhook_secret: tuple[str, ...] = ()
    webhook_allow: tuple[str, ...] = ()
    webhook_timeout: float = 10.0
    webhook_retry_schedule: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
    webhook_concurrency: int = 16
    webhook_host_concurrency: int = 4
    stale_after: float = 7 * DAY
    delete_after: float = 30 * DAY
    stale_after_state: Mapping[str, float] = field(default_factory=dict)
    delivery_log_keep: float = 30 * DAY
    retention_interval: float = 60.0
    retention_batch: int = 500
    #: Jobs a bulk action (CancelJobs, RetryJobs) changes per transaction at most (each batch is
    #: sized to take about `domain.bulk.BATCH_BUDGET`).
    bulk_batch: int = DEFAULT_BATCH
    #: HOST:PORT of the Prometheus endpoint; empty means off.
    metrics_listen: str = ""
    #: HOST:PORT of the HTTP/JSON gateway and the console; empty means off (`jobwire serve` defaults
    #: to SERVE_HTTP_LISTEN; an App built in code has none unless asked).
    http_listen: str = ""
    #: Seconds between the comment lines that keep an idle Server-Sent Events stream open.
    http_heartbeat: float = 15.0
    #: The config file's ``[[schedules]]`` (file only: no flag, no environment variable).
    schedules: tuple[DeclaredSchedule, ...] = ()

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    def is_loopback(self) -> bool:
        """True when the listen address is only reachable from this machine."""
        return is_loopback_host(self.host)

    def exposed(self) -> list[str]:
        """The addresses (gRPC, HTTP gateway) reachable from beyond this machine."""
        addresses = [self.listen, self.http_listen] if self.http_listen else [self.listen]
        return [a for a in addresses if not is_loopback_host(a.rsplit(":", 1)[0].strip("[]"))]


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _positive_int(name: str, value: Any) -> int:
    number = _int(name, value)
    if number < 1:
        raise ConfigError(f"{name} must be at least 1, got {number}")
    return number


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None


def _seconds(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}") from None
    if not number >= 0 or number == float("inf"):
        raise ConfigError(f"{name} must be a finite number of seconds ≥ 0, got {value!r}")
    return number


def _duration(name: str, value: Any) -> float:
    """Seconds, given as a number or with a unit: ``500ms``, ``30s``, ``5m``, ``2h``, ``7d``."""
    if isinstance(value, str):
        text = value.strip().lower()
        for unit in sorted(_UNITS, key=len, reverse=True):
            if text.endswith(unit) and text[: -len(unit)].strip():
                try:
                    return _seconds(name, float(text[: -len(unit)]) * _UNITS[unit])
                except ValueError:
                    break
    try:
        return _seconds(name, value)
    except ConfigError:
        raise ConfigError(f"{name} must be a duration such as 30s, 5m, 2h or 7d, got {value!r}") from None


def _durations(name: str, value: Any) -> tuple[float, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    delays = tuple(_duration(f"{name}[{i}]", item) for i, item in enumerate(items) if str(item).strip())
    if not delays:
        raise ConfigError(f"{name} needs at least one delay")
    return delays


def _strings(check: Callable[[str], str | None]) -> Callable[[str, Any], tuple[str, ...]]:
    """A repeatable list (comma-separated in env), each entry validated by `check`."""
    def parse(name: str, value: Any) -> tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else list(value)
        out = tuple(str(item).strip() for item in items if str(item).strip())
        for item in out:
            problem = check(item)
            if problem:
                raise ConfigError(f"{name}: {_redact(item)} {problem}")
        return out

    return parse


def _redact(item: str) -> str:
    return "whsec_…" if item.startswith("whsec_") else repr(item)


def _allow_entry(entry: str) -> str | None:
    try:
        ipaddress.ip_network(entry, strict=False)
        return None
    except ValueError:
        pass
    if "/" in entry or not all(part.replace("-", "").isalnum() for part in entry.rstrip(".").split(".")):
        return "is neither a CIDR (10.0.0.0/8) nor a host name"
    return None


def _state_durations(name: str, value: Any) -> dict[str, float]:
    """``FAILED=30d,CANCELLED=1d`` (flag/env) or a TOML table; keys are terminal states."""
    if isinstance(value, Mapping):
        pairs = [(str(k), v) for k, v in value.items()]
    else:
        items = value.split(",") if isinstance(value, str) else list(value)
        pairs = []
        for item in (str(i).strip() for i in items if str(i).strip()):
            state, sep, duration = item.partition("=")
            if not sep:
                raise ConfigError(f"{name} entries must be STATE=DURATION, got {item!r}")
            pairs.append((state, duration))
    out: dict[str, float] = {}
    for state, duration in pairs:
        key = state.strip().upper()
        if key not in TERMINAL_STATE_NAMES:
            raise ConfigError(f"{name}: {state!r} is not one of {', '.join(TERMINAL_STATE_NAMES)}")
        out[key] = _duration(f"{name}[{key}]", duration.strip() if isinstance(duration, str) else duration)
    return out


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _choice(choices: Sequence[str], *, upper: bool = False) -> Callable[[str, Any], str]:
    def parse(name: str, value: Any) -> str:
        text = str(value).upper() if upper else str(value).lower()
        if text not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return text

    return parse


def _listen(name: str, value: Any) -> str:
    text = str(value).strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{name} must be HOST:PORT, got {value!r}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name} has a bad port in {value!r} (0–65535)")
    return text


def _listen_or_off(name: str, value: Any) -> str:
    """Like `_listen`, but empty (or ``off``) turns the listener off."""
    text = str(value).strip()
    if text.lower() in ("", "off"):
        return ""
    return _listen(name, text)


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(db: str) -> bool:
    return db.startswith(POSTGRES_SCHEMES)


def _database(name: str, value: Any) -> str:
    """A SQLite path, or a PostgreSQL URL (checked for its parts: a typo fails here, not at start)."""
    db = _text(name, value)
    if "://" not in db:
        return db
    if not is_postgres_url(db):
        scheme = db.split("://", 1)[0]
        raise ConfigError(f"{name}: unknown database URL scheme {scheme!r}; use a SQLite file path or "
                          "postgresql://USER@HOST[:PORT]/DB")
    parts = urlsplit(db)
    try:
        parts.port  # noqa: B018  # raises on a port that is not a number
    except ValueError:
        raise ConfigError(f"{name}: the port in {db.split('@')[-1]!r} is not a number") from None
    if not parts.path.strip("/"):
        raise ConfigError(f"{name}: the URL names no database (postgresql://USER@HOST[:PORT]/DB)")
    sslmode = dict(parse_qsl(parts.query)).get("sslmode")
    if sslmode is not None and sslmode not in SSL_MODES:
        raise ConfigError(f"{name}: sslmode must be one of {', '.join(SSL_MODES)}, got {sslmode!r}")
    return db


SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str | int | float):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return str(value)


def _modules(name: str, value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    modules = tuple(str(item).strip() for item in items if str(item).strip())
    for module in modules:
        if not all(part.isidentifier() for part in module.split(".")):
            raise ConfigError(f"{name}: {module!r} is not an importable module name")
    return modules


def _queue_limits(name: str, value: Any) -> dict[str, int]:
    """``media=4,email=10`` (flag/env) or a TOML table ``{media = 4}``."""
    if isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        items = value.split(",") if isinstance(value, str) else list(value)
        pairs = []
        for item in (str(i).strip() for i in items):
            if not item:
                continue
            queue, sep, limit = item.partition("=")
            if not sep:
                raise ConfigError(f"{name} entries must be QUEUE=N, got {item!r}")
            pairs.append((queue.strip(), limit.strip()))
    return {str(queue): _positive_int(f"{name}[{queue}]", limit) for queue, limit in pairs}


def _schedules(name: str, value: Any) -> tuple[DeclaredSchedule, ...]:
    origin = name.partition(" ")[2]  # "(from FILE)"
    try:
        return parse_schedules("schedules", value, _duration)
    except (ScheduleFileError, ConfigError) as exc:
        raise ConfigError(f"{exc} {origin}".rstrip()) from None


_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "listen": _listen,
    "db": _database,
    "db_pool_size": _positive_int,
    "concurrency": _positive_int,
    "queue_concurrency": _queue_limits,
    "queue_concurrency_global": _bool,
    "shutdown_grace": _seconds,
    "cancel_grace": _seconds,
    "lease_ttl": _seconds,
    "synchronous": _choice(SYNCHRONOUS_MODES, upper=True),
    "integrity_check": _bool,
    "handlers": _modules,
    "builtin_kinds": _bool,
    "log_format": _choice(LOG_FORMATS),
    "log_level": _choice(LOG_LEVELS),
    "max_payload_bytes": _positive_int,
    "max_message_bytes": _positive_int,
    "max_concurrent_streams": _positive_int,
    "max_watch_streams": _positive_int,
    "watch_buffer": _positive_int,
    "keepalive_time": _seconds,
    "keepalive_timeout": _seconds,
    "request_id_ttl": _seconds,
    "tokens_file": _text,
    "tls_cert": _text,
    "tls_key": _text,
    "tls_client_ca": _text,
    "allow_unauthenticated": _bool,
    "webhook_secret": _strings(check_secret),  # the library that signs decides
    "webhook_allow": _strings(_allow_entry),
    "webhook_timeout": _duration,
    "webhook_retry_schedule": _durations,
    "webhook_concurrency": _positive_int,
    "webhook_host_concurrency": _positive_int,
    "stale_after": _duration,
    "delete_after": _duration,
    "stale_after_state": _state_durations,
    "delivery_log_keep": _duration,
    "retention_interval": _duration,
    "retention_batch": _positive_int,
    "bulk_batch": _positive_int,
    "metrics_listen": _listen_or_off,
    "http_listen": _listen_or_off,
    "http_heartbeat": _duration,
    "schedules": _schedules,
}

_HELP: dict[str, str] = {
    "listen": "address to serve gRPC on, HOST:PORT (default 127.0.0.1:50051)",
    "db": "SQLite database file (default ./jobwire.db), or a PostgreSQL URL postgresql://USER[:PASSWORD]@HOST"
          "[:PORT]/DB[?sslmode=...&application_name=...] shared by any number of replicas",
    "db_pool_size": "PostgreSQL: connections for reads per replica; each replica also holds one writer and one "
                    "listener connection (default 10)",
    "concurrency": "jobs run at once by this process (default 100)",
    "queue_concurrency": "per-queue limits, QUEUE=N[,QUEUE=N...]",
    "queue_concurrency_global": "with PostgreSQL: queue_concurrency limits count the jobs running on every replica, "
                                "not only this one (default false)",
    "shutdown_grace": "seconds SIGTERM may take: running jobs get this minus cancel-grace (at most half) to "
                      "finish, then the rest are stopped and requeued (default 10)",
    "cancel_grace": "seconds a cancelled handler gets before it is abandoned (default 5)",
    "lease_ttl": "seconds a claimed job's lease lasts; renewed while it runs (default 30)",
    "synchronous": "SQLite synchronous mode: FULL (default, durable on power loss), NORMAL, EXTRA",
    "integrity_check": "check the database file (PRAGMA quick_check) before serving; turn off for very large "
                       "files (default true)",
    "handlers": "Python module whose Kind objects are registered (repeatable)",
    "builtin_kinds": "register the built-in kinds noop and sleep (default true)",
    "log_format": "log format on stderr: text (default) or json",
    "log_level": "debug, info (default), warning or error",
    "max_payload_bytes": "largest accepted job payload in bytes (default 1 MiB)",
    "max_message_bytes": "largest gRPC message in bytes (default 4 MiB)",
    "max_concurrent_streams": "HTTP/2 streams per client connection (default 1000)",
    "max_watch_streams": "watch streams served at once before RESOURCE_EXHAUSTED (default 10000)",
    "watch_buffer": "events buffered per watch stream before it is ended as too slow (default 1000)",
    "keepalive_time": "seconds between server keepalive pings (default 60)",
    "keepalive_timeout": "seconds to wait for a keepalive ack (default 20)",
    "request_id_ttl": "seconds a request_id is remembered for idempotent enqueues (default 86400)",
    "tokens_file": "bearer tokens file (TOML); enables token auth",
    "tls_cert": "TLS certificate chain (PEM); enables TLS",
    "tls_key": "TLS private key (PEM)",
    "tls_client_ca": "CA bundle (PEM) to require and verify client certificates (mutual TLS)",
    "allow_unauthenticated": "allow a non-loopback listen address without tokens",
    "webhook_secret": "whsec_… secret that signs webhooks (repeatable: two at once while rotating)",
    "webhook_allow": "CIDR or host name webhooks may reach although not public, e.g. 10.0.0.0/8 (repeatable)",
    "webhook_timeout": "time limit of one webhook attempt (default 10s)",
    "webhook_retry_schedule": "delays between webhook attempts, comma-separated "
                              "(default 5s,5m,30m,2h,5h,10h,10h: 8 attempts over about a day)",
    "webhook_concurrency": "webhook attempts in flight at once (default 16)",
    "webhook_host_concurrency": "webhook attempts in flight at once to one destination, host and port (default 4)",
    "stale_after": "a finished job becomes STALE this long after it finished; 0 keeps forever (default 7d)",
    "delete_after": "a STALE job is deleted this long after it became STALE; 0 keeps forever (default 30d)",
    "stale_after_state": "per-state stale_after, STATE=DURATION[,...], e.g. FAILED=30d",
    "delivery_log_keep": "how long the webhook delivery log is kept; 0 keeps forever (default 30d)",
    "retention_interval": "how often retention runs (default 60s)",
    "retention_batch": "jobs retention touches per transaction (default 500)",
    "bulk_batch": "jobs CancelJobs and RetryJobs change per transaction at most; each batch is sized to take "
                  "about 4 ms, and other writes are committed between two (default 200)",
    "metrics_listen": "serve Prometheus metrics over HTTP at HOST:PORT, path /metrics (default off)",
    "http_listen": "serve the HTTP/JSON gateway, Server-Sent Events and the web console at HOST:PORT; empty or "
                   "off: none (default 127.0.0.1:8080)",
    "http_heartbeat": "time between heartbeat comments on an idle Server-Sent Events stream (default 15s)",
}

#: Where `jobwire serve` puts the HTTP gateway and console unless told otherwise.
SERVE_HTTP_LISTEN = "127.0.0.1:8080"

#: Settings only the config file can give.
_FILE_ONLY = {"schedules"}
_REPEATABLE = {"handlers", "queue_concurrency", "webhook_secret", "webhook_allow", "stale_after_state"}
_FLAGS_ONLY_BOOL = {"builtin_kinds", "allow_unauthenticated", "integrity_check", "queue_concurrency_global"}


def env_name(setting: str) -> str:
    return "JOBWIRE_" + setting.upper()


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting; defaults stay None so unset flags don't mask env or file."""
    parser.add_argument("--config", metavar="FILE", help="TOML settings file (env JOBWIRE_CONFIG)")
    for setting in (s for s in _PARSERS if s not in _FILE_ONLY):
        flag = "--" + setting.replace("_", "-")
        help_text = f"{_HELP[setting]} [env {env_name(setting)}]"
        if setting in _FLAGS_ONLY_BOOL:
            parser.add_argument(flag, dest=setting, action=argparse.BooleanOptionalAction, help=help_text)
        elif setting in _REPEATABLE:
            parser.add_argument(flag, dest=setting, action="append", metavar="VALUE", help=help_text)
        else:
            parser.add_argument(flag, dest=setting, metavar="VALUE", help=help_text)


def load_config(
    flags: Mapping[str, Any], environ: Mapping[str, str] | None = None, config_file: str | None = None
) -> ServerConfig:
    """Merge the three sources in order of precedence and validate the result."""
    environ = os.environ if environ is None else environ
    path = config_file or environ.get("JOBWIRE_CONFIG")
    values: dict[str, Any] = {"http_listen": SERVE_HTTP_LISTEN}
    sources: dict[str, str] = {}
    if path:
        for key, value in _read_toml(path).items():
            values[key], sources[key] = value, f"{path}"
    for setting in (s for s in _PARSERS if s not in _FILE_ONLY):
        if env_name(setting) in environ:
            values[setting], sources[setting] = environ[env_name(setting)], f"env {env_name(setting)}"
    for setting, given in flags.items():
        if setting in _PARSERS and setting not in _FILE_ONLY and given is not None:
            joined = ",".join(given) if setting in _REPEATABLE and isinstance(given, list) else given
            values[setting], sources[setting] = joined, "--" + setting.replace("_", "-")
    return build_config(values, sources)


def build_config(values: Mapping[str, Any], sources: Mapping[str, str] | None = None) -> ServerConfig:
    sources = sources or {}
    parsed: dict[str, Any] = {}
    for key, value in values.items():
        label = f"{key} (from {sources[key]})" if key in sources else key
        parsed[key] = _PARSERS[key](label, value)
    config = ServerConfig(**parsed)
    _check_combination(config, sources)
    return config


def _check_combination(config: ServerConfig, sources: Mapping[str, str]) -> None:
    def named(setting: str) -> str:
        return f"{setting} (from {sources[setting]})" if setting in sources else setting

    if bool(config.tls_cert) != bool(config.tls_key):
        given = "tls_cert" if config.tls_cert else "tls_key"
        raise ConfigError(f"{named(given)} needs the other of tls_cert and tls_key")
    if config.tls_client_ca and not config.tls_cert:
        raise ConfigError(f"{named('tls_client_ca')} (mutual TLS) needs tls_cert and tls_key")
    if config.lease_ttl < 1:
        raise ConfigError(f"{named('lease_ttl')} must be at least 1 second, got {config.lease_ttl}")


def _read_toml(path: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    section = data.get("server", data)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [server] must be a table")
    if section is not data and "schedules" in data:  # [[schedules]] beside [server]
        section = {**section, "schedules": data["schedules"]}
    known = {f.name for f in fields(ServerConfig)}
    normalized: dict[str, Any] = {}
    for key, value in section.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"config file {path}: unknown setting {key!r}")
        normalized[name] = value
    return normalized

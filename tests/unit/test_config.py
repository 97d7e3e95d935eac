"""Server settings (server/jobwire_server/config.py): precedence flags > env > TOML file > defaults,
and validation errors that name the setting and where its value came from."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import pytest
from jobwire_server.config import (
    ConfigError,
    ServerConfig,
    add_serve_arguments,
    build_config,
    env_name,
    load_config,
)


def toml(tmp_path: Path, text: str, name: str = "jobwire.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# ----------------------------------------------------------------------------- defaults and sources


def test_defaults_when_nothing_is_given() -> None:
    config = load_config({}, {}, None)
    assert config == replace(ServerConfig(), http_listen="127.0.0.1:8080")  # `jobwire serve` opens the console
    assert config.listen == "127.0.0.1:50051"
    assert config.concurrency == 100
    assert config.synchronous == "FULL"
    assert config.queue_concurrency == {}
    assert config.handlers == ()


def test_load_config_does_not_read_the_process_environment_when_given_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBWIRE_CONCURRENCY", "7")
    assert load_config({}, {}, None).concurrency == 100
    assert load_config({}, None, None).concurrency == 7


def test_file_overrides_defaults(tmp_path: Path) -> None:
    path = toml(tmp_path, 'listen = "0.0.0.0:6000"\nconcurrency = 4\n')
    config = load_config({}, {}, path)
    assert config.listen == "0.0.0.0:6000"
    assert config.concurrency == 4
    assert config.db == ServerConfig().db


def test_server_table_and_hyphenated_keys(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        """
[server]
listen = "127.0.0.1:7000"
shutdown-grace = 2.5
queue-concurrency = { media = 4, email = 10 }
handlers = ["myapp.jobs", "other.kinds"]
builtin-kinds = false
synchronous = "normal"
log_level = "debug"
""",
    )
    config = load_config({}, {}, path)
    assert config.listen == "127.0.0.1:7000"
    assert config.shutdown_grace == 2.5
    assert config.queue_concurrency == {"media": 4, "email": 10}
    assert config.handlers == ("myapp.jobs", "other.kinds")
    assert config.builtin_kinds is False
    assert config.synchronous == "NORMAL"
    assert config.log_level == "debug"


def test_env_overrides_file(tmp_path: Path) -> None:
    path = toml(tmp_path, "[server]\nconcurrency = 4\nshutdown_grace = 1\n")
    config = load_config({}, {"JOBWIRE_CONCURRENCY": "8"}, path)
    assert config.concurrency == 8
    assert config.shutdown_grace == 1.0  # not in env: the file's value stays


def test_flags_override_env_and_file(tmp_path: Path) -> None:
    path = toml(tmp_path, "[server]\nconcurrency = 4\nlisten = '127.0.0.1:1000'\ndb = 'file.db'\n")
    environ = {"JOBWIRE_CONCURRENCY": "8", "JOBWIRE_LISTEN": "127.0.0.1:2000"}
    config = load_config({"concurrency": "16"}, environ, path)
    assert config.concurrency == 16  # flag beats env and file
    assert config.listen == "127.0.0.1:2000"  # env beats file
    assert config.db == "file.db"  # file beats default


def test_unset_flags_do_not_mask_env(tmp_path: Path) -> None:
    config = load_config({"concurrency": None, "config": None}, {"JOBWIRE_CONCURRENCY": "8"}, None)
    assert config.concurrency == 8


def test_false_flag_is_not_treated_as_unset() -> None:
    config = load_config({"builtin_kinds": False}, {"JOBWIRE_BUILTIN_KINDS": "true"}, None)
    assert config.builtin_kinds is False


def test_config_file_from_env(tmp_path: Path) -> None:
    path = toml(tmp_path, "concurrency = 3\n")
    assert load_config({}, {"JOBWIRE_CONFIG": path}, None).concurrency == 3


def test_explicit_config_file_beats_jobwire_config(tmp_path: Path) -> None:
    chosen = toml(tmp_path, "concurrency = 3\n", "chosen.toml")
    other = toml(tmp_path, "concurrency = 9\n", "other.toml")
    assert load_config({}, {"JOBWIRE_CONFIG": other}, chosen).concurrency == 3


def test_repeatable_flags_are_joined() -> None:
    config = load_config({"handlers": ["a.b", "c"], "queue_concurrency": ["media=4", "email=2"]}, {}, None)
    assert config.handlers == ("a.b", "c")
    assert config.queue_concurrency == {"media": 4, "email": 2}


def test_env_lists() -> None:
    environ = {"JOBWIRE_HANDLERS": "a.b, c ,", "JOBWIRE_QUEUE_CONCURRENCY": "media=4, email=10"}
    config = load_config({}, environ, None)
    assert config.handlers == ("a.b", "c")
    assert config.queue_concurrency == {"media": 4, "email": 10}


@pytest.mark.parametrize(("text", "expected"), [("1", True), ("yes", True), ("on", True), ("0", False),
                                                 ("false", False), ("off", False), ("", False)])
def test_env_booleans(text: str, expected: bool) -> None:
    assert load_config({}, {"JOBWIRE_ALLOW_UNAUTHENTICATED": text}, None).allow_unauthenticated is expected


def test_argparse_flags_feed_load_config() -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(["--concurrency", "5", "--handlers", "a.b", "--handlers", "c", "--no-builtin-kinds",
                              "--shutdown-grace", "1.5"])
    config = load_config(vars(args), {"JOBWIRE_CONCURRENCY": "9", "JOBWIRE_LOG_LEVEL": "warning"}, args.config)
    assert config.concurrency == 5
    assert config.handlers == ("a.b", "c")
    assert config.builtin_kinds is False
    assert config.shutdown_grace == 1.5
    assert config.log_level == "warning"


def test_env_name() -> None:
    assert env_name("shutdown_grace") == "JOBWIRE_SHUTDOWN_GRACE"


# ----------------------------------------------------------------------------- validation


def assert_config_error(match_all: list[str], flags: dict[str, object] | None = None,
                        environ: dict[str, str] | None = None, config_file: str | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(flags or {}, environ or {}, config_file)
    message = str(info.value)
    for fragment in match_all:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


@pytest.mark.parametrize("value", ["localhost", "127.0.0.1", ":50051", "", "127.0.0.1:", "127.0.0.1:http",
                                   "127.0.0.1:70000", "127.0.0.1:-1"])
def test_bad_listen_from_a_flag(value: str) -> None:
    assert_config_error(["listen", "--listen", repr(value)], flags={"listen": value})


def test_bad_listen_port_names_the_range() -> None:
    message = assert_config_error(["listen", "env JOBWIRE_LISTEN", "70000"],
                                  environ={"JOBWIRE_LISTEN": "0.0.0.0:70000"})
    assert "65535" in message


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "[::1]:50051", "0.0.0.0:65535", "localhost:1"])
def test_good_listen(listen: str) -> None:
    assert load_config({"listen": listen}, {}, None).listen == listen


def test_metrics_are_off_unless_an_address_is_given(tmp_path: Path) -> None:
    assert load_config({}, {}, None).metrics_listen == ""
    assert load_config({}, {"JOBWIRE_METRICS_LISTEN": "off"}, None).metrics_listen == ""
    assert load_config({"metrics_listen": "0.0.0.0:9464"}, {}, None).metrics_listen == "0.0.0.0:9464"
    path = toml(tmp_path, 'metrics-listen = "127.0.0.1:9000"\n')
    assert load_config({}, {}, path).metrics_listen == "127.0.0.1:9000"


def test_http_listen_defaults_for_serve_and_turns_off() -> None:
    assert ServerConfig().http_listen == ""  # an App built in code opens no HTTP port unless asked
    assert load_config({}, {}, None).http_listen == "127.0.0.1:8080"
    assert load_config({}, {"JOBWIRE_HTTP_LISTEN": "off"}, None).http_listen == ""
    assert load_config({"http_listen": ""}, {}, None).http_listen == ""
    assert load_config({"http_listen": "0.0.0.0:80"}, {}, None).exposed() == ["0.0.0.0:80"]
    assert load_config({}, {}, None).exposed() == []
    assert_config_error(["http_listen", "--http-listen"], flags={"http_listen": "8080"})


@pytest.mark.parametrize("value", ["9464", "127.0.0.1:", "127.0.0.1:99999"])
def test_bad_metrics_listen_names_its_source(value: str) -> None:
    assert_config_error(["metrics_listen", "env JOBWIRE_METRICS_LISTEN"], environ={"JOBWIRE_METRICS_LISTEN": value})


@pytest.mark.parametrize(("value", "fragment"), [("0", "at least 1"), ("abc", "integer"), ("-3", "at least 1"),
                                                 ("2.5", "integer")])
def test_bad_concurrency_from_env(value: str, fragment: str) -> None:
    assert_config_error(["concurrency", "env JOBWIRE_CONCURRENCY", fragment],
                        environ={"JOBWIRE_CONCURRENCY": value})


def test_bad_concurrency_from_a_flag() -> None:
    assert_config_error(["concurrency", "--concurrency"], flags={"concurrency": "0"})


def test_bad_concurrency_from_the_file(tmp_path: Path) -> None:
    path = toml(tmp_path, "[server]\nconcurrency = 0\n")
    assert_config_error(["concurrency", path], config_file=path)


def test_boolean_is_not_an_integer(tmp_path: Path) -> None:
    path = toml(tmp_path, "concurrency = true\n")
    assert_config_error(["concurrency", path, "integer"], config_file=path)


def test_fractional_integer_in_the_file_is_rejected(tmp_path: Path) -> None:
    """The same value from env ("2.5") is rejected; from TOML (a float) it must not be truncated to 2."""
    path = toml(tmp_path, "concurrency = 2.5\n")
    assert_config_error(["concurrency", path], config_file=path)


@pytest.mark.parametrize("value", ["-1", "-0.5", "nan", "inf", "soon"])
def test_bad_shutdown_grace(value: str) -> None:
    assert_config_error(["shutdown_grace", "--shutdown-grace"], flags={"shutdown_grace": value})


def test_zero_shutdown_grace_is_allowed() -> None:
    assert load_config({"shutdown_grace": "0"}, {}, None).shutdown_grace == 0.0


def test_unknown_key_in_the_file(tmp_path: Path) -> None:
    path = toml(tmp_path, "[server]\nconcurrency = 2\nworkers = 4\n")
    assert_config_error(["workers", path, "unknown"], config_file=path)


def test_unknown_hyphenated_key_is_reported_as_written(tmp_path: Path) -> None:
    path = toml(tmp_path, "max-workers = 4\n")
    assert_config_error(["'max-workers'", path], config_file=path)


def test_invalid_toml(tmp_path: Path) -> None:
    path = toml(tmp_path, "[server\nconcurrency = \n")
    assert_config_error([path, "not valid TOML"], config_file=path)


def test_server_must_be_a_table(tmp_path: Path) -> None:
    path = toml(tmp_path, "server = 5\n")
    assert_config_error([path, "[server]"], config_file=path)


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    assert_config_error(["cannot read config file", path], config_file=path)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert_config_error(["cannot read config file", str(tmp_path)], config_file=str(tmp_path))


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'db = "caf\xe9.db"\n')
    assert_config_error([str(path)], config_file=str(path))


@pytest.mark.parametrize(("flags", "environ", "source"), [
    ({}, {"JOBWIRE_SYNCHRONOUS": "fast"}, "env JOBWIRE_SYNCHRONOUS"),
    ({"synchronous": "fast"}, {}, "--synchronous"),
])
def test_bad_synchronous(flags: dict[str, object], environ: dict[str, str], source: str) -> None:
    message = assert_config_error(["synchronous", source, "'fast'"], flags=flags, environ=environ)
    assert "FULL" in message and "NORMAL" in message


def test_synchronous_is_case_insensitive() -> None:
    assert load_config({}, {"JOBWIRE_SYNCHRONOUS": "extra"}, None).synchronous == "EXTRA"


def test_bad_log_level_and_format() -> None:
    assert_config_error(["log_level", "--log-level"], flags={"log_level": "loud"})
    assert_config_error(["log_format", "env JOBWIRE_LOG_FORMAT"], environ={"JOBWIRE_LOG_FORMAT": "xml"})


def test_bad_boolean() -> None:
    assert_config_error(["builtin_kinds", "env JOBWIRE_BUILTIN_KINDS", "maybe"],
                        environ={"JOBWIRE_BUILTIN_KINDS": "maybe"})


def test_tls_cert_without_key_names_both() -> None:
    assert_config_error(["tls_cert", "tls_key"], flags={"tls_cert": "server.pem"})
    assert_config_error(["tls_cert", "tls_key"], environ={"JOBWIRE_TLS_KEY": "server.key"})


def test_tls_cert_without_key_names_where_the_cert_came_from() -> None:
    """The module promises errors name the setting and where it came from; the pairing check doesn't."""
    assert_config_error(["tls_cert", "--tls-cert"], flags={"tls_cert": "server.pem"})


def test_tls_cert_and_key_together_are_fine() -> None:
    config = load_config({"tls_cert": "c.pem"}, {"JOBWIRE_TLS_KEY": "k.pem"}, None)
    assert (config.tls_cert, config.tls_key) == ("c.pem", "k.pem")


def test_client_ca_needs_cert() -> None:
    assert_config_error(["tls_client_ca", "tls_cert"], flags={"tls_client_ca": "ca.pem"})


def test_lease_ttl_below_one_second() -> None:
    assert_config_error(["lease_ttl"], flags={"lease_ttl": "0.5"})


@pytest.mark.parametrize("bad", ["bad-module", "1abc", "a..b", "my app", "a.b-c"])
def test_handlers_with_a_bad_module_name(bad: str) -> None:
    assert_config_error(["handlers", "--handlers", repr(bad)], flags={"handlers": ["good.module", bad]})


def test_handlers_bad_module_in_the_file(tmp_path: Path) -> None:
    path = toml(tmp_path, '[server]\nhandlers = ["ok", "not-ok"]\n')
    assert_config_error(["handlers", path, "'not-ok'"], config_file=path)


def test_queue_concurrency_with_a_bad_limit() -> None:
    assert_config_error(["queue_concurrency", "env JOBWIRE_QUEUE_CONCURRENCY", "email", "'x'"],
                        environ={"JOBWIRE_QUEUE_CONCURRENCY": "media=4,email=x"})


@pytest.mark.parametrize(("value", "fragment"), [("media", "QUEUE=N"), ("media=0", "at least 1"),
                                                 ("media=-2", "at least 1")])
def test_queue_concurrency_other_errors(value: str, fragment: str) -> None:
    assert_config_error(["queue_concurrency", "--queue-concurrency", fragment],
                        flags={"queue_concurrency": [value]})


def test_queue_concurrency_table_with_a_bad_limit(tmp_path: Path) -> None:
    path = toml(tmp_path, "[server]\nqueue_concurrency = { media = 0 }\n")
    assert_config_error(["queue_concurrency", path, "media"], config_file=path)


def test_bad_text_type_in_the_file(tmp_path: Path) -> None:
    path = toml(tmp_path, "db = [1, 2]\n")
    assert_config_error(["db", path, "string"], config_file=path)


def test_build_config_without_sources_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"^concurrency must be at least 1"):
        build_config({"concurrency": 0})


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# ----------------------------------------------------------------------------- listen address


@pytest.mark.parametrize("listen", ["127.0.0.1:50051", "localhost:50051", "[::1]:50051", "127.0.0.2:1"])
def test_loopback_addresses(listen: str) -> None:
    assert load_config({"listen": listen}, {}, None).is_loopback() is True


@pytest.mark.parametrize("listen", ["0.0.0.0:50051", "[::]:50051", "10.0.0.5:50051", "example.com:50051"])
def test_non_loopback_addresses(listen: str) -> None:
    assert load_config({"listen": listen}, {}, None).is_loopback() is False


def test_host_and_port() -> None:
    config = ServerConfig(listen="[::1]:6000")
    assert (config.host, config.port) == ("::1", 6000)
    assert ServerConfig().host == "127.0.0.1"
    assert ServerConfig().port == 50051


# ----------------------------------------------------------------------------- webhooks and retention


def test_durations_take_units_and_plain_seconds() -> None:
    config = build_config({"stale_after": "7d", "delete_after": "36h", "webhook_timeout": "500ms",
                           "delivery_log_keep": 90, "retention_interval": "1.5m"})
    assert (config.stale_after, config.delete_after, config.webhook_timeout) == (7 * 86400, 36 * 3600, 0.5)
    assert (config.delivery_log_keep, config.retention_interval) == (90.0, 90.0)


@pytest.mark.parametrize("bad", ["soon", "-1s", "5 parsecs", "inf", ""])
def test_bad_durations_name_the_setting(bad: str) -> None:
    with pytest.raises(ConfigError, match="stale_after"):
        build_config({"stale_after": bad})


def test_retry_schedule_and_state_overrides() -> None:
    config = load_config({"webhook_retry_schedule": "1s, 2m,3h", "stale_after_state": ["failed=30d", "CANCELLED=0"]},
                         environ={})
    assert config.webhook_retry_schedule == (1.0, 120.0, 10800.0)
    assert config.stale_after_state == {"FAILED": 30 * 86400.0, "CANCELLED": 0.0}
    with pytest.raises(ConfigError, match="RUNNING"):
        build_config({"stale_after_state": "RUNNING=1d"})
    with pytest.raises(ConfigError, match="STATE=DURATION"):
        build_config({"stale_after_state": "FAILED"})


def test_webhook_secrets_and_allow_list_from_env_and_flags() -> None:
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    config = load_config({"webhook_allow": ["10.0.0.0/8", "hooks.internal"]},
                         environ={"JOBWIRE_WEBHOOK_SECRET": f"{secret},{secret}"})
    assert config.webhook_secret == (secret, secret)
    assert config.webhook_allow == ("10.0.0.0/8", "hooks.internal")
    with pytest.raises(ConfigError, match="whsec_") as caught:
        load_config({"webhook_secret": ["not-a-secret"]}, environ={})
    assert "env" not in str(caught.value)
    with pytest.raises(ConfigError, match="webhook_allow"):
        build_config({"webhook_allow": "10.0.0.0/33/1"})


def test_boolean_settings_documented_with_a_no_flag_have_one() -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert parser.parse_args(["--no-integrity-check"]).integrity_check is False
    assert parser.parse_args(["--queue-concurrency-global"]).queue_concurrency_global is True


def test_a_database_url_is_checked_when_read() -> None:
    assert build_config({"db": "postgresql://u@h:5432/jobs?sslmode=require"}).db.endswith("sslmode=require")
    for bad, words in [("mysql://u@h/db", "unknown database URL scheme"), ("postgresql://u@h:x/db", "not a number"),
                       ("postgresql://u@h", "names no database"), ("postgresql://u@h/db?sslmode=sometimes", "sslmode")]:
        try:
            build_config({"db": bad})
        except ConfigError as exc:
            assert words in str(exc), exc
        else:
            raise AssertionError(f"{bad} was accepted")

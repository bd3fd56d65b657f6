"""The command-line conventions that need no process: size and duration parsers (one each, shared
by both CLIs), server URL checks, option types of both parsers, and one-line usage errors."""

from __future__ import annotations

import argparse

import pytest
from cloudfs_server import cli as server_cli
from cloudfs_server.cli.common import days_arg, duration_days_arg, quota_arg

from cloudfs import cli
from cloudfs.clitools import UsageError, server_url
from cloudfs.durations import format_duration, parse_duration
from cloudfs.sizes import parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4096", 4096), ("512M", 512 << 20), ("10G", 10 << 30), ("10g", 10 << 30), ("1.5T", 3 << 39),
     ("64MiB", 64 << 20), ("2KB", 2048), (" 7 ", 7)],
)  # fmt: skip
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "12Q", "-1", "G", "1 2", "0", "0.5"])
def test_bad_sizes_name_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_size_minimum() -> None:
    assert parse_size("0", minimum=0) == 0
    with pytest.raises(ValueError, match="at least 256 bytes"):
        parse_size("255", minimum=256)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1", 1.0), ("1.5", 1.5), ("500ms", 0.5), ("1s", 1.0), ("30m", 1800.0), ("12h", 43200.0),
     ("7d", 604800.0), ("2w", 1209600.0), ("1H", 3600.0), ("0", 0.0), (" 5 s ", 5.0)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1q", "-1s", "s", "1 h 2", "1e3", "inf", "nan"])
def test_bad_durations_name_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_duration_default_unit_and_format() -> None:
    assert parse_duration("30", default_unit="d") == 30 * 86400
    assert parse_duration("12h", default_unit="d") == 12 * 3600
    assert [format_duration(s) for s in (0.5, 90, 3600, 86400 * 30, 1.25)] == [
        "500ms", "90s", "1h", "30d", "1.25s"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "url"),
    [("http://localhost:8765", "http://localhost:8765"), ("https://drive.example/", "https://drive.example"),
     ("http://127.0.0.1:8765/", "http://127.0.0.1:8765")],
)  # fmt: skip
def test_server_urls(text: str, url: str) -> None:
    assert server_url(text) == url


def test_a_url_without_scheme_is_explained() -> None:
    with pytest.raises(UsageError) as info:
        server_url("localhost:8765")
    assert str(info.value) == "'localhost:8765' is not a server URL; write http://localhost:8765"
    assert info.value.exit_code == 2


@pytest.mark.parametrize("text", ["ftp://host", "http://", "http://host:port", "localhost"])
def test_other_malformed_urls(text: str) -> None:
    with pytest.raises(UsageError, match="is not a server URL"):
        server_url(text)


def test_client_options_take_units() -> None:
    args = cli.build_parser().parse_args(
        ["mount", "m", "--attr-timeout", "500ms", "--commit-timeout", "1m", "--cache-size", "2G",
         "--chunk-size", "64K", "--log-level", "debug"]
    )  # fmt: skip
    assert (args.attr_timeout, args.commit_timeout) == (0.5, 60.0)
    assert (args.cache_size, args.chunk_size, args.log_level) == (2 << 30, 64 << 10, "debug")
    defaults = cli.build_parser().parse_args(["mount", "m"])
    assert (defaults.attr_timeout, defaults.commit_timeout, defaults.cache_size) == (1, 8, 10 << 30)
    assert cli.build_parser().parse_args(["unmount", "m", "--timeout", "2m"]).timeout == 120.0


def test_server_options_take_units() -> None:
    parse = server_cli.build_parser().parse_args
    assert parse(["gc", "--data", "d", "--grace", "1h"]).grace_seconds == 3600
    assert parse(["gc", "--data", "d", "--grace-seconds", "90"]).grace_seconds == 90
    assert parse(["gc", "--data", "d"]).grace_seconds == 3600
    assert parse(["purge", "--data", "d", "--retention", "12h"]).retention_days == 0.5
    assert parse(["purge", "--data", "d", "--retention-days", "7"]).retention_days == 7
    assert parse(["purge", "--data", "d"]).retention_days == 30
    assert parse(["serve", "--data", "d", "--retention", "30d"]).retention_days == 30
    assert parse(["compact-log", "--data", "d", "--older-than", "2d"]).older_than_days == 2
    assert parse(["compact-log", "--data", "d", "--older-than-days", "3"]).older_than_days == 3
    assert parse(["add-user", "bob", "--data", "d", "--quota", "10G"]).quota == 10 << 30
    quota = parse(["set-quota", "bob", "5G", "--data", "d"])
    assert quota.quota_pos == 5 << 30
    serve = parse(["serve", "--data", "d", "--log-level", "warning", "--no-access-log"])
    assert (serve.log_level, serve.no_access_log) == ("warning", True)


def test_quota_and_day_types() -> None:
    assert [quota_arg(t) for t in ("none", "unlimited", "0", "1000", "1M")] == [
        None, None, 0, 1000, 1 << 20
    ]  # fmt: skip
    for bad in ("-5", "lots", "10Q"):
        with pytest.raises(argparse.ArgumentTypeError, match="or 'none'"):
            quota_arg(bad)
    assert days_arg("2") == 2 and days_arg("36h") == 1.5
    assert duration_days_arg("86400") == 1 and duration_days_arg("7d") == 7


def test_server_data_dir_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDFS_DATA", "/srv/cloudfs")
    assert server_cli.build_parser().parse_args(["fsck"]).data == "/srv/cloudfs"
    assert server_cli.build_parser().parse_args(["fsck", "--data", "x"]).data == "x"


@pytest.mark.parametrize(
    ("parser", "argv"),
    [(cli.build_parser, ["mount", "m", "--attr-timeout", "1q"]), (cli.build_parser, ["nope"]),
     (server_cli.build_parser, ["gc", "--data", "d", "--grace", "soon"]),
     (server_cli.build_parser, ["add-user", "bob", "--data", "d", "--quota", "10Q"])],
)  # fmt: skip
def test_usage_mistakes_are_one_line_and_exit_2(
    parser: object, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert callable(parser)
    with pytest.raises(SystemExit) as info:
        parser().parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and ": error: " in err, err

"""`PULLWAKE_*` variables and the log options, on every command, by one mechanism."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from pullwake.cli import build_parser, main
from pullwake.core import cliargs


def leaf_commands() -> list[tuple[list[str], argparse.ArgumentParser]]:
    return list(cliargs.subparsers(build_parser()))


def test_every_command_has_log_options_and_names_the_variable_of_every_option() -> None:
    commands = leaf_commands()
    names = {" ".join(w) for w, _ in commands}
    assert {"run", "server", "publish", "demo", "chaos", "proxy", "dashboards build"} <= names
    for words, parser in commands:
        dests = {a.dest for a in parser._actions}
        assert {"log_format", "log_level"} <= dests, words
        prefix = cliargs.command_prefix(words)
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            if isinstance(action, argparse._HelpAction):
                continue
            name = cliargs.env_name(prefix, action)
            assert f"[env {name}]" in (action.help or ""), (words, action.dest)


@pytest.mark.parametrize(
    ("words", "dest", "name"),
    [
        (["run"], "heartbeat_interval", "PULLWAKE_HEARTBEAT_INTERVAL"),  # run keeps its names
        (["server"], "port", "PULLWAKE_SERVER_PORT"),
        (["publish"], "runner_id", "PULLWAKE_PUBLISH_RUNNER_ID"),
        (["dashboards", "build"], "out", "PULLWAKE_DASHBOARDS_BUILD_OUT"),
        (["server"], "log_format", "PULLWAKE_LOG_FORMAT"),  # one for the whole deployment
        (["run"], "log_level", "PULLWAKE_LOG_LEVEL"),
    ],
)
def test_variable_names(words: list[str], dest: str, name: str) -> None:
    parser = dict((tuple(w), p) for w, p in leaf_commands())[tuple(words)]
    action = next(a for a in parser._actions if a.dest == dest)
    assert cliargs.env_name(cliargs.command_prefix(words), action) == name


def parse(argv: list[str], monkeypatch: pytest.MonkeyPatch, **env: str) -> argparse.Namespace:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    args = build_parser().parse_args(argv)
    cliargs.check_env(args)
    return args


def test_values_are_typed_and_the_command_line_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    args = parse(
        ["server"],
        monkeypatch,
        PULLWAKE_SERVER_PORT="5001",
        PULLWAKE_SERVER_LONG_POLL_TIMEOUT="2.5",
        PULLWAKE_SERVER_NO_DEV_PRINCIPAL="yes",
        PULLWAKE_SERVER_COMPAT="upstream",
        PULLWAKE_LOG_FORMAT="json",
    )
    assert (args.port, args.long_poll_timeout, args.no_dev_principal) == (5001, 2.5, True)
    assert args.compat == "upstream" and args.log_format == "json"
    assert args.log_level == "warning"  # the server's own default level
    args = parse(["server", "--port", "7"], monkeypatch)
    assert args.port == 7
    args = parse(["server"], monkeypatch, PULLWAKE_SERVER_NO_DEV_PRINCIPAL="false")
    assert args.no_dev_principal is False


def test_required_options_and_lists_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    args = parse(["publish"], monkeypatch, PULLWAKE_PUBLISH_RUNNER_ID="r9")
    assert args.runner_id == "r9"
    args = parse(["stack", "trickle"], monkeypatch, PULLWAKE_STACK_TRICKLE_RUNNER_ID="a, b")
    assert args.runner_id == ["a", "b"]
    args = parse(["dashboards", "build"], monkeypatch, PULLWAKE_DASHBOARDS_BUILD_OUT="/tmp/x")
    assert args.out == Path("/tmp/x")


def test_a_bad_variable_only_fails_the_command_that_uses_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PULLWAKE_SERVER_PORT", "http")
    args = parse(["publish", "--runner-id", "r1"], monkeypatch)  # not the server's problem
    assert args.count == 1
    with pytest.raises(cliargs.CLIError, match="PULLWAKE_SERVER_PORT='http': --port: not an int"):
        parse(["server"], monkeypatch)


@pytest.mark.parametrize(
    ("env", "argv", "message"),
    [
        ({"PULLWAKE_SERVER_PORT": "http"}, ["server"], "--port: not an integer"),
        ({"PULLWAKE_SERVER_COMPAT": "nope"}, ["server"], "want pullwake or upstream"),
        ({"PULLWAKE_SERVER_NO_DEV_PRINCIPAL": "maybe"}, ["server"], "want true or false"),
        ({"PULLWAKE_LOG_FORMAT": "xml"}, ["docs", "metrics", "--check"], "--log-format"),
        ({}, ["publish", "--runner-id", "r", "--log-level", "loud"], "--log-level"),
    ],
)
def test_bad_values_are_one_line_exit_2(
    env: dict[str, str],
    argv: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pullwake: error:") and message in err[0], err


def test_ds_entry_point_takes_its_variables() -> None:
    """`python -m pullwake.server.ds`: the same mechanism, PULLWAKE_DS_*."""
    out = subprocess.run(
        [sys.executable, "-m", "pullwake.server.ds", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "PULLWAKE_DS_PORT" in out and "PULLWAKE_LOG_FORMAT" in out
    bad = subprocess.run(
        [sys.executable, "-m", "pullwake.server.ds"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PULLWAKE_DS_PORT": "x", "PATH": "/usr/bin:/bin"},
    )
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines() == [
        "pullwake ds: error: PULLWAKE_DS_PORT='x': --port: not an integer"
    ]

"""`pullwake` command line: one subcommand per concern.

Each subcommand lives with the package that owns it and exposes
`register(subparsers)`, which adds its parser and sets `func` to a callable
taking the parsed namespace and returning an exit code.  Modules keep their
heavy imports inside functions so `pullwake --help` stays fast.

Added here to every (leaf) command, in one place: `--log-format` /
`--log-level` and the `PULLWAKE_*` variable of each option
(`pullwake.core.cliargs`).  A command that wants another default log level
sets `log_level_default` with `set_defaults`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pullwake import __version__
from pullwake.core import cliargs
from pullwake.core.errors import CLIError

# (module that registers the subcommand), in the order --help lists them.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "pullwake.server.cli",  # server, publish
    "pullwake.runner.cli",  # run
    "pullwake.tools.demo",  # demo
    "pullwake.tools.chaos",  # chaos
    "pullwake.tools.faultproxy_cli",  # proxy
    "pullwake.dashboards.cli",  # dashboards build
    "pullwake.tools.alertsink",  # alerts sink
    "pullwake.tools.stack",  # stack up
    "pullwake.tools.docs",  # docs
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pullwake",
        description=(
            "A pull-wake runner that never lies about its stream, the server it talks "
            "to, and the observability that proves it."
        ),
    )
    parser.add_argument("--version", action="version", version=f"pullwake {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency: surface it
                raise
            continue
        module.register(sub)
    for words, command in cliargs.subparsers(parser):
        if not any(a.dest == "log_format" for a in command._actions):
            cliargs.add_log_options(command, command.get_default("log_level_default") or "info")
        cliargs.apply_env(command, cliargs.command_prefix(words))
    return parser


def setup_logging(args: argparse.Namespace) -> None:
    """The process's log handler, before the command runs (one-line error if bad)."""
    from pullwake.core.logformat import configure_logging

    fmt = getattr(args, "log_format", None) or "text"
    level = getattr(args, "log_level", None) or "info"
    try:
        configure_logging(str(fmt), str(level))
    except ValueError as exc:
        flag = "--log-format" if "format" in str(exc) else "--log-level"
        raise CLIError(f"{flag}: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        cliargs.check_env(args)
        setup_logging(args)
        return int(func(args) or 0)
    except CLIError as exc:
        print(f"pullwake: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

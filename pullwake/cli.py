"""`pullwake` command line: one subcommand per concern.

Each subcommand lives with the package that owns it and exposes
`register(subparsers)`, which adds its parser and sets `func` to a callable
taking the parsed namespace and returning an exit code.  Modules keep their
heavy imports inside functions so `pullwake --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pullwake import __version__
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except CLIError as exc:
        print(f"pullwake: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

"""`PULLWAKE_*` environment variables for every command's options: one mechanism.

A container or a unit file sets the environment, not the argv, so every
option of every command can come from a variable (the command line wins):

- `pullwake run`: `PULLWAKE_<OPTION>` (`--heartbeat-interval` ->
  `PULLWAKE_HEARTBEAT_INTERVAL`), the names it always had;
- every other command: `PULLWAKE_<COMMAND>_<OPTION>` (`pullwake server
  --port` -> `PULLWAKE_SERVER_PORT`, `pullwake dashboards build --out` ->
  `PULLWAKE_DASHBOARDS_BUILD_OUT`), so a shell exporting the server's port
  does not move the fault proxy's;
- `--log-format` / `--log-level`, on every command: `PULLWAKE_LOG_FORMAT` /
  `PULLWAKE_LOG_LEVEL` (one setting for a whole deployment).

`--help` names the variable of each option.  A bad value is found when the
command that has it runs (not when another one does) and is one line:
`PULLWAKE_SERVER_PORT='x': --port: not an int`.  Flags take
true/false/1/0/yes/no/on/off; repeatable options a comma-separated list.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Mapping
from typing import Any, Final

from pullwake.core.errors import CLIError

PREFIX: Final = "PULLWAKE_"
SHARED: Final = frozenset({"log_format", "log_level"})
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"", "0", "false", "no", "off"})


class BadEnv:
    """A default that failed to parse: raised by `check_env` only if its command runs."""

    def __init__(self, message: str) -> None:
        self.message = message

    def __repr__(self) -> str:  # what --help would show as the default
        return "(invalid)"


def env_name(prefix: str, action: argparse.Action) -> str:
    dest = action.dest
    base = PREFIX if dest in SHARED else prefix
    return base + dest.upper()


def add_log_options(parser: argparse.ArgumentParser, level: str = "info") -> None:
    """`--log-format` and `--log-level` (checked by `logformat.configure_logging`)."""
    from pullwake.core.logformat import FORMATS, LEVELS

    parser.add_argument(
        "--log-format",
        default="text",
        metavar="FORMAT",
        help=f"{' or '.join(FORMATS)}: json is one object per line with trace_id/span_id"
        " (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default=level,
        metavar="LEVEL",
        help=f"{', '.join(LEVELS)} (default: %(default)s)",
    )


def _convert(action: argparse.Action, raw: str) -> Any:
    flag = action.option_strings[-1]
    if isinstance(action, argparse._StoreConstAction):  # store_true / store_false
        low = raw.strip().lower()
        if low not in _TRUE | _FALSE:
            raise ValueError(f"{flag}: want true or false")
        return action.const if low in _TRUE else action.default
    values = [raw]
    if isinstance(action, argparse._AppendAction):
        values = [v.strip() for v in raw.split(",") if v.strip()]
    out: list[Any] = []
    for text in values:
        v: Any = text
        if action.type is not None:
            try:
                v = action.type(text)  # type: ignore[operator]
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                kind = {int: "an integer", float: "a number"}.get(action.type, "valid")  # type: ignore[call-overload]
                raise ValueError(f"{flag}: not {kind}") from None
        if action.choices is not None and v not in action.choices:
            raise ValueError(f"{flag}: want {' or '.join(map(str, action.choices))}")
        out.append(v)
    return out if isinstance(action, argparse._AppendAction) else out[0]


def _env_actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        if isinstance(action, argparse._CountAction):
            continue
        yield action


def apply_env(
    parser: argparse.ArgumentParser, prefix: str, env: Mapping[str, str] | None = None
) -> None:
    """Name each option's variable in --help and take its value as the default."""
    env = os.environ if env is None else env
    for action in _env_actions(parser):
        name = env_name(prefix, action)
        note = f"[env {name}]"
        action.help = f"{action.help} {note}" if action.help else note
        raw = env.get(name)
        if raw is None or (raw == "" and not isinstance(action, argparse._StoreConstAction)):
            continue
        try:
            value: Any = _convert(action, raw)
        except ValueError as exc:
            value = BadEnv(f"{name}={raw!r}: {exc}")
        action.default = value
        parser.set_defaults(**{action.dest: value})
        action.required = False


def subparsers(
    parser: argparse.ArgumentParser,
) -> Iterator[tuple[list[str], argparse.ArgumentParser]]:
    """Every leaf command parser with its command words (`["dashboards", "build"]`)."""

    def walk(
        p: argparse.ArgumentParser, words: list[str]
    ) -> Iterator[tuple[list[str], argparse.ArgumentParser]]:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs and words:
            yield words, p
        for a in subs:
            seen: set[int] = set()
            for name, sp in a.choices.items():
                if id(sp) not in seen:  # aliases share a parser
                    seen.add(id(sp))
                    yield from walk(sp, [*words, name])

    yield from walk(parser, [])


def check_env(args: argparse.Namespace) -> None:
    """Raise the one-line error of a bad variable this command uses."""
    for value in vars(args).values():
        if isinstance(value, BadEnv):
            raise CLIError(value.message)


def command_prefix(words: list[str]) -> str:
    """`PULLWAKE_` for `run` (its names predate the rest), else `PULLWAKE_<WORDS>_`."""
    if words == ["run"]:
        return PREFIX
    return PREFIX + "_".join(w.upper().replace("-", "_") for w in words) + "_"

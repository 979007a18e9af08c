"""`pullwake run`: the runner from the command line.

Every option can also come from a `PULLWAKE_<OPTION>` environment variable
(the command line wins; the mechanism is `pullwake.core.cliargs`, the same for
every command; `--log-format` / `--log-level` are added there too).  Values
are parsed here, not by argparse, so a bad value gives one line
(`pullwake: error: ...`, exit 2) and never a usage dump or a traceback.
SIGINT/SIGTERM stop the runner cleanly (exit 0); SIGHUP ends the live read
and reconnects at once (reason `forced`), like `POST /reconnect`.  An unreachable
server at start is not an error: the runner stays `connecting` and backs off.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pullwake.core.protocol import DEV_PRINCIPAL, LiveMode

if TYPE_CHECKING:
    from pullwake.core.telemetry import Telemetry
    from pullwake.runner.config import RunnerConfig
    from pullwake.runner.core import Runner
    from pullwake.runner.observe import RunnerObserver

# (flag, env var, default, help) - the single list behind parser and --help; the
# env var is `cliargs`' name for the option (PULLWAKE_ + option), named here for readers.
OPTIONS: list[tuple[str, str, str | None, str]] = [
    ("--server", "PULLWAKE_SERVER", None, "server base URL, e.g. http://127.0.0.1:4437 (required)"),
    ("--runner-id", "PULLWAKE_RUNNER_ID", None, "this runner's id (required)"),
    ("--label", "PULLWAKE_LABEL", "pullwake runner", "label sent at registration"),
    (
        "--kind",
        "PULLWAKE_KIND",
        "local",
        "runner kind sent at registration: local, cloud-worker, sandbox, ci or server",
    ),
    ("--live", "PULLWAKE_LIVE", "sse", "live read mode: sse or long-poll"),
    (
        "--heartbeat-interval",
        "PULLWAKE_HEARTBEAT_INTERVAL",
        "10",
        "seconds between heartbeats (lease = 3 x interval)",
    ),
    (
        "--heartbeat-timeout",
        "PULLWAKE_HEARTBEAT_TIMEOUT",
        None,
        "seconds one heartbeat may take (default: min(5, interval))",
    ),
    (
        "--heartbeat-failure-threshold",
        "PULLWAKE_HEARTBEAT_FAILURE_THRESHOLD",
        "2",
        "K: consecutive heartbeat failures in a session that reset the stream (heartbeat bridge)",
    ),
    (
        "--idle-timeout",
        "PULLWAKE_IDLE_TIMEOUT",
        None,
        "seconds without a byte (and without a tail probe finding the stream idle) before"
        " the SSE stream counts as dead (default: 3 x the server's Stream-Keepalive-Interval,"
        " else 45: the real agents-server only sends control events every 30 s)",
    ),
    (
        "--tail-probe-interval",
        "PULLWAKE_TAIL_PROBE_INTERVAL",
        "10",
        "while the live read is silent, ask the wake stream's tail on a fresh connection"
        " every this many seconds; a tail beyond the read offset ends the session"
        " (tail_ahead); 0 = off",
    ),
    (
        "--tail-probe-grace",
        "PULLWAKE_TAIL_PROBE_GRACE",
        "2",
        "seconds the live read has to deliver a tail the probe saw ahead",
    ),
    (
        "--callback-origin",
        "PULLWAKE_CALLBACK_ORIGIN",
        "claim",
        "where claim callbacks go: claim (the absolute URL in the claim answer, as upstream)"
        " or server (its path on --server, for a runner that reaches the server by another"
        " address than the one the server builds callback URLs from)",
    ),
    (
        "--callback-heartbeat-interval",
        "PULLWAKE_CALLBACK_HEARTBEAT_INTERVAL",
        "10",
        "seconds between {epoch} lease heartbeats to a claim's callback while its handler"
        " runs (the server's claim lease is 30 s)",
    ),
    (
        "--connect-timeout",
        "PULLWAKE_CONNECT_TIMEOUT",
        "5",
        "seconds for connect and for the response headers of each attempt",
    ),
    (
        "--long-poll-timeout",
        "PULLWAKE_LONG_POLL_TIMEOUT",
        "35",
        "seconds one long-poll request may take before it counts as dead (long-poll mode)",
    ),
    (
        "--backoff-max",
        "PULLWAKE_BACKOFF_MAX",
        "30",
        "cap of the reconnect backoff in seconds (1 s doubling, full jitter)",
    ),
    (
        "--offset-file",
        "PULLWAKE_OFFSET_FILE",
        None,
        "file keeping the committed offset"
        " (atomic writes); resumed at restart (default: none, start from -1)",
    ),
    (
        "--handler",
        "PULLWAKE_HANDLER",
        None,
        "shell command run once per claim: the claim notification JSON on stdin,"
        " PULLWAKE_WAKE_ID, PULLWAKE_ENTITY_URL, PULLWAKE_STREAM_PATH, PULLWAKE_STREAM_OFFSET"
        " in env; exit 0 acks the work, non-zero acks nothing and the claim lease (30 s"
        " after the last lease heartbeat) expires, so the server announces it again"
        " (default: log the claim)",
    ),
    (
        "--handler-timeout",
        "PULLWAKE_HANDLER_TIMEOUT",
        "300",
        "seconds a handler may run; then it (for --handler, its whole process group) is"
        " killed and the wake counts as failed: its claim expires and it is delivered"
        " again; 0 = no limit",
    ),
    ("--concurrency", "PULLWAKE_CONCURRENCY", "4", "wakes handled at the same time"),
    (
        "--queue-size",
        "PULLWAKE_QUEUE_SIZE",
        "64",
        "wakes waiting for a worker; when full, reading the stream pauses (nothing is dropped)",
    ),
    (
        "--status-listen",
        "PULLWAKE_STATUS_LISTEN",
        None,
        "HOST:PORT of the status listener (/healthz, /readyz, /status, /metrics,"
        " POST /reconnect); default: off",
    ),
    (
        "--status-token",
        "PULLWAKE_STATUS_TOKEN",
        None,
        "bearer token POST /reconnect needs; without one, /reconnect is answered only on a"
        " loopback listener",
    ),
    (
        "--resume-threshold",
        "PULLWAKE_RESUME_THRESHOLD",
        None,
        "seconds the runner may be away (system asleep, process frozen) before it ends the"
        " live read and reconnects at once (default: the heartbeat interval; 0 = off)",
    ),
    (
        "--profile",
        "PULLWAKE_PROFILE",
        "default",
        "default (every detector), upstream (heartbeat"
        " bridge only) or legacy (the seed's runner, bug included)",
    ),
    (
        "--principal",
        "PULLWAKE_PRINCIPAL",
        DEV_PRINCIPAL,
        "electric-principal header: kind:name or /principal/<kind%%3Aname>",
    ),
]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run",
        help="run a pull-wake runner",
        description="Register, stream the wake stream, heartbeat, claim and dispatch wakes. "
        "Every option can also be set with the environment variable named in its help.",
    )
    for flag, _env, default, text in OPTIONS:
        shown = "none" if default is None else default
        p.add_argument(flag, default=None, help=f"{text} (default: {shown})")
    p.set_defaults(func=run, log_level_default="info")


def _values(args: argparse.Namespace) -> dict[str, str | None]:
    """Command line, else its PULLWAKE_* variable (both in `args`), else the default."""
    out: dict[str, str | None] = {}
    for flag, _env, default, _ in OPTIONS:
        key = flag[2:].replace("-", "_")
        value = getattr(args, key, None)
        out[key] = default if value is None or value == "" else value
    return out


def _number(name: str, text: str | None, kind: Callable[[str], Any] = float) -> Any:
    from pullwake.core.errors import CLIError

    if text is None:
        return None
    try:
        return kind(text)
    except ValueError:
        raise CLIError(f"--{name.replace('_', '-')}: not a number: {text!r}") from None


def config_from_args(args: argparse.Namespace) -> RunnerConfig:
    from pullwake.core.errors import CLIError
    from pullwake.runner.config import ConfigError, RunnerConfig, parse_listen, profile_named

    v = _values(args)
    for required in ("server", "runner_id"):
        if not v[required]:
            flag = required.replace("_", "-")
            raise CLIError(f"--{flag} is required (or PULLWAKE_{required.upper()})")
    try:
        live = LiveMode(str(v["live"]))
    except ValueError:
        raise CLIError(f"--live: want sse or long-poll, got {v['live']!r}") from None
    try:
        if v["status_listen"]:
            parse_listen(v["status_listen"])
        return RunnerConfig(
            server=str(v["server"]),
            runner_id=str(v["runner_id"]),
            label=str(v["label"]),
            kind=str(v["kind"]),
            live=live,
            heartbeat_interval=_number("heartbeat_interval", v["heartbeat_interval"]),
            heartbeat_timeout=_number("heartbeat_timeout", v["heartbeat_timeout"]),
            heartbeat_failure_threshold=_number(
                "heartbeat_failure_threshold", v["heartbeat_failure_threshold"], int
            ),
            idle_timeout=_number("idle_timeout", v["idle_timeout"]),
            tail_probe_interval=_number("tail_probe_interval", v["tail_probe_interval"]),
            tail_probe_grace=_number("tail_probe_grace", v["tail_probe_grace"]),
            callback_heartbeat_interval=_number(
                "callback_heartbeat_interval", v["callback_heartbeat_interval"]
            ),
            callback_origin=str(v["callback_origin"]),
            connect_timeout=_number("connect_timeout", v["connect_timeout"]),
            long_poll_timeout=_number("long_poll_timeout", v["long_poll_timeout"]),
            backoff_max=_number("backoff_max", v["backoff_max"]),
            offset_file=v["offset_file"],
            handler_cmd=v["handler"],
            handler_timeout=_number("handler_timeout", v["handler_timeout"]),
            concurrency=_number("concurrency", v["concurrency"], int),
            queue_size=_number("queue_size", v["queue_size"], int),
            status_listen=v["status_listen"],
            status_token=v["status_token"],
            resume_threshold=_number("resume_threshold", v["resume_threshold"]),
            principal=str(v["principal"]),
            profile=profile_named(str(v["profile"])),
        )
    except ConfigError as exc:
        raise CLIError(str(exc)) from None


def build_runner(config: RunnerConfig, observer: RunnerObserver | None = None) -> Runner:
    """The one place the CLI constructs a Runner.

    The telemetry layer passes its observer here and may hang a `/metrics`
    renderer on the returned runner's `metrics` attribute.
    """
    from pullwake.runner.core import Runner

    return Runner(config, observer=observer)


async def serve(runner: Runner) -> None:
    """Run `runner` with its status listener until SIGINT/SIGTERM."""
    from pullwake.core.errors import CLIError
    from pullwake.runner.config import parse_listen
    from pullwake.runner.status import StatusServer

    status = None
    if runner.config.status_listen:
        host, port = parse_listen(runner.config.status_listen)
        status = StatusServer(runner, host, port)
        try:
            await status.start()
        except OSError as exc:
            raise CLIError(f"cannot listen on {runner.config.status_listen}: {exc}") from None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, runner.stop)
    loop.add_signal_handler(signal.SIGHUP, runner.reconnect_now)  # reason `forced`
    try:
        await runner.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if status is not None:
            await status.stop()


def run(args: argparse.Namespace) -> int:
    from pullwake.core.errors import CLIError
    from pullwake.core.logformat import set_log_fields
    from pullwake.runner.config import ConfigError

    config = config_from_args(args)
    set_log_fields(**{"runner.id": config.runner_id})
    try:
        runner = build_runner(config)
    except ConfigError as exc:  # the offset file: unreadable, clobbered, unwritable
        raise CLIError(str(exc)) from None
    telemetry = _telemetry(runner)
    telemetry.attach_logs()  # service.name/instance in JSON lines; OTLP logs when on
    try:
        asyncio.run(serve(runner))
    finally:
        telemetry.shutdown(3.0)  # bounded flush, even with the collector down
    return 0


def _telemetry(runner: Runner) -> Telemetry:
    """OTel observer, `/metrics` and traceparent from the `OTEL_*` environment."""
    from pullwake.core.errors import CLIError
    from pullwake.core.telemetry import TelemetryConfigError
    from pullwake.runner.otel import instrument_runner

    try:
        return instrument_runner(runner)
    except TelemetryConfigError as exc:
        raise CLIError(f"telemetry: {exc}") from None

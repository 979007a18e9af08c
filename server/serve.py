"""Run the app until SIGINT/SIGTERM, then shut down fast and exit 0.

aiohttp's defaults would keep open SSE responses alive for up to 60 s after a
signal; here `on_shutdown` ends every live read at once and in-flight
requests get `shutdown_timeout` (1 s) to finish.  The telemetry flush gets
what is left of `EXIT_BUDGET_S`, so an unreachable collector cannot push the
exit past the promised 2 s (a reachable one flushes in milliseconds).  When
the flush did not finish, an exporter thread is still blocked on that
collector and interpreter teardown would wait on it too (measured 0.5-0.9 s
more): the process then leaves with `os._exit` once everything of ours is
closed and flushed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import sys
import time

from aiohttp import web

from pullwake.core.errors import CLIError
from pullwake.core.telemetry import TelemetryConfigError
from pullwake.server.config import ServerConfig
from pullwake.server.otel import create_instrumented_app

log = logging.getLogger("pullwake.server")

EXIT_BUDGET_S = 1.2  # signal -> exit, telemetry flush included (promised: 2 s)
MIN_FLUSH_S = 0.2  # even a late flush gets this long
START_FAILED_FLUSH_S = 3.0  # no signal to count from: telemetry's own default bound


async def _serve(config: ServerConfig) -> tuple[int, bool]:
    """Serve until a signal; returns (exit code, telemetry flushed in time)."""
    try:
        app, telemetry = create_instrumented_app(config)  # create_app + OTel + /metrics
    except sqlite3.Error as exc:
        raise CLIError(f"cannot open database {config.db}: {exc}") from None
    except TelemetryConfigError as exc:
        raise CLIError(f"telemetry: {exc}") from None
    telemetry.attach_logs()  # service.name/instance in JSON lines; OTLP logs when on
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=config.shutdown_timeout,
        handler_cancellation=True,
        access_log=None,
    )
    await runner.setup()
    stopped_at: float | None = None
    flushed = True
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, config.host, config.port, backlog=4096)
        try:
            await site.start()
        except OSError as exc:
            raise CLIError(
                f"cannot listen on {config.host}:{config.port}: {exc.strerror}"
            ) from None
        log.info("listening on http://%s:%d (db %s)", config.host, config.port, config.db)
        print(
            f"pullwake server listening on http://{config.host}:{config.port} (db {config.db})",
            flush=True,
        )
        await stop.wait()
        stopped_at = time.monotonic()
        log.info("shutting down")
        print("pullwake server shutting down", flush=True)
    finally:
        await runner.cleanup()
        flush = START_FAILED_FLUSH_S
        if stopped_at is not None:
            flush = max(MIN_FLUSH_S, EXIT_BUDGET_S - (time.monotonic() - stopped_at))
        flushed = telemetry.shutdown(flush)  # bounded, even with the collector down
    return 0, flushed


def serve(config: ServerConfig) -> int:
    """Log output is set up by the CLI (`--log-format`, `--log-level`) before this."""
    code, flushed = asyncio.run(_serve(config))
    if not flushed:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # not wait for the exporter thread stuck on a dead collector
    return code

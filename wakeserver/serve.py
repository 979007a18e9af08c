"""Run the app until SIGINT/SIGTERM, then shut down fast and exit 0.

aiohttp's defaults would keep open SSE responses alive for up to 60 s after a
signal; here `on_shutdown` ends every live read at once and in-flight
requests get `shutdown_timeout` (1 s) to finish.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
import sys

from aiohttp import web

from pullwake.cli import CLIError
from pullwake.telemetry import TelemetryConfigError
from wakeserver.config import ServerConfig
from wakeserver.otel import create_instrumented_app

log = logging.getLogger("wakeserver")


async def _serve(config: ServerConfig) -> int:
    try:
        app, telemetry = create_instrumented_app(config)  # create_app + OTel + /metrics
    except sqlite3.Error as exc:
        raise CLIError(f"cannot open database {config.db}: {exc}") from None
    except TelemetryConfigError as exc:
        raise CLIError(f"telemetry: {exc}") from None
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=config.shutdown_timeout,
        handler_cancellation=True,
        access_log=None,
    )
    await runner.setup()
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
        print(
            f"pullwake server listening on http://{config.host}:{config.port} (db {config.db})",
            flush=True,
        )
        await stop.wait()
        print("pullwake server shutting down", flush=True)
    finally:
        await runner.cleanup()
        telemetry.shutdown(3.0)  # bounded flush, even with the collector down
    return 0


def serve(config: ServerConfig) -> int:
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    return asyncio.run(_serve(config))

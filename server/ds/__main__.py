"""`python -m pullwake.server.ds`: the Durable Streams server alone (conformance, benchmarks).

The full pullwake server mounts the same routes (`pullwake.server.ds.http.add_routes`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiohttp import web

from pullwake.server.ds.http import DSConfig, DSServer, create_app


async def _serve(args: argparse.Namespace) -> None:
    config = DSConfig(
        long_poll_timeout=args.long_poll_timeout,
        compat_upstream=args.compat == "upstream",
        keepalive_interval=args.keepalive_interval,
    )
    ds = DSServer.open(args.db, config, webhooks=not args.no_webhooks)
    runner = web.AppRunner(create_app(ds), handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, backlog=4096)
    await site.start()
    port = runner.addresses[0][1] if runner.addresses else args.port
    ds.base_url = f"http://{args.host}:{port}"
    ds.subs.base_url = ds.base_url
    print(f"pullwake ds listening on http://{args.host}:{port} (db {args.db})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    from pullwake.core import cliargs
    from pullwake.core.errors import CLIError
    from pullwake.core.logformat import configure_logging

    p = argparse.ArgumentParser(prog="python -m pullwake.server.ds", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4437)
    p.add_argument("--db", default="./pullwake-ds.db")
    p.add_argument("--long-poll-timeout", type=float, default=30.0, metavar="SECONDS")
    p.add_argument("--keepalive-interval", type=float, default=15.0, metavar="SECONDS")
    p.add_argument("--compat", choices=["pullwake", "upstream"], default="pullwake")
    p.add_argument("--no-webhooks", action="store_true")
    cliargs.add_log_options(p, "warning")
    cliargs.apply_env(p, cliargs.PREFIX + "DS_")  # PULLWAKE_DS_PORT, ...
    args = p.parse_args()
    try:
        cliargs.check_env(args)
        configure_logging(args.log_format, args.log_level)
    except (CLIError, ValueError) as exc:
        raise SystemExit(f"pullwake ds: error: {exc}") from None
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()

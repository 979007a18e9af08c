"""`pullwake stack up`: the docker-compose stack without Docker, on loopback ports.

Why a native twin: Docker cannot pull images on every machine (not on CI here),
but the server, runners, Prometheus and Alertmanager all run as plain
processes.  `stack up` starts them on `pullwake.tools.supervise` with the same rules
and Alertmanager routes as the compose stack (see `pullwake.tools.stackplan`), prints
the URLs, and on Ctrl-C (or after `--duration`) stops every child, leaving no
process behind.  Grafana and the collector join only when their binaries exist.

Also here: `stack wait` (the compose healthchecks and the telemetry gate) and
`stack trickle` (the publisher: a steady trickle of wakes that survives server
restarts).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from pullwake.core.addresses import parse_hostport
from pullwake.core.errors import CLIError

D = "(default: %(default)s)"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "stack",
        help="the observability stack without Docker (up), and compose helpers",
        description="Run pullwake with Prometheus and Alertmanager natively (`stack up`); "
        "`wait` and `trickle` are the helpers docker-compose.yml uses.",
    )
    sub = p.add_subparsers(dest="stack_command", metavar="ACTION", required=True)

    up = sub.add_parser(
        "up",
        help="start server, runners, publisher, Prometheus, Alertmanager and the alert sink",
        description="Start the stack on loopback ports from this machine's binaries "
        "(Debian packages prometheus and prometheus-alertmanager), with the rules, "
        "Alertmanager routes and Grafana dashboards generated into the workdir by the "
        "dashboards package (what `dashboards build` writes to deploy/), print the URLs, "
        "and run until Ctrl-C (or --duration), then stop every process. Grafana and the "
        "OpenTelemetry Collector start only when their binaries are on PATH.",
    )
    up.add_argument("--runners", type=int, default=2, help=f"number of runners {D}")
    up.add_argument(
        "--legacy-runners",
        type=int,
        default=1,
        metavar="N",
        help=f"how many of them (the last ones) run --profile legacy, the seed's runner {D}",
    )
    up.add_argument(
        "--base-port",
        type=int,
        default=0,
        metavar="P",
        help="server on P, Prometheus P+1, Alertmanager P+2, sink P+3, Grafana P+4, "
        "collector P+5..P+7, runners P+10...; 0 picks free ports (default: 0)",
    )
    up.add_argument(
        "--chaos",
        action="store_true",
        help="SIGKILL the server every --chaos-up seconds, restart it --chaos-down "
        "seconds later (default: off)",
    )
    up.add_argument(
        "--chaos-up", type=float, default=60.0, metavar="S", help=f"seconds between kills {D}"
    )
    up.add_argument(
        "--chaos-down",
        type=float,
        default=20.0,
        metavar="S",
        help=f"seconds the server stays down; over ~90 s fires the seed's alert {D}",
    )
    up.add_argument(
        "--publish-every", type=float, default=2.0, metavar="S", help=f"seconds between wakes {D}"
    )
    up.add_argument(
        "--duration",
        type=float,
        default=0.0,
        metavar="S",
        help="stop by itself after S seconds; 0 runs until Ctrl-C (default: 0)",
    )
    up.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="configs, data and logs go here (default: a new temporary directory, "
        "removed at exit unless --keep)",
    )
    up.add_argument("--keep", action="store_true", help="keep the workdir at exit (default: off)")
    up.add_argument(
        "--ready-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help=f"seconds each child has to answer its readiness check before the start fails {D}",
    )
    up.set_defaults(func=run_up)

    wait = sub.add_parser(
        "wait",
        help="wait until URLs answer 200 and TCP ports accept (compose healthchecks)",
        description="Exit 0 once every URL answers 200 to a GET and every --tcp "
        "HOST:PORT accepts a connection; exit 1 naming the first one still down "
        "after --timeout.",
    )
    wait.add_argument("urls", nargs="*", metavar="URL", help="URLs that must answer 200")
    wait.add_argument(
        "--tcp",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a TCP port that must accept a connection (repeatable; default: none)",
    )
    wait.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help=f"give up after S seconds {D}"
    )
    wait.set_defaults(func=run_wait)

    trickle = sub.add_parser(
        "trickle",
        help="publish a wake to each runner every few seconds, forever",
        description="The stack's publisher: `pullwake publish` in a loop. A failed "
        "publish (server down, runner not registered yet) prints one line and the "
        "loop goes on.",
    )
    trickle.add_argument("--server", default="http://127.0.0.1:4437", help=f"server base URL {D}")
    trickle.add_argument(
        "--runner-id", action="append", required=True, help="runner to wake (repeatable, required)"
    )
    trickle.add_argument(
        "--every", type=float, default=5.0, metavar="S", help=f"seconds between rounds {D}"
    )
    trickle.add_argument(
        "--count", type=int, default=0, help="rounds before exiting; 0 = forever (default: 0)"
    )
    trickle.set_defaults(func=run_trickle)


# --- stack wait ------------------------------------------------------------------------
def run_wait(args: argparse.Namespace) -> int:
    from pullwake.tools.supervise import HttpReady, PortReady, Readiness

    checks: list[Readiness] = [HttpReady(u, timeout=2.0) for u in args.urls]
    for hp in args.tcp:
        try:
            host, port = parse_hostport(hp)
        except ValueError:
            raise CLIError(f"--tcp wants HOST:PORT, got {hp!r}") from None
        checks.append(PortReady(host, port, timeout=2.0))
    if not checks:
        raise CLIError("nothing to wait for: give URLs and/or --tcp HOST:PORT")
    deadline = time.monotonic() + args.timeout
    for check in checks:
        while not check.check():
            if time.monotonic() >= deadline:
                print(f"not ready after {args.timeout:g}s: {check.describe()}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    return 0


# --- stack trickle -----------------------------------------------------------------------
def run_trickle(args: argparse.Namespace) -> int:
    from pullwake.server.cli import run_publish

    if not args.every > 0:
        raise CLIError(f"--every must be positive, got {args.every}")
    rounds = 0
    while args.count == 0 or rounds < args.count:
        for rid in args.runner_id:
            one = argparse.Namespace(
                server=args.server, runner_id=rid, count=1, payload=None, principal=None
            )
            try:
                run_publish(one)
            except CLIError as exc:
                print(f"trickle: {rid}: {exc}", file=sys.stderr, flush=True)
        rounds += 1
        time.sleep(args.every)
    return 0


# --- stack up ------------------------------------------------------------------------------
def run_up(args: argparse.Namespace) -> int:
    from pullwake.tools.stackrun import StackRun

    _validate_up(args)
    return StackRun(args).run()


def _validate_up(args: argparse.Namespace) -> None:
    if not 1 <= args.runners <= 50:
        raise CLIError(f"--runners must be 1-50, got {args.runners}")
    if not 0 <= args.legacy_runners <= args.runners:
        raise CLIError(f"--legacy-runners must be 0-{args.runners}, got {args.legacy_runners}")
    for name in ("chaos_up", "chaos_down", "publish_every", "ready_timeout"):
        if not getattr(args, name) > 0:
            raise CLIError(f"--{name.replace('_', '-')} must be positive")
    if args.duration < 0:
        raise CLIError("--duration must not be negative")
    if args.base_port and not 1024 <= args.base_port <= 65535 - 10 - args.runners:
        raise CLIError(f"--base-port {args.base_port} leaves no room for the stack's ports")

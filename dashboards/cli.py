"""`pullwake dashboards build [--out DIR] [--check]`: write or verify ./deploy (or DIR)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pullwake.core.errors import CLIError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "dashboards",
        help="generate Grafana dashboards, Prometheus rules and Alertmanager config",
        description="Dashboards and alerts as code: everything under deploy/ that is "
        "generated from the dashboards/ package.",
    )
    sub = p.add_subparsers(dest="dashboards_command", metavar="ACTION", required=True)
    b = sub.add_parser(
        "build",
        help="write the generated files (or check them with --check)",
        description="Generate Grafana dashboards JSON and provisioning, Prometheus alerting "
        "and recording rules with their promtool unit tests, and the Alertmanager config, "
        "from the default dashboards.config.Config.",
    )
    b.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="deploy directory to write into or check (default: ./deploy, relative to the "
        "current directory)",
    )
    b.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 naming every file that is missing or stale (default: off)",
    )
    b.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    from pullwake.dashboards.build import DEFAULT_OUT, generate, leftovers, stale, write
    from pullwake.dashboards.config import DEFAULT

    out: Path = args.out or DEFAULT_OUT
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is not a directory")
    files = generate(DEFAULT)
    if args.check:
        bad = stale(out, files)
        extra = leftovers(out, files)
        for rel in bad:
            what = "stale" if (out / rel).exists() else "missing"
            print(f"{what}: {out / rel}", file=sys.stderr)
        for rel in extra:
            print(f"not generated any more (delete it): {out / rel}", file=sys.stderr)
        if bad or extra:
            again = "pullwake dashboards build" + (f" --out {out}" if args.out else "")
            print(
                f"{len(bad) + len(extra)} generated file(s) out of date; run `{again}`",
                file=sys.stderr,
            )
            return 1
        print(f"{len(files)} generated files up to date in {out}")
        return 0
    try:
        written = write(out, files)
    except OSError as exc:
        raise CLIError(f"cannot write {exc.filename or out}: {exc.strerror or exc}") from None
    for path in written:
        print(f"wrote {path}")
    for rel in leftovers(out, files):
        print(f"warning: not generated any more, delete it: {out / rel}", file=sys.stderr)
    print(f"{len(files)} files, {len(written)} changed")
    return 0

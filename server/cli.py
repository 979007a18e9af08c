"""`pullwake server` and `pullwake publish`."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any

from pullwake.core.errors import CLIError

DEFAULTS_NOTE = "(default: %(default)s)"


def register(subparsers: Any) -> None:
    s = subparsers.add_parser(
        "server",
        help="run the pull-wake server (runners API + durable wake streams)",
        description=(
            "Serve the runners API under /_electric/runners and each runner's wake stream "
            "(Durable Streams reads: catch-up, long-poll, SSE), backed by SQLite in WAL mode. "
            "A published wake is on disk before its 201. SIGINT/SIGTERM end every live "
            "stream at once and exit 0. Env PULLWAKE_AUTH_TOKEN, when set, is a bearer "
            "token every API and stream request must carry. GET /healthz and GET /metrics "
            "(Prometheus text) need no auth. The standard OTEL_* variables configure OTLP "
            "export (OTEL_SDK_DISABLED=true turns telemetry off; "
            "see docs/metrics.md)."
        ),
    )
    s.add_argument("--host", default="127.0.0.1", help=f"address to listen on {DEFAULTS_NOTE}")
    s.add_argument("--port", type=int, default=4437, help=f"TCP port {DEFAULTS_NOTE}")
    s.add_argument(
        "--db", default="./pullwake.db", help=f"SQLite file, or :memory: {DEFAULTS_NOTE}"
    )
    s.add_argument(
        "--keepalive-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help=f"SSE comment at least this often on every live SSE read {DEFAULTS_NOTE}",
    )
    s.add_argument(
        "--long-poll-timeout",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help=f"a long-poll with no new data answers 204 after this {DEFAULTS_NOTE}",
    )
    s.add_argument(
        "--sse-rotate-seconds",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help=f"end each SSE response cleanly after this; clients resume {DEFAULTS_NOTE}",
    )
    s.add_argument(
        "--lease-ms",
        type=int,
        default=30_000,
        metavar="MS",
        help=f"runner liveness lease when a heartbeat names none {DEFAULTS_NOTE}",
    )
    s.add_argument(
        "--claim-lease",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help=f"a claim not completed within this is re-announced {DEFAULTS_NOTE}",
    )
    s.add_argument(
        "--retain",
        type=int,
        default=0,
        metavar="N",
        help="keep the last N events per wake stream, 0 = all; older offsets get 410. "
        "A wake that falls out before its runner read it is still claimable but no "
        f"longer announced, so N > 0 gives up 'acknowledged means delivered' {DEFAULTS_NOTE}",
    )
    s.add_argument(
        "--stream-grace",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="a live read that ended less than this ago still counts as open (the gap "
        "between two long-polls, a quick reconnect); the stream-mismatch health issue waits "
        f"this long too {DEFAULTS_NOTE}",
    )
    s.add_argument(
        "--shutdown-timeout",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help=f"grace for in-flight requests on SIGINT/SIGTERM {DEFAULTS_NOTE}",
    )
    s.add_argument(
        "--dev",
        action="store_true",
        help="development mode: a missing electric-principal means system:dev-local "
        "(default: off, a missing principal is 401)",
    )
    s.set_defaults(func=run_server)

    p = subparsers.add_parser(
        "publish",
        help="publish wakes to a runner's wake stream",
        description=(
            "POST wakes to /_electric/runners/ID/wakes of a registered runner; prints one JSON "
            'line per acknowledged wake ({"wake_id", "offset", "stream"}: on disk when printed). '
            "Env PULLWAKE_AUTH_TOKEN, when set, is sent as the bearer token. Errors are one "
            "line on stderr, exit status 2."
        ),
    )
    p.add_argument(
        "--server", default="http://127.0.0.1:4437", help=f"server base URL {DEFAULTS_NOTE}"
    )
    p.add_argument("--runner-id", required=True, help="the runner to wake (required)")
    p.add_argument("--count", type=int, default=1, help=f"number of wakes {DEFAULTS_NOTE}")
    p.add_argument(
        "--payload", default=None, help="JSON object attached to each wake (default: none)"
    )
    p.add_argument(
        "--principal",
        default=None,
        help="electric-principal header (default: none; a --dev server assumes system:dev-local)",
    )
    p.set_defaults(func=run_publish)


MAX_SECONDS = 24 * 3600.0  # no timing option makes sense beyond a day


def _positive(name: str, value: float, hi: float = MAX_SECONDS) -> None:
    """In (0, hi]; also rejects nan and inf, which would fail later as a 500."""
    if not 0 < value <= hi:
        raise CLIError(f"{name} must be positive and at most {hi:.12g}, got {value}")


def run_server(args: argparse.Namespace) -> int:
    from pullwake.server.claims import MAX_CLAIM_LEASE_MS
    from pullwake.server.config import ServerConfig
    from pullwake.server.serve import serve
    from pullwake.server.validate import MAX_LEASE_MS

    for name in ("keepalive_interval", "long_poll_timeout", "sse_rotate_seconds"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    _positive("--claim-lease", args.claim_lease, MAX_CLAIM_LEASE_MS / 1000)
    _positive("--lease-ms", args.lease_ms, MAX_LEASE_MS)
    if args.retain < 0 or not (
        0 <= args.stream_grace <= MAX_SECONDS and 0 <= args.shutdown_timeout <= MAX_SECONDS
    ):
        raise CLIError(
            "--retain, --stream-grace and --shutdown-timeout must not be negative "
            f"(and the last two at most {MAX_SECONDS:g})"
        )
    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be 0-65535, got {args.port}")
    config = ServerConfig(
        host=args.host,
        port=args.port,
        db=args.db,
        keepalive_interval=args.keepalive_interval,
        long_poll_timeout=args.long_poll_timeout,
        sse_rotate_seconds=args.sse_rotate_seconds,
        default_lease_ms=args.lease_ms,
        claim_lease_seconds=args.claim_lease,
        retain=args.retain,
        stream_grace_seconds=args.stream_grace,
        dev=args.dev,
        auth_token=os.environ.get("PULLWAKE_AUTH_TOKEN") or None,
        shutdown_timeout=args.shutdown_timeout,
    )
    return serve(config)


def run_publish(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.parse
    import urllib.request

    from pullwake.core.protocol import H_PRINCIPAL, RUNNER_ID_RE, RUNNERS_PREFIX

    if not RUNNER_ID_RE.match(args.runner_id):
        raise CLIError(f"bad --runner-id {args.runner_id!r}")
    if args.count < 1:
        raise CLIError("--count must be at least 1")
    payload: Any = {}
    if args.payload is not None:
        try:
            payload = json.loads(args.payload)
        except ValueError as exc:
            raise CLIError(f"--payload is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise CLIError("--payload must be a JSON object")
    headers = {"Content-Type": "application/json"}
    if args.principal:
        headers[H_PRINCIPAL] = args.principal
    token = os.environ.get("PULLWAKE_AUTH_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        parts = urllib.parse.urlsplit(args.server)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        ok = ok and (parts.port is None or parts.port > 0)  # raises on a non-numeric port
    except ValueError:
        ok = False
    if not ok:
        raise CLIError(
            f"--server must be an http(s) URL like http://127.0.0.1:4437, got {args.server!r}"
        )
    url = f"{args.server.rstrip('/')}{RUNNERS_PREFIX}/{args.runner_id}/wakes"
    data = json.dumps(payload).encode()
    for _ in range(args.count):
        req = urllib.request.Request(url, data=data, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                print(resp.read().decode().strip())
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", "replace")
            with contextlib.suppress(ValueError, KeyError, TypeError):
                detail = json.loads(detail)["error"]["message"]
            raise CLIError(f"publish failed: HTTP {err.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CLIError(f"cannot reach {args.server}: {reason}") from None
    sys.stdout.flush()
    return 0

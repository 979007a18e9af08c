"""`pullwake server` and `pullwake publish`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from typing import Any

from pullwake.core.errors import CLIError

DEFAULTS_NOTE = "(default: %(default)s)"
DEFAULT_ENTITY_TYPE = "pullwake"


def register(subparsers: Any) -> None:
    s = subparsers.add_parser(
        "server",
        help="run the server (an agents-server 0.6.4 look-alike with a Durable Streams server)",
        description=(
            "Serve what the real electric agents-server 0.6.4 serves to runners: the runners "
            "API (/_electric/runners: register, heartbeat, health, claim), the wake callbacks "
            "(/_electric/wake-callbacks/:consumerId), the entity API subset that makes wakes "
            "(/_electric/entity-types, /_electric/entities/<type>/<id>[/send|/signal]) and the "
            "embedded Durable Streams server (every other path: streams, reads, pull-wake "
            "subscriptions). Everything is in one SQLite file (WAL, synchronous=FULL): an "
            "acknowledged write survives kill -9. A missing electric-principal means "
            "system:dev-local, as upstream with its embedded DS (--no-dev-principal: 401). "
            "Ours on top, invisible to upstream clients: GET /_pullwake/runners/ID/stream (the "
            "server's own view of a runner's wake stream), GET /healthz, GET /metrics "
            "(Prometheus text). Env PULLWAKE_AUTH_TOKEN, when set, is a bearer token every "
            "request but /healthz, /metrics and the wake callbacks must carry. The standard "
            "OTEL_* variables configure OTLP export (OTEL_SDK_DISABLED=true turns telemetry "
            "off; see docs/metrics.md). SIGINT/SIGTERM end every live read at once and exit 0."
        ),
    )
    s.add_argument("--host", default="127.0.0.1", help=f"address to listen on {DEFAULTS_NOTE}")
    s.add_argument("--port", type=int, default=4437, help=f"TCP port {DEFAULTS_NOTE}")
    s.add_argument(
        "--db", default="./pullwake.db", help=f"SQLite file, or :memory: {DEFAULTS_NOTE}"
    )
    s.add_argument(
        "--compat",
        choices=("pullwake", "upstream"),
        default="pullwake",
        help="idle behaviour of live reads. 'upstream' reproduces the real server (embedded "
        "@durable-streams/server 0.3.7) exactly: an idle SSE read gets a pair of `event: "
        "control` every --long-poll-timeout seconds, no comments, no Stream-Keepalive-Interval "
        "header, and is never ended by the server. 'pullwake' adds an SSE comment every "
        "--keepalive-interval, the Stream-Keepalive-Interval header and a clean end every "
        "--sse-rotate-seconds, so a client can tell a silent dead stream from an idle one. "
        f"Everything else is the same in both {DEFAULTS_NOTE}",
    )
    s.add_argument(
        "--long-poll-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help=f"a long-poll with no new data answers 204 after this (upstream: 30) {DEFAULTS_NOTE}",
    )
    s.add_argument(
        "--keepalive-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help=f"--compat pullwake: SSE comment at least this often {DEFAULTS_NOTE}",
    )
    s.add_argument(
        "--sse-rotate-seconds",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help=f"--compat pullwake: end each SSE response cleanly after this {DEFAULTS_NOTE}",
    )
    s.add_argument(
        "--lease-ms",
        type=int,
        default=30_000,
        metavar="MS",
        help=f"runner liveness lease when a heartbeat names none (upstream: 30000) {DEFAULTS_NOTE}",
    )
    s.add_argument(
        "--claim-lease-ms",
        type=int,
        default=None,
        metavar="MS",
        help="pullwake-only, for tests: the claim lease of new runner subscriptions, "
        "1000-600000 (default: DS's 30000, as upstream). An un-acked claim is announced "
        "again as a new generation this long after its last ack",
    )
    s.add_argument(
        "--public-url",
        default=None,
        metavar="URL",
        help="base URL of the claims' callback URLs (upstream ELECTRIC_AGENTS_BASE_URL; "
        "default: http://HOST:PORT, 0.0.0.0 shown as 127.0.0.1)",
    )
    s.add_argument(
        "--stream-grace",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="server view: a live read that ended less than this ago still counts as open "
        f"(the gap between two long-polls) {DEFAULTS_NOTE}",
    )
    s.add_argument(
        "--shutdown-timeout",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help=f"grace for in-flight requests on SIGINT/SIGTERM {DEFAULTS_NOTE}",
    )
    s.add_argument(
        "--no-dev-principal",
        action="store_true",
        help="a request without a valid electric-principal is 401 Missing Electric-Principal "
        "(upstream with an external DS in production); default: it is system:dev-local",
    )
    s.add_argument("--dev", action="store_true", help=argparse.SUPPRESS)  # the old default
    s.set_defaults(func=run_server, log_level_default="warning")

    p = subparsers.add_parser(
        "publish",
        help="send messages that wake a runner (pullwake's convenience)",
        description=(
            "pullwake's convenience, not an upstream command: sends each payload as a message "
            "to an entity whose dispatch policy targets the runner, through the agents-server "
            "entity API (POST /_electric/entity-types, PUT /_electric/entities/<type>/<id>, "
            "POST .../send), which makes the server announce a wake on the runner's wake "
            "stream. Without --entity a fresh entity /pullwake/<random> is spawned for this "
            "invocation (entity type 'pullwake' created as needed); with --entity URL "
            "(/<type>/<id>) the messages go to that entity, spawned first if missing. Prints "
            'one JSON line per acknowledged message ({"entity", "stream", "offset", "txid", '
            '"subscription_id"}; on disk when printed). Works against the real agents-server '
            "too. Env PULLWAKE_AUTH_TOKEN, when set, is sent as the bearer token. Errors are one "
            "line on stderr, exit status 2."
        ),
    )
    p.add_argument(
        "--server", default="http://127.0.0.1:4437", help=f"server base URL {DEFAULTS_NOTE}"
    )
    p.add_argument("--runner-id", required=True, help="the runner to wake (required)")
    p.add_argument(
        "--entity", default=None, metavar="URL", help="send to this entity (/<type>/<id>)"
    )
    p.add_argument("--count", type=int, default=1, help=f"number of messages {DEFAULTS_NOTE}")
    p.add_argument(
        "payload",
        nargs="?",
        default=None,
        help="JSON message payload (default: null); --payload JSON also works",
    )
    p.add_argument("--payload", dest="payload_opt", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--principal",
        default=None,
        help="electric-principal header (default: none, i.e. system:dev-local)",
    )
    p.set_defaults(func=run_publish)


MAX_SECONDS = 24 * 3600.0  # no timing option makes sense beyond a day


def _positive(name: str, value: float, hi: float = MAX_SECONDS) -> None:
    """In (0, hi]; also rejects nan and inf, which would fail later as a 500."""
    if not 0 < value <= hi:
        raise CLIError(f"{name} must be positive and at most {hi:.12g}, got {value}")


def run_server(args: argparse.Namespace) -> int:
    from pullwake.server.config import ServerConfig
    from pullwake.server.serve import serve

    for name in ("keepalive_interval", "long_poll_timeout", "sse_rotate_seconds"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    if not 0 < args.lease_ms <= MAX_SECONDS * 1000:
        raise CLIError(f"--lease-ms must be positive and at most {MAX_SECONDS * 1000:.0f}")
    if args.claim_lease_ms is not None and not 1000 <= args.claim_lease_ms <= 600_000:
        raise CLIError(f"--claim-lease-ms must be 1000-600000, got {args.claim_lease_ms}")
    if not (0 <= args.stream_grace <= MAX_SECONDS and 0 <= args.shutdown_timeout <= MAX_SECONDS):
        raise CLIError(f"--stream-grace and --shutdown-timeout must be in [0, {MAX_SECONDS:g}]")
    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be 0-65535, got {args.port}")
    config = ServerConfig(
        host=args.host,
        port=args.port,
        db=args.db,
        dev_principal_fallback=not args.no_dev_principal,
        long_poll_timeout=args.long_poll_timeout,
        keepalive_interval=args.keepalive_interval,
        sse_rotate_seconds=args.sse_rotate_seconds,
        compat_upstream=args.compat == "upstream",
        default_lease_ms=args.lease_ms,
        claim_lease_ms=args.claim_lease_ms,
        stream_grace_seconds=args.stream_grace,
        public_url=args.public_url,
        auth_token=os.environ.get("PULLWAKE_AUTH_TOKEN") or None,
        shutdown_timeout=args.shutdown_timeout,
    )
    return serve(config)


def run_publish(args: argparse.Namespace) -> int:
    from pullwake.server.publish import Publisher, PublishError

    if args.count < 1:
        raise CLIError("--count must be at least 1")
    # getattr: callers build this Namespace by hand too (`pullwake stack trickle`)
    raw = args.payload if args.payload is not None else getattr(args, "payload_opt", None)
    payload: Any = None
    if raw is not None:
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            raise CLIError(f"payload is not JSON: {exc}") from None
    try:
        pub = Publisher(
            args.server, principal=args.principal, token=os.environ.get("PULLWAKE_AUTH_TOKEN")
        )
        entity = getattr(args, "entity", None) or f"/{DEFAULT_ENTITY_TYPE}/{uuid.uuid4().hex[:12]}"
        for _ in range(args.count):
            print(json.dumps(pub.send(args.runner_id, entity, payload)), flush=True)
    except PublishError as exc:
        raise CLIError(str(exc)) from None
    sys.stdout.flush()
    return 0

"""`pullwake alerts sink`: a small Alertmanager webhook receiver.

It prints one line per alert it receives, appends each one as a JSON line to
`--record FILE`, and serves what it has at `GET /alerts` (filter with
`?alertname=` and `?status=`).  The demo stack points Alertmanager at it, and
the end-to-end tests read `/alerts` to see an alert fire and resolve.

Parsing and formatting are pure functions (`parse_notification`,
`format_line`); the aiohttp handlers only move bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from pullwake.core.addresses import parse_hostport
from pullwake.core.errors import CLIError
from pullwake.core.protocol import utc_now_iso

MAX_KEPT = 10_000  # alerts kept in memory for GET /alerts (oldest dropped)


class BadNotification(ValueError):
    """The body is not an Alertmanager webhook notification."""


@dataclass(frozen=True)
class ReceivedAlert:
    received_at: str
    receiver: str
    status: str  # "firing" | "resolved"
    alertname: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str
    ends_at: str
    fingerprint: str


def _str_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise BadNotification(f"{what} must be an object of strings")
    return dict(value)


def parse_notification(payload: Any, received_at: str) -> list[ReceivedAlert]:
    """Alertmanager webhook payload (version 4) -> one record per alert."""
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
        raise BadNotification("expected an object with an `alerts` list")
    receiver = str(payload.get("receiver", ""))
    out = []
    for i, alert in enumerate(payload["alerts"]):
        if not isinstance(alert, dict):
            raise BadNotification(f"alerts[{i}] is not an object")
        labels = _str_map(alert.get("labels", {}), f"alerts[{i}].labels")
        status = alert.get("status", payload.get("status", ""))
        if status not in ("firing", "resolved"):
            raise BadNotification(f"alerts[{i}].status must be firing or resolved")
        out.append(
            ReceivedAlert(
                received_at=received_at,
                receiver=receiver,
                status=status,
                alertname=labels.get("alertname", ""),
                labels=labels,
                annotations=_str_map(alert.get("annotations", {}), f"alerts[{i}].annotations"),
                starts_at=str(alert.get("startsAt", "")),
                ends_at=str(alert.get("endsAt", "")),
                fingerprint=str(alert.get("fingerprint", "")),
            )
        )
    return out


def format_line(a: ReceivedAlert) -> str:
    """`<time> FIRING PullWakeX runner_id=r1 severity=critical -> receiver: summary`."""
    labels = " ".join(f"{k}={v}" for k, v in sorted(a.labels.items()) if k != "alertname")
    summary = a.annotations.get("summary", "")
    return f"{a.received_at} {a.status.upper()} {a.alertname} {labels} -> {a.receiver}: {summary}"


class Sink:
    """Holds what arrived; `record` writes one JSON line per alert and flushes."""

    def __init__(self, record: IO[str] | None, emit: Callable[[str], None]) -> None:
        self.alerts: deque[ReceivedAlert] = deque(maxlen=MAX_KEPT)
        self._record = record
        self._emit = emit

    def receive(self, alerts: list[ReceivedAlert]) -> None:
        for a in alerts:
            self.alerts.append(a)
            self._emit(format_line(a))
            if self._record is not None:
                self._record.write(json.dumps(asdict(a), sort_keys=True) + "\n")
                self._record.flush()

    def select(self, alertname: str | None, status: str | None) -> list[dict[str, Any]]:
        return [
            asdict(a)
            for a in self.alerts
            if (alertname is None or a.alertname == alertname)
            and (status is None or a.status == status)
        ]


def make_app(sink: Sink) -> Any:
    from aiohttp import web

    async def webhook(request: web.Request) -> web.Response:
        try:
            payload = json.loads(await request.read())
            alerts = parse_notification(payload, utc_now_iso())
        except (ValueError, UnicodeDecodeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        sink.receive(alerts)
        return web.json_response({"received": len(alerts)})

    async def list_alerts(request: web.Request) -> web.Response:
        q = request.query
        return web.json_response(sink.select(q.get("alertname"), q.get("status")))

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/alerts", list_alerts)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/{tail:.*}", webhook)
    return app


def parse_listen(text: str) -> tuple[str, int]:
    try:
        return parse_hostport(text)
    except ValueError:
        raise CLIError(f"--listen must be HOST:PORT, got {text!r}") from None


async def serve(host: str, port: int, sink: Sink) -> None:
    from aiohttp import web

    runner = web.AppRunner(make_app(sink))
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound = runner.addresses[0][1] if runner.addresses else port
    print(f"alert sink listening on http://{host}:{bound}/", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run_sink(args: argparse.Namespace) -> int:
    host, port = parse_listen(args.listen)
    record: IO[str] | None = None
    if args.record is not None:
        try:
            record = open(args.record, "a", encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise CLIError(f"cannot open --record {args.record}: {exc.strerror}") from None
    try:
        asyncio.run(serve(host, port, Sink(record, lambda line: print(line, flush=True))))
    finally:
        if record is not None:
            record.close()
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "alerts",
        help="alert tools (a webhook sink for Alertmanager)",
        description="Alert tools for the demo stack and the tests.",
    )
    sub = p.add_subparsers(dest="alerts_command", metavar="ACTION", required=True)
    s = sub.add_parser(
        "sink",
        help="receive Alertmanager webhooks, print and record them",
        description="An Alertmanager webhook receiver: POST any path with a webhook "
        "notification; prints one line per alert, records each as a JSON line, and "
        "serves them at GET /alerts (?alertname=, ?status=).",
    )
    s.add_argument(
        "--listen",
        default="127.0.0.1:9095",
        metavar="HOST:PORT",
        help="address to listen on; port 0 picks a free one (default: 127.0.0.1:9095)",
    )
    s.add_argument(
        "--record",
        type=Path,
        default=None,
        metavar="FILE",
        help="append every alert received to FILE as JSON lines (default: none)",
    )
    s.set_defaults(func=run_sink)

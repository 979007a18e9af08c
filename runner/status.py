"""The status listener: `/healthz`, `/readyz`, `/status`, `/metrics`, `POST /reconnect`.

Bound to 127.0.0.1 unless told otherwise.  `/readyz` is 200 only while the
runner is streaming *and* its last heartbeat succeeded - both halves of the
seed's lie must be true.  `/metrics` serves whatever the telemetry layer hung
on `Runner.metrics`; without it, 404 with an empty body.

`POST /reconnect` ends the live read with reason `forced` and reconnects at
once, without backoff (useful after a network change); 202 with the session
it ended.  It changes what the runner does, so it is guarded: with a status
token configured it needs `Authorization: Bearer <token>` (401 otherwise);
without one it is answered only on a loopback listener (403 elsewhere).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web

from pullwake.core.protocol import EndReason, RunnerState
from pullwake.runner.config import RunnerConfig
from pullwake.runner.heartbeat import HeartbeatRecord
from pullwake.runner.machine import Machine


class StatusSource(Protocol):
    """What the listener reads and may ask of the runner (`runner.core.Runner` is one)."""

    config: RunnerConfig
    heartbeats: HeartbeatRecord
    metrics: Callable[[], tuple[bytes, str]] | None

    @property
    def machine(self) -> Machine: ...

    @property
    def phase(self) -> RunnerState: ...

    @property
    def ready(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...

    def reconnect_now(self, reason: EndReason = EndReason.FORCED) -> bool: ...


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and `localhost`; a wildcard (0.0.0.0, ::) is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _error(status: int, code: str, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="pullwake-runner"'} if status == 401 else None
    body = {"error": {"code": code, "message": message}}
    return web.json_response(body, status=status, headers=headers)


class StatusServer:
    def __init__(
        self, runner: StatusSource, host: str, port: int, token: str | None = None
    ) -> None:
        """`token`: the bearer token `POST /reconnect` needs (default: the runner's
        `status_token` setting)."""
        self._runner = runner
        self.host, self.port = host, port
        self._token = token if token is not None else runner.config.status_token
        self._app_runner: web.AppRunner | None = None

    def __repr__(self) -> str:
        return f"<StatusServer http://{self.host}:{self.port}>"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/status", self._status)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/reconnect", self._reconnect)
        return app

    async def start(self) -> None:
        self._app_runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await self._app_runner.setup()
        site = web.TCPSite(self._app_runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0 and site._server is not None:  # bound to 0: learn the port
            sockets = getattr(site._server, "sockets", None) or []
            if sockets:
                self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._app_runner is not None:
            await self._app_runner.cleanup()
            self._app_runner = None

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"ok": True, "state": self._runner.phase.value})

    async def _readyz(self, _: web.Request) -> web.Response:
        r = self._runner
        body = {
            "ready": r.ready,
            "state": r.phase.value,
            "last_heartbeat_ok": r.heartbeats.last_ok,
        }
        return web.json_response(body, status=200 if r.ready else 503)

    async def _status(self, _: web.Request) -> web.Response:
        return web.json_response(self._runner.status())

    def _refused(self, request: web.Request) -> web.Response | None:
        """Why this request may not reconnect the runner, or None when it may."""
        if self._token:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), self._token.encode()
            ):
                return _error(401, "UNAUTHORIZED", "POST /reconnect needs the status token")
            return None
        if not is_loopback(self.host):
            return _error(
                403,
                "FORBIDDEN",
                f"the status listener is on {self.host}, not loopback: set --status-token"
                " (env PULLWAKE_STATUS_TOKEN) to allow POST /reconnect",
            )
        return None

    async def _reconnect(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        r = self._runner
        live = r.phase in (RunnerState.CONNECTING, RunnerState.STREAMING)
        ended = r.machine.session if live else None  # else: a reconnect wait is cut short
        if not r.reconnect_now():
            return _error(409, "NOT_RUNNING", f"the runner is {r.phase.value}")
        body = {"reason": "forced", "ended_session": ended, "state": r.phase.value}
        return web.json_response(body, status=202)

    async def _metrics(self, _: web.Request) -> web.Response:
        hook = self._runner.metrics
        if hook is None:
            return web.Response(status=404, text="", content_type="text/plain")
        body, content_type = hook()
        ctype, _sep, params = content_type.partition(";")
        charset = None
        for param in params.split(";"):
            key, _eq, value = param.strip().partition("=")
            if key == "charset":
                charset = value
        return web.Response(body=body, content_type=ctype.strip(), charset=charset)

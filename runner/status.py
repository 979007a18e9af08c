"""The status listener: `/healthz`, `/readyz`, `/status`, `/metrics`.

Bound to 127.0.0.1 unless told otherwise.  `/readyz` is 200 only while the
runner is streaming *and* its last heartbeat succeeded - both halves of the
seed's lie must be true.  `/metrics` serves whatever the telemetry layer hung
on `Runner.metrics`; without it, 404 with an empty body.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from pullwake.runner.core import Runner


class StatusServer:
    def __init__(self, runner: Runner, host: str, port: int) -> None:
        self._runner = runner
        self.host, self.port = host, port
        self._app_runner: web.AppRunner | None = None

    def __repr__(self) -> str:
        return f"<StatusServer http://{self.host}:{self.port}>"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/status", self._status)
        app.router.add_get("/metrics", self._metrics)
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
            "last_heartbeat_ok": r.diag.last_heartbeat_ok,
        }
        return web.json_response(body, status=200 if r.ready else 503)

    async def _status(self, _: web.Request) -> web.Response:
        return web.json_response(self._runner.status())

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

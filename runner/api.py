"""The runner's short requests to the server: register, heartbeat, claim, complete.

Each request has its own overall timeout, so none can hang the loop that made
it; failures are mapped to `HeartbeatErrorType` in one place.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from pullwake.core.protocol import RUNNERS_PREFIX, HeartbeatErrorType, wake_stream_path
from pullwake.runner.config import RunnerConfig
from pullwake.runner.dispatch import ClaimAnswer


class RequestFailed(Exception):
    def __init__(self, error_type: HeartbeatErrorType, detail: str, status: int | None = None):
        super().__init__(detail)
        self.error_type = error_type
        self.status = status


def error_type_of(exc: BaseException) -> HeartbeatErrorType:
    if isinstance(exc, RequestFailed):
        return exc.error_type
    if isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(exc.os_error, TimeoutError):
        return HeartbeatErrorType.CONNECT
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return HeartbeatErrorType.TIMEOUT
    return HeartbeatErrorType.OTHER


class ServerAPI:
    def __init__(self, http: aiohttp.ClientSession, config: RunnerConfig) -> None:
        self._http = http
        self._config = config
        self._runner_url = f"{config.base_url}{RUNNERS_PREFIX}/{config.runner_id}"
        self.wake_stream = wake_stream_path(config.runner_id)

    def __repr__(self) -> str:
        return f"<ServerAPI {self._runner_url}>"

    @property
    def stream_url(self) -> str:
        return f"{self._config.base_url}{self.wake_stream}"

    async def _post(self, url: str, body: Any, timeout: float) -> tuple[int, Any]:
        async with (
            asyncio.timeout(timeout),
            self._http.post(url, json=body) as resp,
        ):
            try:
                data = await resp.json(content_type=None) if resp.status != 204 else None
            except ValueError:
                data = None
            return resp.status, data

    async def register(self) -> dict[str, Any]:
        """Upsert the runner; its answer names the wake stream to read."""
        body = {"id": self._config.runner_id, "label": self._config.label}
        _, data = await self._checked(
            f"{self._config.base_url}{RUNNERS_PREFIX}", body, self._config.hb_timeout
        )
        if isinstance(data, dict) and isinstance(data.get("wake_stream"), str):
            self.wake_stream = data["wake_stream"]
        return data if isinstance(data, dict) else {}

    async def heartbeat(self, offset: str, diagnostics: dict[str, Any]) -> dict[str, Any]:
        body = {
            "lease_ms": self._config.lease_ms,
            "wake_stream_offset": offset,
            "diagnostics": diagnostics,
        }
        _, data = await self._checked(
            f"{self._runner_url}/heartbeat", body, self._config.hb_timeout
        )
        return data if isinstance(data, dict) else {}

    async def _checked(self, url: str, body: Any, timeout: float) -> tuple[int, Any]:
        status, data = await self._post(url, body, timeout)
        if status >= 500:
            raise RequestFailed(HeartbeatErrorType.HTTP_5XX, f"HTTP {status}", status)
        if status >= 400:
            raise RequestFailed(HeartbeatErrorType.HTTP_4XX, f"HTTP {status}: {data}", status)
        return status, data

    async def claim(self, wake: dict[str, Any]) -> ClaimAnswer:
        status, data = await self._post(f"{self._runner_url}/claim", wake, 10.0)
        return ClaimAnswer(status, data)

    async def complete(self, wake_id: str, claim_token: str) -> int:
        status, _ = await self._post(
            f"{self._runner_url}/claims/{wake_id}/complete", {"claimToken": claim_token}, 10.0
        )
        return status

"""The runner's short requests to the agents-server: register, heartbeat, claim, callbacks.

Each request has its own overall timeout, so none can hang the loop that made
it; failures are mapped to `HeartbeatErrorType` in one place.  Shapes follow
the real agents-server (upstream-protocol.md sections 2, 3, 6, 7): register
answers 201 with `wake_stream`, the runner list is a bare JSON array, the claim
is by `subscription_id`, and completion goes to the claim answer's absolute
`callback` URL with the claim token as `Authorization: Bearer`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from pullwake.core.protocol import RUNNERS_PREFIX, HeartbeatErrorType, wake_stream_path
from pullwake.runner.config import RunnerConfig

CLAIM_TIMEOUT_S = 10.0
CALLBACK_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Answer:
    """A status and a decoded JSON body (None when absent or not JSON); status 0 = no answer."""

    status: int
    body: Any

    def error_code(self) -> str | None:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        return code if isinstance(code, str) else None

    def error_message(self) -> str:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        return message if isinstance(message, str) else ""


# The dispatcher's historical name for a claim answer.
ClaimAnswer = Answer


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


def parse_runner_list(body: Any) -> list[dict[str, Any]]:
    """`GET /_electric/runners`: the real server answers a bare array (older pullwake
    servers wrapped it in `{"runners": [...]}`); anything else is an empty list."""
    if isinstance(body, dict):
        body = body.get("runners")
    if not isinstance(body, list):
        return []
    return [r for r in body if isinstance(r, dict)]


def stream_path_of(record: dict[str, Any], runner_id: str) -> str:
    """The wake stream a register answer names, used raw (never re-encoded)."""
    path = record.get("wake_stream")
    if not isinstance(path, str) or not path.strip("/"):
        return wake_stream_path(runner_id)
    return path if path.startswith("/") else "/" + path


class ServerAPI:
    def __init__(self, http: aiohttp.ClientSession, config: RunnerConfig) -> None:
        self._http = http
        self._config = config
        # `:id` is percent-decoded by the server; the wake stream path is not (section 5.1)
        self._runner_url = f"{config.base_url}{RUNNERS_PREFIX}/{quote(config.runner_id, safe='')}"
        self.wake_stream = wake_stream_path(config.runner_id)

    def __repr__(self) -> str:
        return f"<ServerAPI {self._runner_url}>"

    @property
    def stream_url(self) -> str:
        return f"{self._config.base_url}{self.wake_stream}"

    async def _post(
        self,
        url: str,
        body: Any,
        timeout: float,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        # the deadline rides along as `trace_request_ctx`: a tracer (runner.otel_http)
        # can tell a request cancelled by it (a timeout) from one cancelled by a stop
        async with (
            asyncio.timeout(timeout) as deadline,
            self._http.post(url, json=body, headers=headers, trace_request_ctx=deadline) as resp,
        ):
            try:
                data = await resp.json(content_type=None) if resp.status != 204 else None
            except ValueError:
                data = None
            return resp.status, data

    async def _answer(
        self, url: str, body: Any, timeout: float, headers: dict[str, str] | None = None
    ) -> Answer:
        """Any outcome as an `Answer`; a request that got no answer is status 0."""
        try:
            status, data = await self._post(url, body, timeout, headers)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return Answer(0, str(exc) or type(exc).__name__)
        return Answer(status, data)

    async def register(self) -> dict[str, Any]:
        """Upsert the runner (201 every time); its answer names the wake stream to read."""
        body = {
            "id": self._config.runner_id,
            "label": self._config.label,
            "kind": self._config.kind,
        }
        _, data = await self._checked(
            f"{self._config.base_url}{RUNNERS_PREFIX}", body, self._config.hb_timeout
        )
        record = data if isinstance(data, dict) else {}
        self.wake_stream = stream_path_of(record, self._config.runner_id)
        return record

    async def list_runners(self) -> list[dict[str, Any]]:
        """The caller's runners (a bare JSON array upstream)."""
        async with (
            asyncio.timeout(self._config.hb_timeout) as deadline,
            self._http.get(
                f"{self._config.base_url}{RUNNERS_PREFIX}", trace_request_ctx=deadline
            ) as resp,
        ):
            if resp.status >= 400:
                raise RequestFailed(HeartbeatErrorType.HTTP_4XX, f"HTTP {resp.status}", resp.status)
            return parse_runner_list(await resp.json(content_type=None))

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

    async def claim(self, body: dict[str, Any]) -> Answer:
        """`POST /_electric/runners/:id/claim` with `{subscription_id}` (or the event)."""
        return await self._answer(f"{self._runner_url}/claim", body, CLAIM_TIMEOUT_S)

    async def callback(self, url: str, token: str, body: dict[str, Any]) -> Answer:
        """One request to a claim's `callback` URL: a lease heartbeat or the completion."""
        headers = {"Authorization": f"Bearer {token}"}
        if self._config.callback_origin == "server":
            url = rebase(url, self._config.base_url)
        return await self._answer(url, body, CALLBACK_TIMEOUT_S, headers)


def rebase(url: str, base: str) -> str:
    """`url`'s path and query on `base`: the server builds callback URLs from its own
    address (`ELECTRIC_AGENTS_BASE_URL`, else where it listens), which a runner that
    reaches it through a proxy, a tunnel or another name may not be able to use."""
    parts = urlsplit(url)
    target = base.rstrip("/") + parts.path
    return f"{target}?{parts.query}" if parts.query else target

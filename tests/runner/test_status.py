"""The status listener in process, over real HTTP: `POST /reconnect`'s answers for a
runner that is not running, the token rules on a loopback and a wildcard listener,
and what counts as loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from pullwake.runner import Runner
from pullwake.runner.status import StatusServer, is_loopback


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with http.post(url, headers=headers) as resp:
        return resp.status, await resp.json()


def test_loopback_addresses() -> None:
    for host in ("127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org", ""):
        assert not is_loopback(host), host


async def test_reconnect_on_a_stopped_runner_is_409(http: aiohttp.ClientSession) -> None:
    r = Runner(server="http://127.0.0.1:1", runner_id="r1")
    status = StatusServer(r, "127.0.0.1", 0)
    await status.start()
    try:
        code, body = await post(http, f"http://127.0.0.1:{status.port}/reconnect")
        assert code == 409 and body["error"]["code"] == "NOT_RUNNING"
    finally:
        await status.stop()


@pytest.mark.parametrize(
    ("host", "token", "sent", "expected"),
    [
        ("127.0.0.1", None, None, 409),  # allowed (then: not running)
        ("127.0.0.1", "t0k", None, 401),  # a token, once set, is always needed
        ("127.0.0.1", "t0k", "nope", 401),
        ("127.0.0.1", "t0k", "t0k", 409),
        ("0.0.0.0", None, None, 403),  # off loopback without a token: never
        ("0.0.0.0", None, "anything", 403),
        ("0.0.0.0", "t0k", "t0k", 409),
    ],
)
async def test_token_rules(
    http: aiohttp.ClientSession, host: str, token: str | None, sent: str | None, expected: int
) -> None:
    r = Runner(server="http://127.0.0.1:1", runner_id="r1", status_token=token)
    status = StatusServer(r, host, 0)
    await status.start()
    try:
        code, body = await post(http, f"http://127.0.0.1:{status.port}/reconnect", sent)
        assert code == expected, body
    finally:
        await status.stop()

"""The runner's requests on the wire, as the real agents-server expects them
(upstream-protocol.md 2, 6, 7, 9.1): an in-process `Runner` against the scripted stub
(tests/support/fakeserver.FakeServer) on a real socket.

Register `{id, label, kind}`; the principal header as configured (key or URL form);
the wake stream named by the register answer; claim `{subscription_id}`; `{epoch}`
lease heartbeats and `{epoch, acks, done:true}` to the answer's `callback` with
`Authorization: Bearer <claimToken>`; 502 FENCED not retried; done/skip answers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from pullwake.core.protocol import CallbackOutcome, ClaimResult
from pullwake.runner import RecordingObserver, Runner
from pullwake.runner import dispatch as dispatch_module
from pullwake.runner.api import parse_runner_list, rebase, stream_path_of
from pullwake.runner.config import ConfigError, RunnerConfig, principal_key
from tests.support.fakeserver import FakeServer, forever
from tests.support.waits import never, until

SID = "runner:r1:23c1232b5a83aee4"


def wake_event(generation: int = 1) -> dict[str, Any]:
    return {
        "type": "wake",
        "subscription_id": SID,
        "stream": "fake/e1/main",
        "generation": generation,
        "ts": int(time.time() * 1000),
    }


def one_wake(
    events: int = 1, later: int = 0
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The real server's SSE: no keepalive header, data events of one item, a control;
    `later` more events (next generations) 0.1 s apart after that."""

    def batch(first: int, n: int) -> bytes:
        body = b""
        for g in range(first, first + n):
            body += b"event: data\ndata:" + json.dumps([wake_event(g)]).encode() + b"\n\n"
        offset = f"{0:016d}_{127 * (first + n - 1):016d}"
        return body + b'event: control\ndata:{"streamNextOffset":"' + offset.encode() + b'"}\n\n'

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(batch(1, events))
        for g in range(events + 1, events + 1 + later):
            await asyncio.sleep(0.1)
            await resp.write(batch(g, 1))
        await forever()
        return resp

    return stream


@pytest.fixture
async def run_against() -> AsyncIterator[Callable[..., Awaitable[Runner]]]:
    started: list[tuple[Runner, asyncio.Task[None], web.AppRunner]] = []

    async def start(fake: FakeServer, **options: Any) -> Runner:
        app_runner, url = await fake.start()
        options = {"heartbeat_interval": 5.0, "backoff_max": 0.2} | options
        r = Runner(server=url, runner_id="r1", **options)
        started.append((r, asyncio.create_task(r.run()), app_runner))
        return r

    yield start
    for r, task, app_runner in started:
        r.stop()
        async with asyncio.timeout(10):
            await asyncio.gather(task, return_exceptions=True)
        await app_runner.cleanup()


async def test_claim_heartbeats_and_completion_on_the_wire(run_against: Any) -> None:
    got: list[dict[str, Any]] = []

    async def handler(notification: dict[str, Any]) -> None:
        got.append(notification)
        await asyncio.sleep(0.35)

    fake = FakeServer(one_wake())
    obs = RecordingObserver()
    await run_against(
        fake,
        handler=handler,
        observer=obs,
        principal="/principal/system%3Adev-local",
        callback_heartbeat_interval=0.1,
        kind="ci",
        label="wire test",
    )
    await until(lambda: fake.completed, 10, "a completion")
    assert fake.register_bodies[0] == {"id": "r1", "label": "wire test", "kind": "ci"}
    assert set(fake.principals) == {"/principal/system%3Adev-local"}
    assert fake.claim_bodies == [{"subscription_id": SID}]
    assert got[0]["wakeId"] == "w_" + "0" * 23 + "1" and got[0]["claimToken"] == "token-1"
    *beats, done = fake.callbacks
    assert len(beats) >= 2
    assert all(b == (done[0], "Bearer token-1", {"epoch": 1}) for b in beats)
    assert done[1] == "Bearer token-1"
    assert done[2] == {
        "epoch": 1,
        "acks": [{"path": "/fake/e1/main", "offset": f"{0:016d}_{1:016d}"}],
        "done": True,
    }
    assert [r[0] for r in obs.of("claim_result")] == [ClaimResult.CLAIMED]
    assert {o for o, _ in obs.of("callback_heartbeat")} == {CallbackOutcome.OK}
    assert [o for o, _ in obs.of("completion")] == [CallbackOutcome.OK]


async def test_a_fenced_completion_is_counted_and_not_retried(run_against: Any) -> None:
    fake = FakeServer(one_wake())
    fenced = 'Subscription ack failed: 409 {"error":{"code":"FENCED","message":"stale"}}'
    fake.callback_answers = [(502, {"error": {"code": "WAKE_CALLBACK_FAILED", "message": fenced}})]
    r = await run_against(fake, handler=_quick)
    await until(lambda: fake.callbacks, 10, "the completion")
    await never(lambda: len(fake.callbacks) > 1, 0.5, "a retried completion")
    assert r.diagnostics()["claims_succeeded"] == 1
    assert "FENCED" in (r.diagnostics()["last_error"] or "")


async def test_done_and_skip_answers(run_against: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three events of one subscription read at once: one claim covers them; it is
    answered {"done":true} (entity paused: the server re-announces, here the 4th event
    0.1 s later); the claim for that waits out the done backoff (0.3 s here) and gets
    409 NO_PENDING_WORK.  Nothing handled, no callback, everything committed."""
    monkeypatch.setattr(dispatch_module, "DONE_BACKOFF_FIRST_S", 0.3)
    fake = FakeServer(one_wake(events=3, later=1))
    fake.claim_answers = [
        (200, {"done": True}),
        (
            409,
            {"error": {"code": "NO_PENDING_WORK", "message": "Subscription has no pending work"}},
        ),
    ]
    handled: list[Any] = []

    async def handler(n: dict[str, Any]) -> None:
        handled.append(n)

    r = await run_against(fake, handler=handler)
    await until(lambda: len(fake.claims) == 1, 10, "the first claim")
    first = time.monotonic()
    await until(lambda: len(fake.claims) == 2, 10, "the second claim")
    assert time.monotonic() - first >= 0.25  # the done backoff, not a hot loop
    await never(lambda: len(fake.claims) > 2, 0.5, "a third claim")
    assert handled == [] and fake.callbacks == []
    d = r.diagnostics()
    assert d["events_received"] == 4 and d["claims_skipped"] == 2
    assert d["last_claim_result"] == "no_work"
    await until(lambda: r.committed_offset == f"{0:016d}_{508:016d}", 5, "the commit")


async def _quick(n: dict[str, Any]) -> None:
    pass


def test_register_answer_and_list_shapes() -> None:
    assert stream_path_of({"wake_stream": "/runners/alice@laptop/wake"}, "x") == (
        "/runners/alice@laptop/wake"  # raw: never re-encoded
    )
    assert stream_path_of({"wake_stream": "runners/r1/wake"}, "r1") == "/runners/r1/wake"
    assert stream_path_of({}, "r1") == "/runners/r1/wake"
    assert parse_runner_list([{"id": "a"}, 3]) == [{"id": "a"}]  # the real server: an array
    assert parse_runner_list({"runners": [{"id": "b"}]}) == [{"id": "b"}]
    assert parse_runner_list("junk") == []


def test_principal_in_either_form_and_kind_from_the_enum() -> None:
    assert principal_key("system:dev-local") == "system:dev-local"
    assert principal_key("/principal/system%3Adev-local") == "system:dev-local"
    assert principal_key("/principal/user:alice") == "user:alice"
    assert principal_key("robot:x") is None and principal_key("user:a/b") is None
    with pytest.raises(ConfigError, match="bad runner kind"):
        RunnerConfig(server="http://127.0.0.1:1", runner_id="r1", kind="pull-wake")
    with pytest.raises(ConfigError, match="shorter than the claim lease"):
        RunnerConfig(server="http://127.0.0.1:1", runner_id="r1", callback_heartbeat_interval=30)


async def test_callbacks_rebased_onto_the_server_url(run_against: Any) -> None:
    """--callback-origin server: the claim's callback names an address this runner
    cannot reach (the server's own idea of its URL); its path on --server is used."""
    fake = FakeServer(one_wake())
    unreachable = "http://127.0.0.1:9/_electric/wake-callbacks/w_x?a=1"
    fake.claim_answers = [
        (200, {**FakeServer.notification_fields(1), "callback": unreachable}),
    ]
    await run_against(fake, handler=_quick, callback_origin="server")
    await until(lambda: fake.completed, 10, "the completion on the server URL")
    assert fake.callbacks[0][0] == "/_electric/wake-callbacks/w_x"


def test_rebase_keeps_path_and_query() -> None:
    assert rebase("http://10.0.0.5:4437/_electric/wake-callbacks/w_1?x=2", "http://h:1/") == (
        "http://h:1/_electric/wake-callbacks/w_1?x=2"
    )
    with pytest.raises(ConfigError, match="callback origin"):
        RunnerConfig(server="http://127.0.0.1:1", runner_id="r1", callback_origin="proxy")

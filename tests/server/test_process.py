"""Process-level behaviour: kill -9 durability, signal shutdown, auth modes, CLI."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pullwake.tools.faultproxy import Mode, ThreadedFaultProxy
from tests.support.procs import (
    ServerProcess,
    free_port,
    http_json,
    refused_port,
    running,
    wait_until,
)
from tests.support.sse import SSEReader

P = "/_electric/runners"


def _stream(srv: ServerProcess, path: str, offset: str = "-1") -> tuple[dict[str, str], Any]:
    status, headers, body = srv.api("GET", f"{path}?offset={offset}")
    assert status == 200, (status, body)
    return headers, body


def test_acknowledged_messages_and_acks_survive_kill_9(tmp_path: Path) -> None:
    """Every acknowledged message is in its entity stream after kill -9; an acked
    offset stays acked (no new wake for it), un-acked messages are announced."""
    db = tmp_path / "durable.db"
    srv = ServerProcess(tmp_path, db=db)
    with running(srv):
        srv.start()
        srv.register("r")
        ent = "/pullwake/k9"
        acked = [srv.publish("r", {"i": i}, entity=ent) for i in range(40)]
        _, events = _stream(srv, "/runners/r/wake")
        assert len(events) == 1  # one wake for the subscription: appends coalesce
        status, _, claim = srv.api("POST", "/_electric/runners/r/claim", events[0])
        assert status == 200 and claim["streams"][0]["offset"] == acked[-1]["offset"]
        bearer = {"Authorization": f"Bearer {claim['claimToken']}"}
        ack = {
            "epoch": claim["epoch"],
            "acks": [{"path": claim["streamPath"], "offset": acked[19]["offset"]}],
            "done": True,
        }
        status, _, out = http_json("POST", claim["callback"], ack, headers=bearer)
        assert (status, out) == (200, {"ok": True, "next_wake": True})  # 20 left: generation 2
        late = srv.publish("r", {"i": 40}, entity=ent)
        srv.signal(signal.SIGKILL)  # right after the last 200
        srv.wait(5)
    again = ServerProcess(tmp_path, db=db, port=srv.port)
    with running(again):
        again.start()
        _, items = _stream(again, f"{ent}/main")
        messages = [m["value"]["payload"]["i"] for m in items if m.get("type") == "inbox"]
        assert messages == list(range(41))
        _, events = _stream(again, "/runners/r/wake")
        assert [e["generation"] for e in events] == [1, 2]  # nothing lost, nothing new
        status, _, claim = again.api("POST", "/_electric/runners/r/claim", events[-1])
        assert status == 200 and claim["epoch"] == 2
        assert claim["streams"][0]["offset"] == late["offset"]  # the tail: all 21 un-acked
        sub = again.api("GET", "/__ds/subscriptions/" + events[-1]["subscription_id"])[2]
        assert sub["streams"][0]["acked_offset"] == acked[19]["offset"]


def test_a_claim_survives_kill_9_and_completes_after_restart(tmp_path: Path) -> None:
    """Restart of the server in the middle of a claim: the claim is still held (409),
    its token and callback still work, and done completes it (upstream would have
    forgotten it: our subscriptions, token key and callbacks are on disk)."""
    db = tmp_path / "claim.db"
    srv = ServerProcess(tmp_path, db=db)
    with running(srv):
        srv.start()
        srv.register("r")
        msg = srv.publish("r", "work", entity="/pullwake/mid")
        _, events = _stream(srv, "/runners/r/wake")
        status, _, claim = srv.api("POST", "/_electric/runners/r/claim", events[0])
        assert status == 200
        srv.signal(signal.SIGKILL)
        srv.wait(5)
    again = ServerProcess(tmp_path, db=db, port=srv.port)
    with running(again):
        again.start()
        status, _, body = again.api("POST", "/_electric/runners/r/claim", events[0])
        assert (status, body["error"]["code"]) == (409, "ALREADY_CLAIMED")
        bearer = {"Authorization": f"Bearer {claim['claimToken']}"}
        status, _, out = http_json(
            "POST", claim["callback"], {"epoch": claim["epoch"]}, headers=bearer
        )
        assert (status, out) == (200, {"ok": True, "next_wake": False})
        done = {
            "epoch": claim["epoch"],
            "acks": [{"path": claim["streamPath"], "offset": msg["offset"]}],
            "done": True,
        }
        status, _, out = http_json("POST", claim["callback"], done, headers=bearer)
        assert (status, out) == (200, {"ok": True, "next_wake": False})
        health = again.api("GET", "/_electric/runners/r/health")[2]
        assert health["claims"]["active_count"] == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_open_streams_at_once_and_exits_0(tmp_path: Path, sig: int) -> None:
    # A long keepalive: only the shutdown itself can end these reads quickly.
    srv = ServerProcess(tmp_path, keepalive=30, long_poll_timeout=30)
    with running(srv):
        srv.start()
        srv.register("r")
        readers = [SSEReader(f"{srv.url}/runners/r/wake?offset=-1&live=sse") for _ in range(3)]
        for r in readers:
            assert r.status == 200
            r.events_until(lambda e: e.kind == "control")
        t0 = time.monotonic()
        srv.signal(sig)
        for r in readers:
            while r.next_event(timeout=2.0) is not None:
                pass
            assert time.monotonic() - t0 < 1.0, "stream did not end within 1 s of the signal"
            r.close()
        assert srv.wait(timeout=2.0) == 0
        assert time.monotonic() - t0 < 2.0


def test_in_flight_long_poll_is_answered_on_shutdown(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path, long_poll_timeout=30)
    with running(srv):
        srv.start()
        srv.register("r")
        t0 = time.monotonic()
        result: list[int] = []
        th = threading.Thread(
            target=lambda: result.append(
                http_json("GET", f"{srv.url}/runners/r/wake?offset=now&live=long-poll")[0]
            )
        )
        th.start()
        wait_until(
            lambda: srv.api("GET", "/_pullwake/runners/r/stream")[2]["open_reads"]["long-poll"],
            5,
            what="long-poll in flight",
        )
        srv.signal(signal.SIGTERM)
        th.join(5)
        assert result == [204]
        assert time.monotonic() - t0 < 2.5
        assert srv.wait(2) == 0


def test_without_dev_principal_and_token_are_enforced(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path, dev=False, env={"PULLWAKE_AUTH_TOKEN": "s3cret"})
    tok = {"Authorization": "Bearer s3cret"}
    alice = {**tok, "electric-principal": "user:alice"}
    bob = {**tok, "electric-principal": "/principal/user%3Abob"}
    missing = {"error": {"code": "UNAUTHORIZED", "message": "Missing Electric-Principal"}}
    with running(srv):
        srv.start()  # /healthz needs no token
        status, _, err = srv.api("GET", P, headers={"electric-principal": "user:alice"})
        assert (status, err["error"]["code"]) == (401, "UNAUTHORIZED")  # no token
        status, _, err = srv.api("GET", P, headers={"Authorization": "Bearer s3cr\xe9t"})
        assert (status, err["error"]["code"]) == (401, "UNAUTHORIZED")  # not UTF-8: no 500
        for bad in ("", "root", "robot:x", "user:a/b"):  # absent or invalid = absent
            status, _, err = srv.api("GET", P, headers={**tok, "electric-principal": bad})
            assert (status, err) == (401, missing), bad
        for path in ("/_electric/health", "/runners/ra/wake?offset=-1", "/_electric/nothing"):
            got = srv.api("GET", path, headers={**tok, "electric-principal": ""})
            assert (got[0], got[2]) == (401, missing), path
        assert srv.api("GET", "/_electric/health", headers=alice)[2] == {"status": "ok"}
        # the DS origin needs the token but no principal (upstream: another port, no check)
        nobody = {**tok, "electric-principal": ""}
        assert srv.api("GET", "/v1/stream/nothing?offset=-1", headers=nobody)[0] == 404
        assert (
            srv.api("GET", "/v1/stream/nothing?offset=-1", headers={"electric-principal": ""})[0]
            == 401
        )
        status, _, body = srv.api("POST", P, {"id": "ra", "label": "a"}, headers=alice)
        assert (status, body["owner_principal"]) == (201, "/principal/user%3Aalice")
        for method, path, body, message in [
            ("GET", f"{P}/ra", None, "Runner access requires the authenticated owner"),
            ("GET", f"{P}/ra/health", None, "Runner access requires the authenticated owner"),
            ("POST", f"{P}/ra/heartbeat", {}, "Runner access requires the authenticated owner"),
            ("POST", f"{P}/ra/disable", None, "Runner access requires the authenticated owner"),
            ("POST", f"{P}/ra/claim", {}, "Runner claim requires the authenticated owner"),
            (
                "GET",
                "/_pullwake/runners/ra/stream",
                None,
                "Runner access requires the authenticated owner",
            ),
        ]:
            status, _, err = srv.api(method, path, body, headers=bob)
            assert (status, err) == (
                403,
                {"error": {"code": "UNAUTHORIZED", "message": message}},
            ), path
        assert srv.api("GET", P, headers=bob)[2] == []
        # as upstream: wake-stream reads have no owner check
        assert srv.api("GET", "/runners/ra/wake?offset=-1", headers=bob)[0] == 200
        # as upstream: re-registering takes the runner over (no owner check on upsert)
        status, _, body = srv.api("POST", P, {"id": "ra", "label": "b"}, headers=bob)
        assert (status, body["owner_principal"]) == (201, "/principal/user%3Abob")


def _cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pullwake", *args], capture_output=True, text=True, timeout=timeout
    )


def test_publish_cli(server: ServerProcess, rid: str) -> None:
    """Fresh entity per invocation; --entity reuses one; the output is what was acked."""
    server.register(rid)
    out = _cli("publish", "--server", server.url, "--runner-id", rid, "--count", "3", '{"k": "v"}')
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.strip().splitlines()]
    assert len(lines) == 3 and len({x["entity"] for x in lines}) == 1
    assert lines[0]["entity"].startswith("/pullwake/")
    assert lines[0]["subscription_id"].startswith(f"runner:{rid}:")
    assert [x["offset"] for x in lines] == sorted(x["offset"] for x in lines)
    _, _, items = server.api("GET", lines[0]["stream"] + "?offset=-1")
    assert [m["value"]["payload"] for m in items if m["type"] == "inbox"] == [{"k": "v"}] * 3
    _, _, events = server.api("GET", f"/runners/{rid}/wake?offset=-1")
    assert [e["subscription_id"] for e in events] == [lines[0]["subscription_id"]]  # coalesced
    again = _cli(
        "publish",
        "--server",
        server.url,
        "--runner-id",
        rid,
        "--entity",
        lines[0]["entity"],
        "--payload",
        "7",
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["entity"] == lines[0]["entity"]
    other = _cli("publish", "--server", server.url, "--runner-id", rid)
    assert json.loads(other.stdout)["entity"] != lines[0]["entity"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["publish", "--runner-id", "x", "--payload", "{nope"], "payload is not JSON"),
        (
            [
                "publish",
                "--runner-id",
                "x",
                "--entity",
                "nope",
                "--server",
                "http://127.0.0.1:{free}",
            ],
            "--entity must",
        ),
        # {free}: a port bound without listening, so a connect is refused (never a
        # port someone else may take meanwhile: port 1 was taken by a test elsewhere)
        (["publish", "--runner-id", "x", "--server", "http://127.0.0.1:{free}"], "cannot reach"),
        (["server", "--keepalive-interval", "0"], "must be positive"),
        (["server", "--db", "/nonexistent-dir/x.db"], "cannot open database"),
        # values that used to start a server whose claims/heartbeats then answered 500
        (["server", "--db", ":memory:", "--claim-lease-ms", "999"], "--claim-lease-ms must be"),
        (["server", "--db", ":memory:", "--lease-ms", "1" + "0" * 20], "--lease-ms must be"),
        (["server", "--db", ":memory:", "--stream-grace", "nan"], "--stream-grace and"),
        (["server", "--db", ":memory:", "--keepalive-interval", "nan"], "must be positive"),
        # URLs urllib cannot even build a request for (used to be a traceback)
        (["publish", "--runner-id", "x", "--server", "localhost:4437"], "--server must be"),
        (["publish", "--runner-id", "x", "--server", "http://[::1"], "--server must be"),
        (["publish", "--runner-id", "x", "--server", "http://127.0.0.1:abc"], "--server must be"),
    ],
)
def test_cli_errors_are_one_line(args: list[str], needle: str) -> None:
    with refused_port() as refused:
        args = [a.replace("{free}", str(refused)) for a in args]
        out = _cli(*args, "--port", str(free_port())) if args[0] == "server" else _cli(*args)
    assert out.returncode == 2
    assert needle in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_publish_cli_reports_http_errors(server: ServerProcess) -> None:
    out = _cli("publish", "--server", server.url, "--runner-id", "ghost")
    assert out.returncode == 2
    assert 'HTTP 404: NOT_FOUND: Runner "ghost" not found' in out.stderr
    assert "Traceback" not in out.stderr


def test_server_help_explains_compat_upstream() -> None:
    out = _cli("server", "--help")
    text = " ".join(out.stdout.split())
    assert "--compat {pullwake,upstream}" in text
    assert "pair of `event: control` every --long-poll-timeout seconds" in text
    assert (
        "a long-poll with no new data answers 204 after this (upstream: 30) (default: 30.0)" in text
    )


def test_port_in_use_is_a_one_line_error(server: ServerProcess) -> None:
    out = _cli("server", "--port", str(server.port), "--db", ":memory:")
    assert out.returncode == 2 and "cannot listen" in out.stderr


def test_a_client_hanging_up_closes_its_live_read_at_once(tmp_path: Path) -> None:
    """A dead long-poll client must not count as an open stream until the poll times out."""
    srv = ServerProcess(tmp_path, long_poll_timeout=60)
    with running(srv):
        srv.start()
        srv.register("r")

        def open_reads() -> dict[str, int]:
            return dict(srv.api("GET", "/_pullwake/runners/r/stream")[2]["open_reads"])

        for query in ("live=long-poll", "live=sse"):
            sock = socket.create_connection(("127.0.0.1", srv.port))
            sock.sendall(
                f"GET /runners/r/wake?offset=now&{query} HTTP/1.1\r\nHost: x\r\n"
                "electric-principal: system:dev-local\r\n\r\n".encode()
            )
            mode = query.split("=")[1]
            wait_until(lambda m=mode: open_reads()[m] == 1, 5, what=f"{mode} open")
            sock.close()
            wait_until(lambda m=mode: open_reads()[m] == 0, 3, what=f"{mode} closed")


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_exit_within_2_s_even_with_a_blackholed_collector(tmp_path: Path, protocol: str) -> None:
    """Every export hangs (connections accepted, never answered): the bounded
    telemetry flush must still fit the 2 s exit promise (it used to take ~3.4 s)."""
    with ThreadedFaultProxy(("127.0.0.1", free_port()), mode=Mode.BLACKHOLE) as collector:
        srv = ServerProcess(
            tmp_path,
            env={
                "OTEL_SDK_DISABLED": "false",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
                "OTEL_EXPORTER_OTLP_TIMEOUT": "10000",
                "OTEL_BSP_SCHEDULE_DELAY": "100",  # exports start, and hang, at once
                "OTEL_METRIC_EXPORT_INTERVAL": "200",
            },
        )
        with running(srv):
            srv.start()
            srv.register("r")
            for _ in range(5):
                srv.publish("r")
            with SSEReader(f"{srv.url}/runners/r/wake?offset=-1&live=sse") as sse:
                sse.events_until(lambda e: e.kind == "control")
                wait_until(lambda: collector.connection_count() > 0, 10, what="an export")
                t0 = time.monotonic()
                srv.signal(signal.SIGTERM)
                while sse.next_event(timeout=2.0) is not None:
                    pass
                assert time.monotonic() - t0 < 1.0
            assert srv.wait(timeout=5.0) == 0
            took = time.monotonic() - t0
            assert took < 2.0, f"exit took {took:.2f} s"
            assert "did not flush" in srv.output()  # the collector really was dead


def test_public_url_is_the_base_of_callback_urls(tmp_path: Path) -> None:
    """Upstream builds `callback` from ELECTRIC_AGENTS_BASE_URL; ours from --public-url."""
    srv = ServerProcess(tmp_path, extra=["--public-url", "https://wakes.example/base/"])
    with running(srv):
        srv.start()
        srv.register("r")
        srv.publish("r", "x", entity="/pullwake/pu")
        _, _, events = srv.api("GET", "/runners/r/wake?offset=-1")
        status, _, claim = srv.api("POST", f"{P}/r/claim", events[0])
        assert status == 200
        assert claim["callback"] == (
            f"https://wakes.example/base/_electric/wake-callbacks/{claim['consumerId']}"
        )

"""Real subprocesses for tests: the server, runners, and condition waits.

Everything here is real: `python -m pullwake ...` child processes, real
loopback sockets, real signals.  Waits poll a condition against a deadline;
nothing sleeps and hopes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.support.waits import wait_until

__all__ = ["wait_until"]  # re-exported: procs users wait on processes

PRINCIPAL = "system:dev-local"


def free_port() -> int:
    """A loopback port that was free a moment ago (bind 0, read, release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """Running: not gone, not a zombie (an orphan's zombie may wait for a lazy reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port where a connect is refused for as long as the block runs.

    The port is bound but never listened on, so no other process can take it
    meanwhile (a port that `free_port()` returned may be reused by anyone).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def http_json(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, dict[str, str], Any]:
    """One HTTP request with a JSON body; returns (status, headers, decoded JSON or text)."""
    data = None if body is None else json.dumps(body).encode()
    h = {"electric-principal": PRINCIPAL}
    if data is not None:
        h["Content-Type"] = "application/json"
    h.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, hdrs, raw = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        status, hdrs, raw = err.code, dict(err.headers), err.read()
    text = raw.decode("utf-8", "replace")
    try:
        return status, hdrs, json.loads(text) if text else None
    except ValueError:
        return status, hdrs, text


def _child_env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OTEL_SDK_DISABLED", "true")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


_SIGTERM = signal.SIGTERM  # Proc.signal (the method) shadows the module in the class body


class Proc:
    """A child process with its output captured to a file (read it on failure)."""

    def __init__(self, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None):
        self.argv = list(argv)
        self.log_path = log_path
        self.env = _child_env(env)
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.popen = subprocess.Popen(
            self.argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
        )
        logf.close()

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        assert self.popen is not None
        self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout=timeout)

    def stop(self, sig: int = _SIGTERM, timeout: float = 5.0) -> int | None:
        """Signal and wait; SIGKILL if it does not exit in time.  Idempotent."""
        if self.popen is None or self.popen.poll() is not None:
            return None if self.popen is None else self.popen.returncode
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.popen.pid, signal.SIGCONT)  # a frozen child cannot exit
            self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(timeout=5)

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class ServerProcess(Proc):
    """`pullwake server` on a fixed loopback port, restartable on the same db."""

    def __init__(
        self,
        tmp: Path,
        *,
        port: int | None = None,
        db: Path | str | None = None,
        keepalive: float = 0.5,
        long_poll_timeout: float = 2.0,
        dev: bool = True,
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ):
        self.port = port or free_port()
        self.db = str(db if db is not None else tmp / "server.db")
        argv = [
            sys.executable,
            "-m",
            "pullwake",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--db",
            self.db,
            "--keepalive-interval",
            str(keepalive),
            "--long-poll-timeout",
            str(long_poll_timeout),
            *extra,
        ]
        if not dev:  # the server's default is upstream's dev fallback (system:dev-local)
            argv.append("--no-dev-principal")
        super().__init__(argv, tmp / f"server-{self.port}.log", env)
        self._publisher: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        try:
            status, _, _ = http_json("GET", f"{self.url}/healthz", timeout=1.0)
            return status == 200
        except OSError:
            return False

    def start(self, timeout: float = 15.0) -> ServerProcess:  # type: ignore[override]
        super().start()
        try:
            wait_until(lambda: self.ready() or not self.alive(), timeout, what="server ready")
        except AssertionError:
            raise AssertionError(f"server did not start:\n{self.output()}") from None
        if not self.alive():
            raise AssertionError(f"server exited at start:\n{self.output()}")
        return self

    def api(
        self, method: str, path: str, body: Any = None, **kw: Any
    ) -> tuple[int, dict[str, str], Any]:
        return http_json(method, self.url + path, body, **kw)

    def register(self, runner_id: str, label: str = "test") -> Any:
        status, _, body = self.api("POST", "/_electric/runners", {"id": runner_id, "label": label})
        assert status in (200, 201), (status, body)
        return body

    def publish(
        self, runner_id: str, payload: Any = None, entity: str | None = None
    ) -> dict[str, Any]:
        """Send one message that wakes `runner_id` (as `pullwake publish` does).

        Without `entity` every call spawns a fresh entity `/pullwake/<random>`
        targeting the runner, so every call makes its own wake (its own
        subscription); with `entity` (`/<type>/<id>`) messages go to that entity
        and coalesce into its subscription's wakes.  Returns `{entity, stream,
        offset (where this message ends in the entity stream), txid,
        subscription_id, wake_id}`; `wake_id` is the txid, kept for callers that
        only need a unique id per publish: the claim's wakeId is the server's.
        """
        from pullwake.server.publish import Publisher

        if self._publisher is None:
            self._publisher = Publisher(self.url, principal=PRINCIPAL)
        target = entity or f"/pullwake/{uuid.uuid4().hex[:12]}"
        out = dict(self._publisher.send(runner_id, target, payload))
        out["wake_id"] = out["txid"]
        return out


class RunnerProcess(Proc):
    """`pullwake run` with a status listener on a loopback port."""

    def __init__(
        self,
        tmp: Path,
        server_url: str,
        runner_id: str,
        *,
        status_port: int | None = None,
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ):
        self.status_port = status_port or free_port()
        self.runner_id = runner_id
        argv = [
            sys.executable,
            "-m",
            "pullwake",
            "run",
            "--server",
            server_url,
            "--runner-id",
            runner_id,
            "--status-listen",
            f"127.0.0.1:{self.status_port}",
            *extra,
        ]
        super().__init__(argv, tmp / f"runner-{runner_id}-{self.status_port}.log", env)

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.status_port}"

    def status(self) -> dict[str, Any]:
        code, _, body = http_json("GET", f"{self.status_url}/status", timeout=2.0)
        assert code == 200, (code, body)
        return dict(body)

    def start(self, timeout: float = 15.0) -> RunnerProcess:  # type: ignore[override]
        super().start()
        try:
            wait_until(lambda: self.status() or not self.alive(), timeout, what="runner status")
        except AssertionError:
            raise AssertionError(f"runner did not start:\n{self.output()}") from None
        return self


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[None]:
    """Stop every process on exit, whatever happened."""
    try:
        yield
    finally:
        for p in reversed(procs):
            p.stop()

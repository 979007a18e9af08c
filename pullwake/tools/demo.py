"""`pullwake demo`: server, runner and publisher in one process tree, watched live.

What `make demo` runs on a fresh machine.  The server and the runner are
child processes of this one (via `pullwake.tools.supervise`, so Ctrl-C or our own
death leaves none behind); the publisher is a thread that posts a wake every
few seconds through the server API.  Once a second a status line shows what
the runner's `/status` says.  `--chaos` SIGKILLs the server on a schedule and
brings it back on the same port and database, so the runner's detection and
recovery can be watched; unless `--profile` is given it runs a `default` and a
`legacy` runner side by side (one status line each), so one is seen to recover
while the other keeps saying `connected=yes` with failing heartbeats.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pullwake.core.protocol import DEV_PRINCIPAL, H_PRINCIPAL, RUNNERS_PREFIX
from pullwake.tools.demo_status import format_status, wakes_delivered
from pullwake.tools.supervise import ChildSpec, HttpReady, Supervisor, SupervisorError

_STATUS_TIMEOUT_S = 0.8


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except where the help already words them or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or "default:" in text:
            return text
        return super()._get_help_string(action) or text


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run a server, a runner and a publisher together and watch the runner live",
        description=(
            "Starts `pullwake server --dev` (SQLite in the work dir), `pullwake run` with a "
            "status listener and a publisher thread, prints the URLs, then one status line "
            "per second from the runner's /status. Ctrl-C stops everything (exit 0)."
        ),
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="directory for the database, logs and offset file (default: a new temp dir)",
    )
    p.add_argument("--db", default=None, help="server database (default: WORKDIR/pullwake-demo.db)")
    p.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    p.add_argument("--status-port", type=int, default=0, help="runner status port (0: a free one)")
    p.add_argument("--runner-id", default="demo", help="runner id to register and publish to")
    p.add_argument(
        "--profile",
        default=None,
        help="runner profile for `pullwake run`: default, upstream or legacy (the seed's bug) "
        "(default: default; with --chaos and no --profile, see --profiles)",
    )
    p.add_argument(
        "--profiles",
        default=None,
        help="comma list: one runner per profile side by side, one status line each "
        "(default: default,legacy with --chaos and no --profile, else just --profile)",
    )
    p.add_argument("--publish-interval", type=float, default=2.0, help="seconds between wakes")
    p.add_argument(
        "--heartbeat-interval",
        type=float,
        default=2.0,
        help="runner heartbeat interval in seconds (short, so the demo is lively)",
    )
    p.add_argument(
        "--keepalive-interval",
        type=float,
        default=1.0,
        help="server SSE keepalive interval in seconds",
    )
    p.add_argument(
        "--chaos", action="store_true", help="SIGKILL and restart the server on a schedule"
    )
    p.add_argument(
        "--chaos-interval",
        type=float,
        default=15.0,
        help="seconds of server uptime between chaos kills",
    )
    p.add_argument(
        "--chaos-down",
        type=float,
        default=2.0,
        help="seconds the server stays down after a chaos kill",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="stop by itself after this many seconds (0: run until Ctrl-C)",
    )
    p.add_argument("--no-runner", action="store_true", help="run only the server and the publisher")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from pullwake.core.errors import CLIError

    for name in (
        "publish_interval",
        "heartbeat_interval",
        "keepalive_interval",
        "chaos_interval",
        "chaos_down",
    ):
        if getattr(args, name) <= 0:
            raise CLIError(f"--{name.replace('_', '-')} must be > 0")
    if args.duration < 0:
        raise CLIError("--duration must be >= 0")
    args.profile_list = _profiles(args)
    if importlib.util.find_spec("pullwake.runner.config") is not None:
        from pullwake.runner.config import PROFILES

        for profile in args.profile_list:
            if profile not in PROFILES:
                raise CLIError(f"unknown profile {profile!r} (choose from {', '.join(PROFILES)})")
    try:
        return Demo(args).run()
    except SupervisorError as exc:
        raise CLIError(str(exc).splitlines()[0]) from None


def _profiles(args: argparse.Namespace) -> list[str]:
    """Runner profiles to start: --profiles, else default+legacy under --chaos, else one."""
    from pullwake.core.errors import CLIError

    if args.profiles is not None:
        got = [p.strip() for p in str(args.profiles).split(",") if p.strip()]
        if not got or len(set(got)) != len(got):
            raise CLIError("--profiles must list distinct profiles, e.g. default,legacy")
        return got
    if args.profile is None and args.chaos:
        return ["default", "legacy"]
    return [args.profile or "default"]


@dataclass(frozen=True)
class RunnerSlot:
    """One runner of the demo: its profile, id, child name, status port and log."""

    profile: str
    runner_id: str
    name: str
    status_port: int
    log: str


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(method: str, url: str, body: Any = None, timeout: float = 2.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {H_PRINCIPAL: DEV_PRINCIPAL, "Content-Type": "application/json"}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
        return int(resp.status), json.loads(raw) if raw else None


class Publisher(threading.Thread):
    """Sends one message every `interval` seconds, as `pullwake publish` does (a fresh
    entity targeting the runner, so each message makes its own wake); counts what
    the server acknowledged."""

    def __init__(self, server: str, runner_id: str, interval: float) -> None:
        from pullwake.server.publish import Publisher as EntityPublisher

        super().__init__(name="demo-publisher", daemon=True)
        self.client = EntityPublisher(server, principal=DEV_PRINCIPAL, timeout=2.0)
        self.runner_id = runner_id
        self.interval = interval
        self.published = 0
        self.failed = 0
        self._halt = threading.Event()

    def run(self) -> None:
        from pullwake.server.publish import PublishError

        while not self._halt.wait(self.interval):
            entity = f"/pullwake/demo-{uuid.uuid4().hex[:12]}"
            try:
                self.client.send(
                    self.runner_id, entity, {"seq": self.published + 1, "from": "demo"}
                )
                self.published += 1
                continue
            except (PublishError, OSError, ValueError):
                pass
            self.failed += 1  # the server is down (chaos): the next tick tries again

    def stop(self) -> None:
        self._halt.set()


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix="pullwake-demo-"))
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = exc.strerror or exc
            raise SupervisorError(f"cannot create --workdir {self.workdir}: {why}") from None
        self.port = args.port or _free_port()
        profiles: list[str] = getattr(args, "profile_list", None) or [args.profile or "default"]
        one = len(profiles) == 1
        self.slots = [
            RunnerSlot(
                profile=p,
                runner_id=args.runner_id if one else f"{args.runner_id}-{p}",
                name="runner" if one else f"runner-{p}",
                status_port=(args.status_port if i == 0 and args.status_port else _free_port()),
                log="runner.log" if one else f"runner-{p}.log",
            )
            for i, p in enumerate(profiles)
        ]
        self.status_port = self.slots[0].status_port
        self.server_url = f"http://127.0.0.1:{self.port}"
        self.status_url = f"http://127.0.0.1:{self.status_port}"
        has_runner = importlib.util.find_spec("pullwake.runner.cli") is not None
        self.with_runner = not args.no_runner and has_runner
        self.sup = Supervisor(grace=5.0)
        self.kills = 0

    def _py(self, *argv: str) -> list[str]:
        return [sys.executable, "-m", "pullwake", *argv]

    def server_spec(self) -> ChildSpec:
        db = self.args.db or str(self.workdir / "pullwake-demo.db")
        argv = self._py(
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--db",
            db,
            "--keepalive-interval",
            str(self.args.keepalive_interval),
            "--dev",
        )
        return ChildSpec(
            "server",
            argv,
            env={"PYTHONUNBUFFERED": "1"},
            log=self.workdir / "server.log",
            ready=HttpReady(f"{self.server_url}/healthz"),
        )

    def runner_spec(self, slot: RunnerSlot | None = None) -> ChildSpec:
        a = self.args
        slot = slot or self.slots[0]
        status_url = f"http://127.0.0.1:{slot.status_port}"
        argv = self._py(
            "run",
            "--server",
            self.server_url,
            "--runner-id",
            slot.runner_id,
            "--label",
            "pullwake demo",
            "--status-listen",
            f"127.0.0.1:{slot.status_port}",
            "--heartbeat-interval",
            str(a.heartbeat_interval),
            "--profile",
            slot.profile,
            "--offset-file",
            str(self.workdir / slot.log.replace(".log", ".offset")),
        )
        return ChildSpec(
            slot.name,
            argv,
            env={"PYTHONUNBUFFERED": "1"},
            log=self.workdir / slot.log,
            ready=HttpReady(f"{status_url}/healthz"),
        )

    def banner(self) -> None:
        a, rid = self.args, self.slots[0].runner_id
        logs = ", ".join(["server.log", *(s.log for s in self.slots)])
        lines = [
            f"pullwake demo: work dir {self.workdir} ({logs})",
            f"  server          {self.server_url}"
            f"  (runner health: {self.server_url}{RUNNERS_PREFIX}/{rid}/health)",
        ]
        if self.with_runner:
            for slot in self.slots:
                lines.append(
                    f"  runner status   http://127.0.0.1:{slot.status_port}/status  /healthz"
                    f"  /readyz  /metrics  (profile {slot.profile}, id {slot.runner_id})"
                )
        else:
            lines.append(
                "  runner          not started (`pullwake run` unavailable or --no-runner)"
            )
        ids = ", ".join(repr(s.runner_id) for s in self.slots)
        lines.append(f"  publisher       one wake every {a.publish_interval:g}s to runner {ids}")
        if a.chaos:
            lines.append(
                f"  chaos           SIGKILL the server every {a.chaos_interval:g}s, "
                f"back after {a.chaos_down:g}s"
            )
        lines.append("Ctrl-C stops everything.")
        print("\n".join(lines), flush=True)

    def server_state(self) -> str:
        """`up` when /healthz answers, `starting` while a restarted server is not ready yet."""
        ready = HttpReady(f"{self.server_url}/healthz", timeout=_STATUS_TIMEOUT_S)
        return "up" if ready.check() else "starting"

    def server_health(self, runner_id: str | None = None) -> str | None:
        """The server's verdict on the runner (it knows whether a stream is really open)."""
        url = f"{self.server_url}{RUNNERS_PREFIX}/{runner_id or self.args.runner_id}/health"
        try:
            status, body = _http("GET", url, timeout=_STATUS_TIMEOUT_S)
        except (OSError, ValueError):
            return None
        health = body.get("health") if status == 200 and isinstance(body, dict) else None
        return str(health.get("status")) if isinstance(health, dict) else None

    def runner_status(self, slot: RunnerSlot | None = None) -> dict[str, Any] | None:
        if not self.with_runner:
            return None
        url = f"http://127.0.0.1:{(slot or self.slots[0]).status_port}/status"
        try:
            status, body = _http("GET", url, timeout=_STATUS_TIMEOUT_S)
        except (OSError, ValueError):
            return None
        return body if status == 200 and isinstance(body, dict) else None

    def run(self) -> int:
        a = self.args
        with self.sup.handle_signals():
            try:
                return self._run(a)
            except SupervisorError:
                if self.sup.stop_requested:  # Ctrl-C while a child was starting
                    print("pullwake demo: stopped during start", flush=True)
                    return 0
                raise
            finally:
                self.sup.stop_all()

    def _run(self, a: argparse.Namespace) -> int:
        self.sup.start(self.server_spec(), timeout=30)
        for slot in self.slots:
            try:  # register up front so publishing works before the runner is up
                _http(
                    "POST",
                    f"{self.server_url}{RUNNERS_PREFIX}",
                    {"id": slot.runner_id, "label": "demo"},
                )
            except (OSError, ValueError) as exc:
                raise SupervisorError(f"cannot register runner {slot.runner_id!r}: {exc}") from None
        if self.with_runner:
            for slot in self.slots:
                self.sup.start(self.runner_spec(slot), timeout=30)
        self.banner()
        publishers = [
            Publisher(self.server_url, slot.runner_id, a.publish_interval) for slot in self.slots
        ]
        for p in publishers:
            p.start()
        t0 = time.monotonic()
        next_kill = t0 + a.chaos_interval if a.chaos else float("inf")
        back_at: float | None = None
        code = 0
        try:
            while not self.sup.sleep(1.0 - (time.monotonic() - t0) % 1.0):
                now = time.monotonic()
                if a.duration and now - t0 >= a.duration:
                    break
                if now >= next_kill and back_at is None:
                    pid = self.sup.child("server").pid
                    self.sup.kill("server")
                    self.kills += 1
                    back_at = now + a.chaos_down
                    print(
                        f"chaos: SIGKILL server (pid {pid}), back in {a.chaos_down:g}s", flush=True
                    )
                elif back_at is not None and now >= back_at - 0.2:  # ticks jitter a little
                    child = self.sup.start(self.server_spec(), wait=False)
                    print(f"chaos: server restarted (pid {child.pid})", flush=True)
                    back_at, next_kill = None, now + a.chaos_interval
                crashed = self.sup.exited()
                if crashed:
                    c = crashed[0]
                    print(
                        f"pullwake demo: {c.name} exited with {c.returncode}; see {c.spec.log}",
                        file=sys.stderr,
                        flush=True,
                    )
                    code = 1
                    break
                server = "DOWN" if back_at is not None else self.server_state()
                for slot, pub in zip(self.slots, publishers, strict=True):
                    print(
                        format_status(
                            now - t0,
                            self.runner_status(slot),
                            pub.published,
                            server,
                            self.with_runner,
                            publish_errors=pub.failed,
                            health=self.server_health(slot.runner_id) if server == "up" else None,
                            label=slot.profile if len(self.slots) > 1 else None,
                        ),
                        flush=True,
                    )
        finally:
            for p in publishers:
                p.stop()
        delivered = sum(wakes_delivered(self.runner_status(s) or {}) for s in self.slots)
        why = "signal" if self.sup.stop_requested else "done"
        print(
            f"pullwake demo: stopping ({why}) after {time.monotonic() - t0:.0f}s: "
            f"published {sum(p.published for p in publishers)}, delivered {delivered}, "
            f"server kills {self.kills}",
            flush=True,
        )
        return code

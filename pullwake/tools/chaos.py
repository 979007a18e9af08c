"""`pullwake chaos`: the faults, side by side, recorded and drawn.

One server, one runner per profile (each behind the same fault proxy), a
publisher sending messages to every runner throughout, and the faults in
order: server kill -9 then restart, server SIGTERM then restart, server
SIGSTOP/SIGCONT, proxy half-open, proxy blackhole, a burst while a handler
runs.  Everything observed goes to `events.jsonl` as it happens; at the end
(or on Ctrl-C) `summary.json`, `timeline.png`/`.svg` and a self-contained
`report.html` are written from those events alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pullwake.core.errors import CLIError
from pullwake.tools.chaos_record import (
    MSG_KEY,
    SLOW_KEY,
    EventLog,
    RunnerWatcher,
    handler_command,
)
from pullwake.tools.supervise import ChildSpec, Supervisor, SupervisorError

STREAMING = "running.streaming"
PROFILES = ("default", "upstream", "legacy")
FAULTS: dict[str, str] = {
    "kill9": "server kill -9",
    "sigterm": "server SIGTERM",
    "sigstop": "server SIGSTOP",
    "half_open": "proxy half-open",
    "blackhole": "proxy blackhole",
    "burst": "burst during handler",
}
QUICK_FAULTS = ("kill9", "half_open")
ALERT_SETTLE_S = 10.0  # scrape + evaluation + poll lag for an alert to resolve
QUICK_PROFILES = ("default", "legacy")
PRINCIPAL = ("electric-principal", "system:dev-local")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "chaos",
        help="run the faults against every runner profile side by side and draw the report",
        description=(
            "Runs one server, one runner per profile behind a fault proxy and a publisher on "
            "loopback, injects the faults in order and writes DIR/events.jsonl, "
            "DIR/summary.json, DIR/timeline.png, DIR/timeline.svg and DIR/report.html "
            "(self-contained). With Prometheus on PATH the project's alert rules run too "
            "(for: durations scaled 1/20). Ctrl-C stops and still writes what it has."
        ),
    )
    p.add_argument("--out", type=Path, required=True, help="output directory (created)")
    p.add_argument(
        "--faults",
        default=None,
        help=f"comma list, in order, from: {', '.join(FAULTS)} (default: all; --quick: "
        f"{','.join(QUICK_FAULTS)})",
    )
    p.add_argument(
        "--profiles",
        default=None,
        help=f"comma list of runner profiles (default: {','.join(PROFILES)}; --quick: "
        f"{','.join(QUICK_PROFILES)})",
    )
    p.add_argument(
        "--outage", type=float, default=None, help="seconds each fault lasts (default 8; --quick 2)"
    )
    p.add_argument(
        "--heartbeat-interval",
        type=float,
        default=None,
        help="runner heartbeat interval in seconds (default 2; --quick 0.5)",
    )
    p.add_argument(
        "--alerts",
        choices=("auto", "on", "off"),
        default="auto",
        help="run Prometheus/Alertmanager with the alert rules: auto = when installed",
    )
    p.add_argument(
        "--quick", action="store_true", help="short run for tests: fewer faults and profiles"
    )
    p.set_defaults(func=_cmd_chaos)


@dataclass
class Settings:
    out: Path
    faults: list[str]
    profiles: list[str]
    outage: float
    heartbeat: float
    keepalive: float
    settle: float
    recover_cap: float
    drain_cap: float
    publish_interval: float
    slow_s: float
    burst: int
    alerts: str
    quick: bool
    extra: dict[str, Any] = field(default_factory=dict)


def settings_from(args: argparse.Namespace) -> Settings:
    q = bool(args.quick)
    faults = _split(args.faults, QUICK_FAULTS if q else tuple(FAULTS))
    profiles = _split(args.profiles, QUICK_PROFILES if q else PROFILES)
    bad = [f for f in faults if f not in FAULTS]
    if bad:
        raise CLIError(f"unknown fault(s) {', '.join(bad)} (choose from {', '.join(FAULTS)})")
    bad = [p for p in profiles if p not in PROFILES]
    if bad:
        raise CLIError(f"unknown profile(s) {', '.join(bad)} (choose from {', '.join(PROFILES)})")
    if len(set(profiles)) != len(profiles):
        raise CLIError("--profiles lists a profile twice")
    outage = 2.0 if args.outage is None and q else (8.0 if args.outage is None else args.outage)
    hb = args.heartbeat_interval
    hb = (0.5 if q else 2.0) if hb is None else hb
    if not 0 < outage <= 600:
        raise CLIError("--outage must be in (0, 600]")
    if not 0 < hb <= 60:
        raise CLIError("--heartbeat-interval must be in (0, 60]")
    keepalive = 0.5 if q else 1.0
    idle = 3 * keepalive
    return Settings(
        out=args.out,
        faults=faults,
        profiles=profiles,
        outage=outage,
        heartbeat=hb,
        keepalive=keepalive,
        settle=1.5 if q else 3.0,
        # long enough for the slowest honest path: K heartbeats, an idle timeout, a backoff
        recover_cap=max(4.0 if q else 8.0, 2 * hb + idle + 2.0),
        drain_cap=3.0 if q else 6.0,
        publish_interval=0.4 if q else 0.5,
        slow_s=1.5 if q else 3.0,
        burst=10 if q else 20,
        alerts=args.alerts,
        quick=q,
    )


def _split(text: str | None, default: tuple[str, ...]) -> list[str]:
    if text is None:
        return list(default)
    items = [x.strip().replace("-", "_") for x in text.split(",") if x.strip()]
    if not items:
        raise CLIError("an empty list")
    return items


def _cmd_chaos(args: argparse.Namespace) -> int:
    s = settings_from(args)
    try:
        s.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot create --out {s.out}: {exc.strerror or exc}") from None
    if s.alerts == "on":
        from pullwake.tools.chaos_alerts import binaries

        if binaries() is None:
            raise CLIError("--alerts on: prometheus is not on PATH (Debian package `prometheus`)")
    return Chaos(s).run()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class AnyHttpAnswer:
    """Ready when the server answers HTTP at all (its health route may be moving)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def check(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=1.0):
                return True
        except urllib.error.HTTPError as err:
            return err.code < 500
        except (OSError, ValueError):
            return False

    def describe(self) -> str:
        return f"GET {self.url} answers"


def say(line: str) -> None:
    print(line, flush=True)


# --- publishing ----------------------------------------------------------------------
Answer = tuple[bool, dict[str, str], str | None]  # acknowledged, {wake_id, stream, offset}, error


class Publisher:
    """Sends numbered messages to one runner; every attempt becomes a `publish` event.

    Three ways, chosen once per run by `choose_publish_mode`: the old publish
    route (`POST /_electric/runners/ID/wakes`), the entity API as `pullwake
    publish` speaks it (`pullwake.server.publish`, in process: a subprocess per
    message would eat the CPU the runners need), or `pullwake publish --runner-id`
    itself.  Answers are read defensively: acknowledged or not, and whatever of
    wake id, stream and offset they name (the summary matches handled work by them).
    """

    def __init__(self, log: EventLog, server_url: str, runner_id: str, mode: str) -> None:
        self.log, self.server_url, self.runner_id, self.mode = log, server_url, runner_id, mode
        self._seq = 0
        self._lock = threading.Lock()
        self._entity_client: Any = None

    def __repr__(self) -> str:
        return f"<Publisher {self.runner_id} {self.mode} seq={self._seq}>"

    def next_msg(self) -> str:
        with self._lock:
            self._seq += 1
            return f"{self.runner_id}#{self._seq}"

    def publish(self, extra: dict[str, Any] | None = None, **fields: Any) -> bool:
        msg = self.next_msg()
        payload = {MSG_KEY: msg, **(extra or {})}
        t = time.time()
        ok, info, error = self._send(payload, slow=bool(extra and extra.get(SLOW_KEY)))
        self.log.emit(
            "publish",
            t,
            runner=self.runner_id,
            msg=msg,
            ok=ok,
            **info,
            **({"error": error} if error else {}),
            **fields,
        )
        return ok

    def _send(self, payload: dict[str, Any], slow: bool) -> Answer:
        if self.mode == "cli":
            return publish_cli(self.server_url, self.runner_id, payload)
        if self.mode == "entity":
            return self._send_entity(payload, slow)
        return publish_http(self.server_url, self.runner_id, payload)

    def _send_entity(self, payload: dict[str, Any], slow: bool) -> Answer:
        from pullwake.server import publish as entity_api

        if self._entity_client is None:
            self._entity_client = entity_api.Publisher(self.server_url, timeout=1.5)
        # slow messages go to their own entity: the handler sees the marker in the path
        entity = f"/chaos/{self.runner_id}" + (f"-{SLOW_KEY}" if slow else "")
        try:
            answer = self._entity_client.send(self.runner_id, entity, payload)
        except Exception as exc:  # PublishError or whatever the client raises: not acked
            return False, {}, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return True, _answer_fields(answer), None


def _answer_fields(body: Any) -> dict[str, str]:
    """wake_id / stream / offset from a publish answer, whatever its shape."""
    out: dict[str, str] = {}
    if not isinstance(body, dict):
        return out
    for key, names in (
        ("wake_id", ("wake_id", "wakeId")),
        ("stream", ("stream", "streamPath", "path")),
        ("offset", ("offset", "next_offset", "nextOffset")),
    ):
        for name in names:
            if isinstance(body.get(name), str) and body[name]:
                out[key] = str(body[name])
                break
    return out


def publish_http(
    server: str, runner_id: str, payload: dict[str, Any], timeout: float = 1.5
) -> Answer:
    url = f"{server}/_electric/runners/{runner_id}/wakes"
    req = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Content-Type": "application/json", PRINCIPAL[0]: PRINCIPAL[1]},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = int(resp.status)
    except urllib.error.HTTPError as err:
        return False, {}, f"HTTP {err.code}"
    except (OSError, ValueError) as exc:
        return False, {}, type(exc).__name__
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    info = _answer_fields(body)
    info.pop("stream", None)  # the old route names the wake stream, not a message stream
    info.pop("offset", None)
    return 200 <= status < 300, info, None


def publish_cli(
    server: str, runner_id: str, payload: dict[str, Any], timeout: float = 10.0
) -> Answer:
    argv = [sys.executable, "-m", "pullwake", "publish", "--server", server]
    argv += ["--runner-id", runner_id, "--payload", json.dumps(payload)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, {}, type(exc).__name__
    if done.returncode != 0:
        return False, {}, (done.stderr.strip().splitlines() or ["failed"])[-1][:200]
    info: dict[str, str] = {}
    for line in done.stdout.splitlines():
        with contextlib.suppress(ValueError):
            info = info or _answer_fields(json.loads(line))
    return True, info, None


def choose_publish_mode(server: str, runner_id: str) -> str:
    """`http` when the old publish route still answers, else `entity` when
    `pullwake.server.publish` offers `Publisher.send`, else `cli`."""
    ok, _, error = publish_http(server, runner_id, {MSG_KEY: f"{runner_id}#probe"}, timeout=3.0)
    if ok or not (error or "").startswith(("HTTP 404", "HTTP 405", "HTTP 410")):
        return "http"
    try:
        from pullwake.server import publish as entity_api
    except ImportError:
        return "cli"
    client = getattr(entity_api, "Publisher", None)
    return "entity" if callable(getattr(client, "send", None)) else "cli"


class PublishLoop(threading.Thread):
    """One message to every runner each interval, each runner on its own thread so a
    hanging publish (a frozen server) does not hold up the others."""

    def __init__(self, publishers: list[Publisher], interval: float) -> None:
        super().__init__(name="chaos-publish", daemon=True)
        self.publishers, self.interval = publishers, interval
        self._halt = threading.Event()

    def run(self) -> None:
        workers = [
            threading.Thread(target=self._one, args=(p,), daemon=True) for p in self.publishers
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    def _one(self, p: Publisher) -> None:
        while not self._halt.wait(self.interval):
            p.publish()

    def stop(self) -> None:
        self._halt.set()


# --- the run -------------------------------------------------------------------------
class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) asked the run to stop."""


class Chaos:
    def __init__(self, s: Settings) -> None:
        self.s = s
        self.work = s.out / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        for old in (s.out / "events.jsonl", *self.work.glob("handled-*.txt")):
            old.unlink(missing_ok=True)
        self.log = EventLog(s.out / "events.jsonl")
        self.sup = Supervisor(grace=3.0)
        self.port = free_port()
        self.server_url = f"http://127.0.0.1:{self.port}"
        self.runners = {f"chaos-{p}": p for p in s.profiles}
        self.status_ports = {rid: free_port() for rid in self.runners}
        self.watchers: dict[str, RunnerWatcher] = {}
        self.publishers: list[Publisher] = []
        self.proxy: Any = None
        self.alerts: Any = None
        self.t0 = time.monotonic()
        self.current: str | None = None
        self._heal: Callable[[], None] | None = None
        self._alert_bins: tuple[str, str | None] | None = None

    # --- children ---------------------------------------------------------------------
    def _py(self, *argv: str) -> list[str]:
        return [sys.executable, "-m", "pullwake", *argv]

    def _env(self) -> dict[str, str]:
        env = {"PYTHONUNBUFFERED": "1", "TZ": "UTC"}
        env["OTEL_SDK_DISABLED"] = "false" if self._alert_bins else "true"
        return env

    def server_spec(self) -> ChildSpec:
        argv = self._py(
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--db",
            str(self.work / "server.db"),
            "--keepalive-interval",
            str(self.s.keepalive),
            "--dev",
        )
        return ChildSpec(
            "server",
            argv,
            env=self._env(),
            log=self.work / "server.log",
            ready=AnyHttpAnswer(f"{self.server_url}/healthz"),
            grace=3.0,
        )

    def runner_spec(self, rid: str, profile: str, server: str) -> ChildSpec:
        port = self.status_ports[rid]
        argv = self._py(
            "run",
            "--server",
            server,
            "--runner-id",
            rid,
            "--label",
            f"chaos {profile}",
            "--status-listen",
            f"127.0.0.1:{port}",
            "--profile",
            profile,
            "--heartbeat-interval",
            str(self.s.heartbeat),
            "--handler",
            handler_command(self.work / f"handled-{rid}.txt", self.s.slow_s),
            "--handler-timeout",
            "60",
            "--offset-file",
            str(self.work / f"{rid}.offset"),
            "--log-level",
            "info",
            "--log-format",
            "text",  # chaos_record reads these lines, whatever PULLWAKE_LOG_FORMAT says
        )
        return ChildSpec(
            rid,
            argv,
            env=self._env(),
            log=self.work / f"{rid}.log",
            ready=AnyHttpAnswer(f"http://127.0.0.1:{port}/status"),
            grace=3.0,
        )

    def spawn(self, spec: ChildSpec) -> None:
        """Start a child and record its pid (a test checks none outlives the run)."""
        child = self.sup.start(spec, timeout=30)
        self.log.emit("process", name=spec.name, pid=child.pid)

    # --- progress -----------------------------------------------------------------------
    def elapsed(self) -> str:
        return f"[{time.monotonic() - self.t0:6.1f}s]"

    def wait(self, seconds: float) -> None:
        if self.sup.sleep(max(0.0, seconds)):
            raise Interrupted

    def wait_for(self, cond: Callable[[], bool], cap: float, step: float = 0.1) -> bool:
        deadline = time.monotonic() + cap
        while time.monotonic() < deadline:
            if cond():
                return True
            self.wait(step)
        return cond()

    def states(self) -> dict[str, str]:
        return {rid: str((w.status or {}).get("state", "?")) for rid, w in self.watchers.items()}

    # --- main -----------------------------------------------------------------------------
    def run(self) -> int:
        from pullwake.tools.faultproxy import ThreadedFaultProxy

        s = self.s
        if s.alerts != "off":
            from pullwake.tools.chaos_alerts import binaries

            self._alert_bins = binaries()
        interrupted = False
        code = 0
        self.log.emit(
            "run_start",
            runners=self.runners,
            runner_order=list(self.runners),
            faults=s.faults,
            labels=FAULTS,
            outage_s=s.outage,
            heartbeat_interval_s=s.heartbeat,
            keepalive_s=s.keepalive,
            idle_timeout_s=3 * s.keepalive,
            quick=s.quick,
            slow_handler_s=s.slow_s,
            alerts_note=(
                "no alert went pending"
                if self._alert_bins
                else "alerts off (--alerts off)"
                if s.alerts == "off"
                else "no alerts: prometheus not on PATH"
            ),
        )
        say(
            f"pullwake chaos: {len(self.runners)} runner(s) ({', '.join(s.profiles)}), faults "
            f"{', '.join(s.faults)}, outage {s.outage:g}s, heartbeat {s.heartbeat:g}s -> {s.out}"
        )
        with self.sup.handle_signals():
            try:
                self.proxy = ThreadedFaultProxy(upstream=("127.0.0.1", self.port)).start()
                self._start()
                for i, fault in enumerate(s.faults, 1):
                    self.phase(i, fault)
                self._drain()
            except Interrupted:
                interrupted = True
                say(f"{self.elapsed()} interrupted: stopping and writing what was recorded")
            except SupervisorError as exc:
                if self.sup.stop_requested:
                    interrupted = True
                    say(f"{self.elapsed()} interrupted: stopping and writing what was recorded")
                else:
                    self.log.emit("note", text=f"aborted: {str(exc).splitlines()[0]}")
                    say(f"pullwake chaos: error: {exc}")
                    code = 1
            except Exception as exc:  # a bug or a surprise: still stop everything, still write
                self.log.emit("note", text=f"aborted: {type(exc).__name__}: {exc}")
                say(f"pullwake chaos: error: {type(exc).__name__}: {exc}")
                code = 1
            finally:
                self._teardown()
        self.log.emit("run_end", interrupted=interrupted)
        self.log.close()
        self._write_outputs()
        return 130 if interrupted else code

    def _start(self) -> None:
        s = self.s
        self.spawn(self.server_spec())
        if self._alert_bins:
            from pullwake.tools.chaos_alerts import AlertWatch

            targets = {
                "pullwake-server": [f"127.0.0.1:{self.port}"],
                "pullwake-runner": [f"127.0.0.1:{p}" for p in self.status_ports.values()],
            }
            self.alerts = AlertWatch(
                self.sup,
                self.log,
                self.work,
                targets,
                self._alert_bins[0],
                self._alert_bins[1],
                (free_port(), free_port()),
            )
            self.alerts.launch()
            self.alerts.start()
            self.log.emit("note", text=f"alert rules with for: scaled x{1 / 20:g}")
        for rid, profile in self.runners.items():
            self.spawn(self.runner_spec(rid, profile, self.proxy.url))
            w = RunnerWatcher(
                self.log,
                rid,
                f"http://127.0.0.1:{self.status_ports[rid]}/status",
                self.work / f"{rid}.log",
                self.work / f"handled-{rid}.txt",
            )
            w.start()
            self.watchers[rid] = w
        ok = self.wait_for(lambda: all(v == STREAMING for v in self.states().values()), 30)
        if not ok:
            raise SupervisorError(f"runners not streaming after 30s: {self.states()}")
        mode = choose_publish_mode(self.server_url, next(iter(self.runners)))
        self.log.emit("note", text=f"publishing through {mode}")
        self.publishers = [Publisher(self.log, self.server_url, r, mode) for r in self.runners]
        self.loop = PublishLoop(self.publishers, s.publish_interval)
        self.loop.start()
        say(f"{self.elapsed()} all runners streaming; publishing every {s.publish_interval:g}s")

    def phase(self, i: int, fault: str) -> None:
        s, label = self.s, FAULTS[fault]
        self.current = fault
        self.log.emit("phase_start", fault=fault, label=label)
        say(f"{self.elapsed()} phase {i}/{len(s.faults)} {label}: settling {s.settle:g}s")
        self.wait(s.settle)
        if fault == "burst":
            self._burst(label)
        else:
            self.log.emit("fault_start", fault=fault, label=label, outage=True)
            self._heal = self.inject(fault)
            self.wait(s.outage)
            self.heal()
            for p in self.publishers:  # time to first delivery after the heal
                threading.Thread(
                    target=p.publish, kwargs={"probe": True, "fault": fault}, daemon=True
                ).start()
            self.wait_for(self._recovered, s.recover_cap, step=0.25)
        self.log.emit("phase_end", fault=fault)
        self.current = None
        say(f"{self.elapsed()} phase {i}/{len(s.faults)} {label}: {self._verdict(fault)}")

    def inject(self, fault: str) -> Callable[[], None]:
        """Start the fault; return what heals it."""
        if fault in ("kill9", "sigterm"):
            if fault == "kill9":
                self.sup.kill("server")
            else:
                child = self.sup.child("server")
                child.stopping = True
                self.sup.send_signal("server", signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.popen.wait(timeout=self.s.outage)

            def restart() -> None:
                if self.sup.child("server").alive():
                    self.sup.kill("server")
                self.spawn(self.server_spec())

            return restart
        if fault == "sigstop":
            self.sup.send_signal("server", signal.SIGSTOP)
            return lambda: self.sup.send_signal("server", signal.SIGCONT)
        self.proxy.set_mode(fault)
        return lambda: self.proxy.set_mode("pass")

    def heal(self) -> None:
        if self._heal is None:
            return
        heal, self._heal = self._heal, None
        heal()
        if self.current:
            self.log.emit("fault_heal", fault=self.current)

    def _burst(self, label: str) -> None:
        """A slow message to each runner, then a burst while its handler runs."""
        s = self.s
        self.log.emit("fault_start", fault="burst", label=label, outage=False)
        for p in self.publishers:
            p.publish({SLOW_KEY: True}, fault="burst")
        self.wait(min(0.5, s.slow_s / 3))
        threads = [
            threading.Thread(
                target=lambda p=p: [p.publish(fault="burst") for _ in range(s.burst)],
                daemon=True,
            )
            for p in self.publishers
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.log.emit("fault_heal", fault="burst")
        self.wait_for(self._all_handled, s.slow_s + s.recover_cap, step=0.25)

    def _recovered(self) -> bool:
        states = self.states()
        return all(v == STREAMING for v in states.values()) and self._all_handled()

    def _all_handled(self) -> bool:
        from pullwake.tools.chaos_summary import summarize

        totals = summarize(self.log.events())["totals"]
        return bool(totals["lost"] == 0)

    def _drain(self) -> None:
        """Late messages get handled; with Prometheus, alerts get the time to resolve."""
        self.loop.stop()
        cap = self.s.drain_cap + (ALERT_SETTLE_S if self.alerts is not None else 0.0)
        say(f"{self.elapsed()} draining: up to {cap:g}s for late messages and alerts to settle")

        def settled() -> bool:
            quiet = self.alerts is None or self.alerts.active == 0
            return quiet and self._all_handled()

        self.wait_for(settled, cap, step=0.25)

    def _verdict(self, fault: str) -> str:
        from pullwake.tools.chaos_summary import summarize

        for w in self.watchers.values():
            w.poll()
        faults = [f for f in summarize(self.log.events())["faults"] if f["fault"] == fault]
        if not faults:
            return "no data"
        parts = []
        for rid, row in faults[-1]["rows"].items():
            det = row["detected_s"]
            if faults[-1]["outage"]:
                what = "never detected" if det is None else f"detected {det:.2f}s"
                back = row["first_delivery_s"]
                what += f", delivering {back:.2f}s after heal" if back is not None else ""
            else:
                what = "ok"
            parts.append(
                f"{self.runners.get(rid, rid)}: {what}, lost {row['lost']}, "
                f"twice {row['handled_twice']}"
            )
        return "; ".join(parts)

    def _teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.heal()  # never leave a server frozen or a proxy black-holing
        loop = getattr(self, "loop", None)
        if loop is not None:
            loop.stop()
        for w in self.watchers.values():
            w.stop()
        for w in self.watchers.values():
            w.join(timeout=3)
        if self.alerts is not None:
            self.alerts.stop()
            self.alerts.join(timeout=3)
        self.sup.stop_all()
        if self.proxy is not None:
            with contextlib.suppress(Exception):
                self.proxy.stop()

    def _write_outputs(self) -> None:
        from pullwake.tools.chaos_report import write_outputs

        paths = write_outputs(self.s.out)
        say("pullwake chaos: wrote " + ", ".join(str(p) for p in paths))

#!/usr/bin/env python3
"""The real agents-server and the upstream runner side by side with pullwake's, through faults.

For each pairing of server (the real agents-server | `pullwake server --compat upstream`) and
runner (the unmodified upstream runner | `pullwake run`) it runs one scenario:

1. burst: one message to each of --entities entities at once; while the first entity's handler
   runs, --extra more messages to it and one more to every other entity;
2. kill -9 of the server while a handler runs (a claim in flight) and one more message for that
   entity waits behind it, restart on the same port and data, then one message to an idle
   entity and one to the killed claim's entity;
3. SIGSTOP of the server for --stop-seconds (a message sent meanwhile waits in the kernel's
   socket queue), SIGCONT, then a message;
4. settle: wait until every message was handled, at most --settle-seconds (lease expiries are
   30 s), and longer than one lease after the kill so that duplicates show.

and prints per pairing: published (send answered 2xx), handled (a handler ran for it), lost,
handled twice, and for each fault the detection time (the runner's own status says it is not
connected/healthy) and the recovery time (first handler run after the server is back).

A handler run covers the messages of its entity stream after the offset the server had
acknowledged when the claim was made, up to the claim's offset. Messages are located by the
offset the entity stream gives each item. Usage:

    python3 interop/sidebyside.py --electric PATH [--commit SHA] [--pullwake DIR]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import upstream  # interop/ is not a package: imported from beside this file

INTEROP_DIR = Path(__file__).resolve().parent
REPO = INTEROP_DIR.parent
ENTITY_TYPE = "sbs"
PRINCIPAL_URL = "/principal/system%3Adev-local"


def log(message: str) -> None:
    print(f"[sidebyside {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def now_ms() -> int:
    return int(time.time() * 1000)


def wait_until(pred: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def request(method: str, url: str, body: Any = None, timeout: float = 10.0,
            ) -> tuple[int | None, Any]:
    """One JSON request; (status, parsed body or text), status None when nothing answered."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read().decode()
            status: int = resp.status
    except urllib.error.HTTPError as exc:
        raw = exc.read().decode(errors="replace")
        status = exc.code
    except (OSError, ValueError):
        return None, None
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw


# ----------------------------------------------------------------------------- servers


class RealServer:
    """The real agents-server (Postgres stays up; only the agents-server process is faulted)."""

    name = "agents-server (real)"

    def __init__(self, root: Path, run_dir: Path) -> None:
        self.root = root
        self.run_dir = run_dir
        self.stack: upstream.Stack | None = None
        self.port = upstream.free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.stack is not None
        return self.stack.server.pid

    def start(self) -> None:
        self.stack = upstream.start_stack(self.root, port=self.port, run_dir=self.run_dir,
                                          keep=True)

    def restart(self) -> None:
        assert self.stack is not None
        self.stack.server.start()

    def reap(self) -> None:
        assert self.stack is not None and self.stack.server.proc is not None
        self.stack.server.proc.wait()

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()


class OurServer:
    """`python -m pullwake server --compat upstream` on a SQLite file that outlives kill -9."""

    name = "pullwake server"

    def __init__(self, pullwake_dir: Path, run_dir: Path, extra: list[str]) -> None:
        self.pullwake_dir = pullwake_dir
        self.run_dir = run_dir
        self.extra = extra
        self.port = upstream.free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        out = (self.run_dir / "server.log").open("ab")
        cmd = [pullwake_python(), "-m", "pullwake", "server", "--compat", "upstream", "--host",
               "127.0.0.1", "--port", str(self.port), "--db", str(self.run_dir / "pullwake.db"),
               *self.extra]
        self.proc = subprocess.Popen(cmd, cwd=self.pullwake_dir, env=pullwake_env(
            self.pullwake_dir), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        ok = wait_until(lambda: self.proc is not None and (
            self.proc.poll() is not None
            or request("GET", self.url + "/_electric/health", timeout=1)[0] == 200), 30)
        if not ok or self.proc.poll() is not None:
            raise upstream.InteropError(f"pullwake server did not start; see "
                                        f"{self.run_dir / 'server.log'}")

    def restart(self) -> None:
        self.start()

    def reap(self) -> None:
        assert self.proc is not None
        self.proc.wait()

    def stop(self) -> None:
        upstream.stop_process(self.proc, signal.SIGTERM, grace=5)


Server = RealServer | OurServer


def pullwake_python() -> str:
    """The project venv's Python (pullwake's dependencies), else this one."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def pullwake_env(pullwake_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(pullwake_dir) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OTEL_SDK_DISABLED", "true")
    return env


# ----------------------------------------------------------------------------- runners


class UpstreamRunner:
    """The unmodified upstream runner in interop/runner-host.mjs."""

    name = "upstream runner"

    def __init__(self, root: Path, run_dir: Path, runner_id: str, heartbeat_s: float,
                 work_ms: int) -> None:
        self.root = root
        self.log_path = run_dir / "runner.jsonl"
        self.err_path = run_dir / "runner.err"
        self.runner_id = runner_id
        self.heartbeat_s = heartbeat_s
        self.work_ms = work_ms
        self.status_port = upstream.free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, server_url: str) -> None:
        cmd = upstream.runner_command(self.root, server_url, self.runner_id, [
            "--heartbeat-interval-ms", str(int(self.heartbeat_s * 1000)),
            "--work-ms", str(self.work_ms), "--status-port", str(self.status_port), "--trace"])
        self.proc = subprocess.Popen(cmd, stdout=self.log_path.open("ab"),
                                     stderr=self.err_path.open("ab"), stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    def events(self) -> list[dict[str, Any]]:
        return read_jsonl(self.log_path)

    def wakes(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == "wake"]

    def ready(self) -> bool | None:
        status, body = request("GET", f"http://127.0.0.1:{self.status_port}/", timeout=1)
        if status != 200 or not isinstance(body, dict):
            return None
        return body.get("status") == "streaming" and bool(body.get("last_heartbeat_ok"))

    def stop(self) -> None:
        upstream.stop_process(self.proc, signal.SIGTERM, grace=8)


class OurRunner:
    """`python -m pullwake run` with interop/record_wake.py as its --handler."""

    name = "pullwake runner"

    def __init__(self, pullwake_dir: Path, run_dir: Path, runner_id: str, heartbeat_s: float,
                 work_ms: int, extra: list[str]) -> None:
        self.pullwake_dir = pullwake_dir
        self.run_dir = run_dir
        self.out = run_dir / "handled.jsonl"
        self.runner_id = runner_id
        self.heartbeat_s = heartbeat_s
        self.work_ms = work_ms
        self.extra = extra
        self.status_port = upstream.free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, server_url: str) -> None:
        handler = " ".join([
            sys.executable, str(INTEROP_DIR / "record_wake.py"), "--out", str(self.out),
            "--server", server_url, "--runner-id", self.runner_id,
            "--work-ms", str(self.work_ms)])
        cmd = [pullwake_python(), "-m", "pullwake", "run", "--server", server_url,
               "--runner-id", self.runner_id, "--handler", handler,
               "--heartbeat-interval", f"{self.heartbeat_s:g}",
               "--status-listen", f"127.0.0.1:{self.status_port}", *self.extra]
        self.proc = subprocess.Popen(
            cmd, cwd=self.pullwake_dir, env=pullwake_env(self.pullwake_dir),
            stdout=(self.run_dir / "runner.log").open("ab"), stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)

    def wakes(self) -> list[dict[str, Any]]:
        return read_jsonl(self.out)

    def ready(self) -> bool | None:
        status, _ = request("GET", f"http://127.0.0.1:{self.status_port}/readyz", timeout=1)
        if status is None:
            return None
        return status == 200

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # The whole group: handlers (record_wake.py) are its children.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(8)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


Runner = UpstreamRunner | OurRunner


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out: list[dict[str, Any]] = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            item = json.loads(line)
            if isinstance(item, dict):
                out.append(item)
    return out


class ReadinessWatch:
    """Polls the runner's own status every 100 ms and keeps its transitions (ms, ready)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.transitions: list[tuple[int, bool | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        last: bool | str | None = "unset"
        while not self._stop.is_set():
            state = self.runner.ready()
            if state != last:
                self.transitions.append((now_ms(), state))
                last = state
            self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def first_not_ready_after(self, t_ms: int) -> int | None:
        for ts, state in self.transitions:
            if ts >= t_ms and state is False:
                return ts
        return None

    def first_ready_after(self, t_ms: int) -> int | None:
        for ts, state in self.transitions:
            if ts >= t_ms and state is True:
                return ts
        return None

    def is_ready(self) -> bool:
        return bool(self.transitions) and self.transitions[-1][1] is True


# ----------------------------------------------------------------------------- scenario


@dataclass
class Message:
    id: str
    entity: str
    phase: str
    sent_ms: int = 0
    status: int | None = None
    txid: str | None = None
    offset: str | None = None       # the message's offset in its entity stream (its end)
    head_offset: str | None = None  # fallback: the stream's tail right after the send

    @property
    def published(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class Fault:
    kind: str
    at_ms: int
    back_ms: int | None = None
    detected_ms: int | None = None
    ready_again_ms: int | None = None
    first_wake_after_ms: int | None = None
    pending_id: str | None = None        # a message waiting behind the claim the fault hit
    pending_back_ms: int | None = None   # the first handler run that covered it

    def detection_s(self) -> float | None:
        if self.detected_ms is None:
            return None
        return (self.detected_ms - self.at_ms) / 1000

    def recovery_s(self) -> float | None:
        if self.first_wake_after_ms is None or self.back_ms is None:
            return None
        return (self.first_wake_after_ms - self.back_ms) / 1000


@dataclass
class Result:
    pairing: str
    published: int = 0
    handled: int = 0
    lost: int = 0
    handled_twice: int = 0
    handler_runs: int = 0
    faults: list[Fault] = field(default_factory=list)
    lost_ids: list[str] = field(default_factory=list)
    twice_ids: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    run_dir: str = ""


class Scenario:
    def __init__(self, server: Server, runner: Runner, args: argparse.Namespace,
                 pairing: str, run_dir: Path) -> None:
        self.server = server
        self.runner = runner
        self.args = args
        self.result = Result(pairing=pairing, run_dir=str(run_dir))
        self.messages: list[Message] = []
        self.entities = [f"e{i}" for i in range(args.entities)]
        self.watch = ReadinessWatch(runner)
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=16)
        self._seq = 0
        self._lock = threading.Lock()

    # -- publishing

    def setup_entities(self) -> None:
        url = self.server.url
        status, body = request("POST", url + "/_electric/entity-types",
                               {"name": ENTITY_TYPE, "description": "sidebyside"})
        if status not in (200, 201, 409):
            raise upstream.InteropError(f"entity type: {status} {body}")
        for e in self.entities:
            status, body = request("PUT", f"{url}/_electric/entities/{ENTITY_TYPE}/{e}", {
                "dispatch_policy": {"targets": [{"type": "runner",
                                                  "runnerId": self.runner.runner_id}]}})
            if status not in (200, 201):
                raise upstream.InteropError(f"spawn {e}: {status} {body}")

    def send(self, entity: str, phase: str, timeout: float = 10.0) -> Message:
        with self._lock:
            self._seq += 1
            msg = Message(id=f"m{self._seq:03d}", entity=entity, phase=phase)
            self.messages.append(msg)
        msg.sent_ms = now_ms()
        status, body = request(
            "POST", f"{self.server.url}/_electric/entities/{ENTITY_TYPE}/{entity}/send",
            {"from": PRINCIPAL_URL, "payload": {"msg": msg.id}}, timeout=timeout)
        msg.status = status
        if isinstance(body, dict):
            msg.txid = body.get("txid")
        if msg.published:
            head = self.stream_tail(entity)
            msg.head_offset = head
        return msg

    def stream_tail(self, entity: str) -> str | None:
        req = urllib.request.Request(f"{self.server.url}/{ENTITY_TYPE}/{entity}/main",
                                     method="HEAD")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                value = resp.headers.get("stream-next-offset")
                return value if isinstance(value, str) else None
        except (OSError, ValueError):
            return None

    def send_serial(self, entity: str, phase: str, count: int) -> list[Message]:
        return [self.send(entity, phase) for _ in range(count)]

    def handler_started_for(self, entity: str, after_ms: int) -> bool:
        stream = f"/{ENTITY_TYPE}/{entity}/main"
        return any(w.get("stream") == stream and int(w.get("ts", 0)) >= after_ms
                   for w in self.runner.wakes())

    # -- phases

    def burst(self) -> None:
        t0 = now_ms()
        log(f"  burst: {len(self.entities)} entities at once")
        list(self.pool.map(lambda e: self.send(e, "burst"), self.entities))
        first = self.entities[0]
        if not wait_until(lambda: self.handler_started_for(first, t0), 20):
            self.result.notes.append("burst: no handler ran for e0 within 20 s")
        log(f"  burst: {self.args.extra} more to {first} while its handler runs, "
            "1 more to each other")
        jobs: list[concurrent.futures.Future[Any]] = [
            self.pool.submit(self.send_serial, first, "burst-while-running", self.args.extra)]
        jobs += [self.pool.submit(self.send, e, "burst-while-running")
                 for e in self.entities[1:]]
        for job in jobs:
            job.result()
        self.wait_handled(30)

    def kill9(self) -> None:
        target = self.entities[1 % len(self.entities)]
        t0 = now_ms()
        self.send(target, "before-kill")
        if not wait_until(lambda: self.handler_started_for(target, t0), 15):
            self.result.notes.append("kill: the pre-kill message was not being handled")
        # Work that arrives while the claim is in flight waits for the claim's end: pending.
        fault_pending = self.send(target, "pending-at-kill")
        fault = Fault(kind="kill -9", at_ms=now_ms())
        log(f"  kill -9 server pid {self.server.pid} (a handler of {target} running)")
        os.kill(self.server.pid, signal.SIGKILL)
        self.server.reap()
        wait_until(lambda: self.watch.first_not_ready_after(fault.at_ms) is not None,
                   self.args.detect_seconds)
        fault.detected_ms = self.watch.first_not_ready_after(fault.at_ms)
        log(f"  detected: {fmt_s(fault.detection_s())}; restarting")
        self.server.restart()
        fault.back_ms = now_ms()
        self.result.faults.append(fault)
        # One to an idle entity (how soon wakes flow again) and one to the killed claim's
        # entity (does the work that was pending at the kill come back with it?).
        fault.pending_id = fault_pending.id
        self.after_fault(fault, [self.entities[2 % len(self.entities)], target], "after-kill")

    def sigstop(self) -> None:
        fault = Fault(kind="SIGSTOP", at_ms=now_ms())
        log(f"  SIGSTOP server pid {self.server.pid} for {self.args.stop_seconds:g} s")
        os.kill(self.server.pid, signal.SIGSTOP)
        try:
            target = self.entities[3 % len(self.entities)]
            during = self.pool.submit(self.send, target, "during-stop",
                                      self.args.stop_seconds + 30)
            time.sleep(self.args.stop_seconds)
        finally:
            os.kill(self.server.pid, signal.SIGCONT)
        fault.back_ms = now_ms()
        fault.detected_ms = self.watch.first_not_ready_after(fault.at_ms)
        if fault.detected_ms is not None and fault.detected_ms > fault.back_ms:
            fault.detected_ms = None
        log(f"  SIGCONT; detected while stopped: {fmt_s(fault.detection_s())}")
        self.result.faults.append(fault)
        self.after_fault(fault, [self.entities[0]], "after-stop")
        during.result()

    def after_fault(self, fault: Fault, entities: list[str], phase: str) -> None:
        for entity in entities:
            self.send(entity, phase)
        wait_until(lambda: self.first_wake_after(fault.back_ms or 0) is not None, 45)
        fault.first_wake_after_ms = self.first_wake_after(fault.back_ms or 0)
        if fault.detected_ms is not None:  # it noticed: wait for it to say it is back
            wait_until(lambda: self.watch.first_ready_after(fault.back_ms or 0) is not None, 30)
        fault.ready_again_ms = self.watch.first_ready_after(fault.back_ms or 0)
        log(f"  first wake handled {fmt_s(fault.recovery_s())} after the server was back")

    def first_wake_after(self, t_ms: int) -> int | None:
        times = [int(w.get("ts", 0)) for w in self.runner.wakes() if int(w.get("ts", 0)) >= t_ms]
        return min(times) if times else None

    def wait_handled(self, timeout: float) -> bool:
        return wait_until(lambda: self.unhandled() == [], timeout, step=0.25)

    def unhandled(self) -> list[Message]:
        counts = self.coverage()
        return [m for m in self.messages if m.published and counts.get(m.id, 0) == 0]

    # -- accounting

    def locate_offsets(self) -> None:
        """Each message's offset as the entity stream reports it (item headers.offset)."""
        for entity in self.entities:
            status, body = request("GET", f"{self.server.url}/{ENTITY_TYPE}/{entity}/main"
                                   "?offset=-1", timeout=10)
            if status != 200 or not isinstance(body, list):
                continue
            for item in body:
                if not isinstance(item, dict):
                    continue
                value = item.get("value") or {}
                payload = value.get("payload") if isinstance(value, dict) else None
                offset = (item.get("headers") or {}).get("offset")
                if isinstance(payload, dict) and isinstance(offset, str):
                    for m in self.messages:
                        if m.id == payload.get("msg") and m.entity == entity:
                            m.offset = offset

    def coverage(self) -> dict[str, int]:
        """How many handler runs covered each message: acked_before < offset <= claim offset."""
        runs = self.runner.wakes()
        counts: dict[str, int] = {}
        for m in self.messages:
            where = m.offset or m.head_offset
            if not m.published or where is None:
                continue
            stream = f"/{ENTITY_TYPE}/{m.entity}/main"
            for run in runs:
                if run.get("stream") != stream or not isinstance(run.get("offset"), str):
                    continue
                before = run.get("acked_before") or run.get("local_acked_before") or ""
                if before < where <= run["offset"]:
                    counts[m.id] = counts.get(m.id, 0) + 1
        return counts

    def first_run_covering(self, message_id: str) -> int | None:
        msg = next((m for m in self.messages if m.id == message_id), None)
        if msg is None:
            return None
        where = msg.offset or msg.head_offset
        if where is None:
            return None
        stream = f"/{ENTITY_TYPE}/{msg.entity}/main"
        times = [int(run.get("ts", 0)) for run in self.runner.wakes()
                 if run.get("stream") == stream and isinstance(run.get("offset"), str)
                 and (run.get("acked_before") or run.get("local_acked_before") or "")
                 < where <= run["offset"]]
        return min(times) if times else None

    def account(self) -> None:
        self.locate_offsets()
        counts = self.coverage()
        r = self.result
        published = [m for m in self.messages if m.published]
        r.published = len(published)
        r.handled = sum(1 for m in published if counts.get(m.id, 0) >= 1)
        r.lost = r.published - r.handled
        r.handled_twice = sum(1 for m in published if counts.get(m.id, 0) >= 2)
        r.lost_ids = [f"{m.id}({m.entity},{m.phase})" for m in published
                      if counts.get(m.id, 0) == 0]
        r.twice_ids = [f"{m.id}({m.entity},{m.phase})x{counts[m.id]}" for m in published
                       if counts.get(m.id, 0) >= 2]
        r.handler_runs = len(self.runner.wakes())
        for fault in r.faults:
            if fault.pending_id is not None:
                fault.pending_back_ms = self.first_run_covering(fault.pending_id)
                back = fault.back_ms or 0
                r.notes.append(
                    f"{fault.kind}: the message pending behind the claim in flight "
                    + ("was never handled" if fault.pending_back_ms is None else
                       f"was handled {(fault.pending_back_ms - back) / 1000:.1f} s after "
                       "the server was back"))
        unpublished = [f"{m.id}({m.phase}: {m.status})" for m in self.messages
                       if not m.published]
        if unpublished:
            r.notes.append("not published (send failed): " + ", ".join(unpublished))
        if any(m.published and m.offset is None for m in self.messages):
            r.notes.append("some message offsets from HEAD after the send (stream items "
                           "carry no headers.offset)")
        if isinstance(self.runner, UpstreamRunner):
            failed = [e for e in self.runner.events()
                      if e.get("event") == "done" and not e.get("ok")]
            if failed:
                r.notes.append(f"{len(failed)} completion(s) failed: " + "; ".join(
                    f"{e.get('stream')} epoch {e.get('epoch')}: "
                    f"{e.get('status') or e.get('error')} {str(e.get('body') or '')[:120]}"
                    .strip() for e in failed))
        if any(w.get("acked_before") is None for w in self.runner.wakes()):
            r.notes.append("some handler runs without the server's acked offset "
                           "(/__ds/subscriptions unavailable): counted from the runner's own "
                           "last completion")

    def run(self) -> Result:
        self.server.start()
        log(f"  server {self.server.name} at {self.server.url}")
        self.runner.start(self.server.url)
        self.watch.start()
        try:
            proc = self.runner.proc
            if not wait_until(lambda: self.watch.is_ready() or (
                    proc is not None and proc.poll() is not None), 30):
                self.result.notes.append("runner not ready 30 s after start")
            if proc is not None and proc.poll() is not None:
                raise upstream.InteropError(f"the runner exited ({proc.returncode}) at start")
            self.setup_entities()
            self.burst()
            self.kill9()
            # Settle the kill first (a held claim's 30 s lease may have to run out).
            self.wait_handled(40)
            self.sigstop()
            settle_until = time.monotonic() + self.args.settle_seconds
            # A completion lost to a fault leaves its claim to the 30 s lease expiry, which
            # announces the work again: wait that long after the last fault so it shows.
            back_at = self.result.faults[-1].back_ms or now_ms()
            min_until = time.monotonic() + max(0.0, 35 - (now_ms() - back_at) / 1000)
            while time.monotonic() < settle_until:
                if self.unhandled() == [] and time.monotonic() >= min_until:
                    break
                time.sleep(0.5)
            self.account()
        except Exception as exc:  # one pairing failing must not hide the others
            self.result.error = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                self.account()
        finally:
            self.watch.stop()
            self.runner.stop()
            self.server.stop()
            self.pool.shutdown(wait=False, cancel_futures=True)
        return self.result


# ----------------------------------------------------------------------------- output


def fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def fault_cells(r: Result, kind: str) -> tuple[str, str]:
    for f in r.faults:
        if f.kind == kind:
            det = fmt_s(f.detection_s()) if f.detected_ms is not None else "not detected"
            rec = fmt_s(f.recovery_s()) if f.first_wake_after_ms is not None else "none"
            return det, rec
    return "-", "-"


def table(results: list[Result]) -> str:
    head = ["pairing", "published", "handled", "lost", "handled twice",
            "kill -9: detected", "kill -9: recovered", "SIGSTOP: detected", "SIGSTOP: recovered"]
    rows = []
    for r in results:
        kd, kr = fault_cells(r, "kill -9")
        sd, sr = fault_cells(r, "SIGSTOP")
        rows.append([r.pairing + (" (ERROR)" if r.error else ""), str(r.published),
                     str(r.handled), str(r.lost), str(r.handled_twice), kd, kr, sd, sr])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def details(results: list[Result]) -> str:
    out = []
    for r in results:
        out.append(f"- {r.pairing}: {r.handler_runs} handler runs; logs {r.run_dir}")
        if r.error:
            out.append(f"  - error: {r.error}")
        if r.lost_ids:
            out.append(f"  - lost: {', '.join(r.lost_ids)}")
        if r.twice_ids:
            out.append(f"  - handled twice: {', '.join(r.twice_ids)}")
        out.extend(f"  - {n}" for n in r.notes)
    return "\n".join(out)


# ----------------------------------------------------------------------------- main


@contextlib.contextmanager
def pullwake_tree(given: str | None, keep: bool) -> Iterator[Path]:
    """Our code as committed (a snapshot of HEAD: others may be mid-edit), or --pullwake DIR."""
    if given:
        yield Path(given).resolve()
        return
    rev = upstream.run(["git", "-C", str(REPO), "rev-parse", "HEAD"]).stdout.strip()
    snap = Path(tempfile.mkdtemp(prefix=f"pullwake-head-{rev[:8]}-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True,
                             check=True)
    subprocess.run(["tar", "-x", "-C", str(snap)], input=archive.stdout, check=True)
    log(f"pullwake from HEAD {rev[:12]} ({snap})")
    try:
        yield snap
    finally:
        if not keep:
            shutil.rmtree(snap, ignore_errors=True)


PAIRINGS = {
    "real+upstream": ("real", "upstream"),
    "real+pullwake": ("real", "pullwake"),
    "pullwake+upstream": ("pullwake", "upstream"),
    "pullwake+pullwake": ("pullwake", "pullwake"),
}
SERVER_LABELS = {"real": "agents-server (real)", "pullwake": "pullwake server"}
RUNNER_LABELS = {"upstream": "upstream runner", "pullwake": "pullwake runner"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sidebyside.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--electric", required=True, metavar="PATH",
                        help="electric-sql/electric checkout, or a bare mirror with --commit")
    parser.add_argument("--commit", metavar="SHA")
    parser.add_argument("--pullwake", metavar="DIR",
                        help="pullwake source tree to run (default: a snapshot of HEAD)")
    parser.add_argument("--pairings", default=",".join(PAIRINGS),
                        help=f"comma-separated subset of {', '.join(PAIRINGS)}")
    parser.add_argument("--entities", type=int, default=4)
    parser.add_argument("--extra", type=int, default=3,
                        help="messages sent to e0 while its handler runs")
    parser.add_argument("--work-ms", type=int, default=2000, help="each handler run's duration")
    parser.add_argument("--heartbeat-seconds", type=float, default=2.0,
                        help="heartbeat interval of both runners (upstream default 30)")
    parser.add_argument("--stop-seconds", type=float, default=20.0)
    parser.add_argument("--detect-seconds", type=float, default=30.0,
                        help="how long to wait for the runner to notice a kill -9")
    parser.add_argument("--settle-seconds", type=float, default=60.0)
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra argument for `pullwake server` (repeatable)")
    parser.add_argument("--runner-arg", action="append", default=[],
                        help="extra argument for `pullwake run` (repeatable)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--keep", action="store_true",
                        help="keep the snapshot of pullwake's HEAD")
    parser.add_argument("--clean", action="store_true",
                        help="remove the run directories (logs, databases) at the end")
    args = parser.parse_args(argv)
    chosen = [p.strip() for p in args.pairings.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PAIRINGS]
    if unknown:
        parser.error(f"unknown pairing(s): {', '.join(unknown)}")

    try:
        root = upstream.prepare(upstream.resolve_source(Path(args.electric), args.commit))
    except upstream.InteropError as exc:
        print(f"sidebyside.py: {exc}", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="pullwake-sidebyside-"))
    os.chmod(base, 0o755)  # Postgres (user postgres) lives below
    results: list[Result] = []
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    with pullwake_tree(args.pullwake, args.keep) as tree:
        for name in chosen:
            server_kind, runner_kind = PAIRINGS[name]
            run_dir = base / name
            run_dir.mkdir()
            os.chmod(run_dir, 0o755)
            runner_id = f"sbs-{name.replace('+', '-')}"
            server: Server = (RealServer(root, run_dir / "server") if server_kind == "real"
                              else OurServer(tree, run_dir / "server", args.server_arg))
            runner: Runner = (
                UpstreamRunner(root, run_dir, runner_id, args.heartbeat_seconds, args.work_ms)
                if runner_kind == "upstream" else
                OurRunner(tree, run_dir, runner_id, args.heartbeat_seconds, args.work_ms,
                          args.runner_arg))
            pairing = f"{SERVER_LABELS[server_kind]} + {RUNNER_LABELS[runner_kind]}"
            log(f"{pairing}")
            result = Scenario(server, runner, args, pairing, run_dir).run()
            results.append(result)
            log(f"  -> published {result.published}, handled {result.handled}, lost "
                f"{result.lost}, twice {result.handled_twice}"
                + (f"; ERROR {result.error}" if result.error else ""))
    print(f"sidebyside at electric {root.name}, {started}, handler {args.work_ms} ms, "
          f"heartbeat {args.heartbeat_seconds:g} s, SIGSTOP {args.stop_seconds:g} s\n")
    print(table(results))
    print()
    print(details(results))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    if args.clean:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

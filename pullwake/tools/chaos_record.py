"""Recording a chaos run: the event log and the watchers that feed it.

The runner's own log is the precise source (every state transition and session
end is a timestamped line); polling `/status` adds the heartbeats (the time
comes from the runner's `last_heartbeat_at`, so the poll rate does not blur
it) and a fallback state if the log format ever stops matching.  The
handler appends one line per handled message to a file that is tailed here.
Parsing is pure and tested; the threads only move bytes.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

# `logging.basicConfig` format of `pullwake run` with TZ=UTC in its environment.
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \S+ \S+: (.*)$")
_TRANSITION = re.compile(r"^(\S+) -> (\S+) on (\w+)")
_SESSION_END = re.compile(r"^session (\d+) ended: (\S+)")
_DETECTOR = re.compile(r"^detector (\w+) fired")

MSG_KEY = "chaos_msg"  # payload field carrying the message id the publisher chose
SLOW_KEY = "chaos_slow"  # payload marker: the handler sleeps before finishing


class EventLog:
    """Thread-safe append-only JSON lines; each event flushed at once (Ctrl-C keeps it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: TextIO = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._events: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        return f"<EventLog {self.path} {len(self._events)} events>"

    def emit(self, type_: str, t: float | None = None, **fields: Any) -> dict[str, Any]:
        event = {"t": round(time.time() if t is None else t, 6), "type": type_, **fields}
        line = json.dumps(event, sort_keys=True)
        with self._lock:
            self._events.append(event)
            if not self._file.closed:
                self._file.write(line + "\n")
                self._file.flush()
        return event

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events)

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_events(path: Path) -> list[dict[str, Any]]:
    """events.jsonl back; a torn last line (killed mid-write) is skipped."""
    out: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def parse_log_line(line: str) -> tuple[str, float, dict[str, Any]] | None:
    """A runner log line -> (event type, unix time, fields), or None if not one we record."""
    m = _LOG_LINE.match(line.rstrip("\n"))
    if m is None:
        return None
    stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    t = stamp.timestamp() + int(m.group(2)) / 1000.0
    text = m.group(3)
    if tm := _TRANSITION.match(text):
        return "transition", t, {"from": tm.group(1), "to": tm.group(2), "trigger": tm.group(3)}
    if sm := _SESSION_END.match(text):
        reason = sm.group(2).rstrip(".,;:").removeprefix("EndReason.").lower()
        return "session_end", t, {"session": int(sm.group(1)), "reason": reason}
    if dm := _DETECTOR.match(text):
        return "detector", t, {"detector": dm.group(1)}
    return None


def parse_handled_line(line: str) -> tuple[float, dict[str, Any]] | None:
    """`<unix time> <wake id> <stream path> <stream offset> <stdin as one line>` (`-` for
    an empty field) -> (t, {msg, wake_id, stream, offset}).

    The message id is looked for in the JSON on stdin wherever the server put the
    payload (the old wake events carried it); a claim notification that does not
    carry it (upstream) is matched later through its stream and offset.
    """
    parts = line.rstrip("\n").split(" ", 4)
    if len(parts) < 4:
        return None
    try:
        t = float(parts[0])
    except ValueError:
        return None

    def field(text: str) -> str | None:
        return text if text not in ("", "-") else None

    msg = None
    body = parts[4] if len(parts) > 4 else ""
    try:
        msg = _find_key(json.loads(body), MSG_KEY) if body else None
    except ValueError:
        m = re.search(rf'"{MSG_KEY}"\s*:\s*"([^"]+)"', body)
        msg = m.group(1) if m else None
    return t, {
        "msg": msg,
        "wake_id": field(parts[1]),
        "stream": field(parts[2]),
        "offset": field(parts[3]),
    }


def _find_key(value: Any, key: str, depth: int = 0) -> str | None:
    if depth > 8:
        return None
    if isinstance(value, dict):
        if isinstance(value.get(key), str):
            return str(value[key])
        children: list[Any] = list(value.values())
    elif isinstance(value, list):
        children = value
    elif isinstance(value, str) and key in value:  # payload embedded as a JSON string
        try:
            return _find_key(json.loads(value), key, depth + 1)
        except ValueError:
            return None
    else:
        return None
    for child in children:
        found = _find_key(child, key, depth + 1)
        if found is not None:
            return found
    return None


def iso_to_unix(text: object) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def handler_command(handled_file: Path, slow_seconds: float) -> str:
    """The `--handler` shell command: finish (after a sleep for slow messages: the
    marker in the wake JSON or in the stream's path), then append one line
    `<time> <wake id> <stream path> <stream offset> <stdin on one line>` in one write."""
    return (
        "in=$(cat); "
        f'case "$in ${{PULLWAKE_STREAM_PATH:-}}" in *{SLOW_KEY}*) sleep {slow_seconds:g};; esac; '
        'line="$(date +%s.%N) ${PULLWAKE_WAKE_ID:--} ${PULLWAKE_STREAM_PATH:--} '
        '${PULLWAKE_STREAM_OFFSET:--} $(printf %s "$in" | tr -d \'\\n\')"; '
        f"printf '%s\\n' \"$line\" >> '{handled_file}'"
    )


class _Tail:
    """New complete lines of a growing file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pos = 0
        self._buf = ""

    def lines(self) -> list[str]:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                f.seek(self._pos)
                chunk = f.read()
                self._pos = f.tell()
        except FileNotFoundError:
            return []
        self._buf += chunk
        *done, self._buf = self._buf.split("\n")
        return done


def get_status(url: str, timeout: float = 1.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = json.loads(resp.read())
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


class RunnerWatcher(threading.Thread):
    """Feeds one runner's transitions, session ends, heartbeats and handled messages."""

    def __init__(
        self,
        log: EventLog,
        runner_id: str,
        status_url: str,
        runner_log: Path,
        handled_file: Path,
        interval: float = 0.2,
        on_status: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        super().__init__(name=f"chaos-watch-{runner_id}", daemon=True)
        self.log, self.runner_id, self.status_url = log, runner_id, status_url
        self.interval = interval
        self.on_status = on_status
        self._log_tail = _Tail(runner_log)
        self._handled_tail = _Tail(handled_file)
        self._halt = threading.Event()
        self._last_beat: tuple[object, object] | None = None
        self._last_state: str | None = None
        self.status: dict[str, Any] | None = None

    def run(self) -> None:
        while not self._halt.is_set():
            self.poll()
            self._halt.wait(self.interval)
        self.poll()  # what arrived before the stop

    def stop(self) -> None:
        self._halt.set()

    def poll(self) -> None:
        for line in self._log_tail.lines():
            parsed = parse_log_line(line)
            if parsed is not None:
                kind, t, fields = parsed
                self.log.emit(kind, t, runner=self.runner_id, **fields)
        for line in self._handled_tail.lines():
            got = parse_handled_line(line)
            if got is not None:
                self.log.emit("handled", got[0], runner=self.runner_id, **got[1])
        status = get_status(self.status_url)
        if status is None:
            return
        self.status = status
        if self.on_status is not None:
            self.on_status(self.runner_id, status)
        state = status.get("state")
        if isinstance(state, str) and state != self._last_state:
            self._last_state = state
            self.log.emit("status_state", runner=self.runner_id, state=state)
        diag = status.get("diagnostics") or {}
        beat = (diag.get("last_heartbeat_at"), diag.get("last_heartbeat_ok"))
        if beat[0] is not None and beat != self._last_beat:
            self._last_beat = beat
            self.log.emit(
                "heartbeat", iso_to_unix(beat[0]), runner=self.runner_id, ok=bool(beat[1])
            )

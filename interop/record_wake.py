#!/usr/bin/env python3
"""A `pullwake run --handler` that records what it was woken for (used by sidebyside.py).

It appends one JSON line per run to --out: the stream and claim offset it handles, what the
server had acknowledged for that stream when the claim was made (the pull-wake subscription's
`acked_offset`, read through the server's `/__ds/subscriptions/<id>` passthrough), and the
notification it got on stdin. Then it "works" for --work-ms and exits 0, so the runner
completes the wake. The same record as interop/runner-host.mjs logs for the upstream runner,
so both runners are counted the same way.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


def subscription_id(runner_id: str, entity_url: str) -> str:
    """How the agents-server names a runner's subscription to one entity."""
    digest = hashlib.sha256(entity_url.encode()).hexdigest()[:16]
    return f"runner:{runner_id}:{digest}"


def acked_offset(server: str, runner_id: str, entity_url: str, stream: str) -> str | None:
    sid = urllib.parse.quote(subscription_id(runner_id, entity_url), safe="")
    try:
        with urllib.request.urlopen(f"{server}/__ds/subscriptions/{sid}", timeout=2) as resp:
            body = json.load(resp)
    except (OSError, ValueError):
        return None
    path = stream.lstrip("/")
    for s in body.get("streams") or []:
        if isinstance(s, dict) and s.get("path") == path:
            value = s.get("acked_offset")
            return value if isinstance(value, str) else None
    return None


def stream_tail(server: str, stream: str) -> str | None:
    req = urllib.request.Request(server + stream, method="HEAD")
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            value = resp.headers.get("stream-next-offset")
            return value if isinstance(value, str) else None
    except (OSError, ValueError):
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON-lines file to append to")
    parser.add_argument("--server", required=True, help="server base URL")
    parser.add_argument("--runner-id", required=True)
    parser.add_argument("--work-ms", type=int, default=0, help="how long to 'work' (ms)")
    args = parser.parse_args()

    started = time.time()
    raw = sys.stdin.read()
    try:
        notification: Any = json.loads(raw) if raw.strip() else None
    except ValueError:
        notification = raw
    note = notification if isinstance(notification, dict) else {}
    server = args.server.rstrip("/")
    stream = os.environ.get("PULLWAKE_STREAM_PATH") or note.get("streamPath") or ""
    offset = os.environ.get("PULLWAKE_STREAM_OFFSET")
    if not offset:
        for s in note.get("streams") or []:
            if isinstance(s, dict) and s.get("path") == stream:
                offset = s.get("offset")
    entity = os.environ.get("PULLWAKE_ENTITY_URL") or (note.get("entity") or {}).get("url")
    offset_source = "claim" if offset else None
    if not stream and note.get("type") == "wake" and isinstance(note.get("stream"), str):
        # A runner that hands over the wake event instead of the claim answer: the entity
        # stream is in the event; its main stream is <entity url>/main.
        stream = "/" + note["stream"].lstrip("/")
    if not entity and stream.endswith("/main"):
        entity = stream[: -len("/main")]
    if not offset and stream:
        # No claim offset given: the stream's tail now is an upper bound of what was claimed.
        offset = stream_tail(server, stream)
        offset_source = "tail-at-handler-start" if offset else None
    before = acked_offset(server, args.runner_id, entity, stream) if (entity and stream) else None
    record = {
        "ts": int(started * 1000),
        "event": "wake",
        "runner_id": args.runner_id,
        "stream": stream,
        "offset": offset,
        "offset_source": offset_source,
        "acked_before": before,
        "wake_id": os.environ.get("PULLWAKE_WAKE_ID"),
        "entity": entity,
        "notification": notification,
    }
    with open(args.out, "a", encoding="utf-8") as out:
        fcntl.flock(out, fcntl.LOCK_EX)  # handlers run concurrently
        out.write(json.dumps(record) + "\n")
        out.flush()
    if args.work_ms > 0:
        time.sleep(args.work_ms / 1000)
    return 0


if __name__ == "__main__":
    sys.exit(main())

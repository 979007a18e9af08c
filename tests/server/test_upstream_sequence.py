"""Our server answers a long scripted conversation exactly as the real agents-server did.

`data/upstream_sequence.json` was recorded from the REAL agents-server 0.6.4
(electric-sql/electric @ dc07a1e6, embedded @durable-streams/server 0.3.7,
run with `interop/upstream.py server`) by `tests/server/upstream_sequence.py`:
142 requests covering registration (odd ids, custom and duplicate wake
streams), principals, heartbeats, health, entity types/spawn/send/signal,
wake stream reads, claims and every wake-callback variant.  Volatile values
(times, ids, tokens, the port) are normalized away; everything else -
statuses, content types, error codes and messages, Ajv details, field names
and order, wake events, wake-stream and entity-stream offsets (our entity
events have upstream's bytes) - must be identical.
`data/upstream_matrix.json`: 299 requests, every route with 16 odd bodies
(empty, arrays, null, wrong types, invalid JSON ...).
`data/upstream_expiry.json`: a claim left to its unshortened 30 s lease.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.server.upstream_sequence import SCRIPTS, run
from tests.support.procs import ServerProcess

DATA = Path(__file__).parent / "data"


def test_same_answers_as_the_real_agents_server(server: ServerProcess) -> None:
    compare(json.loads((DATA / "upstream_sequence.json").read_text()), run(server.url))


def test_same_answers_to_every_route_with_odd_bodies(server: ServerProcess) -> None:
    compare(
        json.loads((DATA / "upstream_matrix.json").read_text()), run(server.url, SCRIPTS["matrix"])
    )


@pytest.mark.slow
def test_same_lease_expiry_as_the_real_agents_server(server: ServerProcess) -> None:
    """Upstream's 30 s claim lease, not shortened: generation 2, stale row, FENCED."""
    expected = json.loads((DATA / "upstream_expiry.json").read_text())
    compare(expected, run(server.url, SCRIPTS["expiry"]))


def compare(expected: list[dict[str, object]], ours: list[dict[str, object]]) -> None:
    assert [r["name"] for r in ours] == [r["name"] for r in expected]
    diffs = [
        (want["name"], key, want.get(key), got.get(key))
        for want, got in zip(expected, ours, strict=True)
        for key in sorted(set(want) | set(got))
        if want.get(key) != got.get(key)
    ]
    if diffs:
        pytest.fail(
            "\n".join(
                f"{n}: {k}: upstream {w!r}\n{' ' * len(n)}  ours     {g!r}" for n, k, w, g in diffs
            )
        )

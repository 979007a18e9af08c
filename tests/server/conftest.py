"""Fixtures: one real server subprocess per module, unique runner ids per test."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import ServerProcess

_ids = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with fast read timings (claims keep upstream's 30 s lease).

    Keepalive 0.5 s, long-poll 1 s, SSE rotation 2 s, stream grace 2 s.
    """
    tmp: Path = tmp_path_factory.mktemp("server")
    srv = ServerProcess(
        tmp,
        keepalive=0.5,
        long_poll_timeout=1.0,
        extra=["--sse-rotate-seconds", "2", "--stream-grace", "2"],
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def rid() -> str:
    """A runner id no other test uses."""
    return f"r{next(_ids)}-{uuid.uuid4().hex[:6]}"

"""Fixtures shared by the Durable Streams store tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pullwake.server.ds.store import DSStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[DSStore]:
    """A fresh store on its own SQLite file, closed after the test."""
    s = DSStore(str(tmp_path / "ds.db"))
    try:
        yield s
    finally:
        s.close()

"""Offsets: which point of the wake stream is fully handled, and its durable copy.

With several wakes handled concurrently, wakes finish out of order.  The
committed offset may only move past a wake once that wake *and every wake
before it* is done, otherwise a crash would skip an unfinished wake at
restart.  `CommitTracker` keeps the stream order: each wake is an item, each
offset the server announces (SSE control, long-poll `Stream-Next-Offset`)
is a mark placed after the items read before it; the committed offset is the
last mark with every earlier item done.
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from pathlib import Path

from pullwake.core.protocol import OFFSET_START
from pullwake.runner.config import ConfigError

# The protocol's offsets never contain these (nor whitespace): such a file was clobbered.
_NOT_IN_OFFSETS = frozenset(",&=?/ \t\r\n")


class CommitTracker:
    def __init__(self, committed: str = OFFSET_START) -> None:
        self.committed = committed
        self._next_item = 0
        self._done: set[int] = set()
        self._order: deque[tuple[str, int | str]] = deque()  # ("item", n) | ("mark", offset)

    def __repr__(self) -> str:
        return f"<CommitTracker committed={self.committed} pending={len(self._order)}>"

    def add_item(self) -> int:
        """A wake was read; returns its ticket for `done`."""
        n = self._next_item
        self._next_item += 1
        self._order.append(("item", n))
        return n

    def add_mark(self, offset: str) -> bool:
        """The stream is at `offset` after the items so far; True if committed moved."""
        self._order.append(("mark", offset))
        return self._advance()

    def done(self, ticket: int) -> bool:
        """Wake `ticket` is finished (handled, skipped or failed); True if committed moved."""
        self._done.add(ticket)
        return self._advance()

    @property
    def in_flight(self) -> int:
        return sum(1 for kind, _ in self._order if kind == "item")

    def _advance(self) -> bool:
        moved = False
        while self._order:
            kind, value = self._order[0]
            if kind == "item":
                assert isinstance(value, int)
                if value not in self._done:
                    break
                self._done.discard(value)
            else:
                assert isinstance(value, str)
                if value != self.committed:
                    self.committed = value
                    moved = True
            self._order.popleft()
        return moved


class OffsetStore:
    """The committed offset on disk: write temp + fsync + rename, so a crash leaves
    either the old or the new offset, never a torn file."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None

    def load(self) -> str:
        """The offset to resume at; `ConfigError` (one line) if the file is unusable.

        Checked at start so a wrong path or a clobbered file is the user's error
        now, not a stream that fails with 400 forever or commits that never persist.
        """
        if self.path is None:
            return OFFSET_START
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"cannot read offset file {self.path}: {why}") from None
        if text and (len(text) > 200 or set(text) & _NOT_IN_OFFSETS):
            raise ConfigError(f"offset file {self.path} holds {text[:40]!r}, not an offset")
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create offset file directory {directory}: {exc.strerror}"
            ) from None
        if not os.access(directory, os.W_OK):
            raise ConfigError(f"offset file directory {directory} is not writable")
        return text or OFFSET_START

    def save(self, offset: str) -> None:
        if self.path is None:
            return
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(offset + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

"""The live readers' hand-over cache: the newest committed messages of followed paths.

A reader waiting at a stream's tail (long-poll, SSE) `follow`s its path; the writer
adds each newly committed message here right after the commit (with the metadata,
under `StoreCore.lock`), so the woken reader takes the new data from memory instead
of querying SQLite.  Bounded per path; anything it does not cover is read from SQLite.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pullwake.server.ds.store import Message, StreamMeta

RECENT_MAX_MESSAGES = 64  # per followed path
RECENT_MAX_BYTES = 256 * 1024


class Recent:
    """The newest committed messages of a path that live readers follow.

    The writer appends to it right after each commit (under `StoreCore.lock`, with
    the metadata), so a reader waiting at the tail gets new data from memory instead
    of querying SQLite.  It covers every message after `start` of `incarnation`;
    older offsets (or an evicted range) are read from SQLite as before.
    """

    __slots__ = ("followers", "incarnation", "msgs", "size", "start")

    def __init__(self, meta: StreamMeta | None) -> None:
        self.followers = 0
        self.msgs: collections.deque[Message] = collections.deque()
        self.size = 0
        self.incarnation = -1
        self.start = 0
        self.reset(meta)

    def reset(self, meta: StreamMeta | None) -> None:
        self.msgs.clear()
        self.size = 0
        self.incarnation = -1 if meta is None else meta.incarnation
        self.start = 0 if meta is None else meta.tail

    def end(self) -> int:
        return self.msgs[-1].end if self.msgs else self.start

    def add(self, msg: Message) -> None:
        if msg.end <= self.end():
            return
        self.msgs.append(msg)
        self.size += len(msg.data)
        while len(self.msgs) > 1 and (
            len(self.msgs) > RECENT_MAX_MESSAGES or self.size > RECENT_MAX_BYTES
        ):
            old = self.msgs.popleft()
            self.size -= len(old.data)
            self.start = old.end

    def after(self, meta: StreamMeta, pos: int) -> list[Message] | None:
        """Messages after `pos` up to the tail, or None if this cache cannot tell."""
        if meta.incarnation != self.incarnation or pos < self.start or self.end() != meta.tail:
            return None
        return [m for m in self.msgs if m.end > pos]

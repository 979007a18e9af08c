"""The one way tests wait: on a condition with a deadline, never a bare sleep.

`until` / `wait_until` return as soon as the condition holds (fast when things
work, a clear failure naming what was awaited when they do not).  `never` /
`holds_for` are the "nothing happened" checks: they watch a condition for a
window and fail the moment it turns true, instead of sleeping and looking once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

POLL = 0.02


async def until(
    cond: Callable[[], T], timeout: float = 10.0, what: str = "condition", interval: float = POLL
) -> T:
    """Poll `cond` on the event loop until it returns a truthy value; fail after `timeout`.

    Exceptions from `cond` propagate (an in-process check raising is a bug, not "not yet").
    """
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:.1f}s waiting for {what}; last: {value!r}"
            )
        await asyncio.sleep(interval)


async def never(
    cond: Callable[[], object], within: float, what: str = "condition", interval: float = POLL
) -> None:
    """Assert `cond` stays false for `within` seconds; fail as soon as it turns true."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if cond():
            raise AssertionError(f"{what} happened within {within:.1f}s")
        await asyncio.sleep(interval)
    if cond():
        raise AssertionError(f"{what} happened within {within:.1f}s")


def wait_until(
    cond: Callable[[], T], timeout: float, interval: float = POLL, what: str = "condition"
) -> T:
    """Blocking twin of `until` for tests driving real processes from a plain thread.

    Exceptions from `cond` count as "not yet" (a process still starting refuses
    connections).  Raises AssertionError naming `what` and the last value or error.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = cond()
            if value:
                return value
            last = value
        except Exception as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:.1f}s waiting for {what}; last: {last!r}"
            )
        time.sleep(interval)


def holds_for(
    cond: Callable[[], object], within: float, what: str = "condition", interval: float = 0.05
) -> None:
    """Blocking twin of `never`, inverted: `cond` must stay truthy for `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = cond()
        if not value:
            raise AssertionError(f"{what} stopped holding within {within:.1f}s (got {value!r})")
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)

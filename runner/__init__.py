"""The pullwake runner: a pull-wake client that always knows when its stream is dead.

Embedding::

    from pullwake.runner import Runner

    async def handle(wake: dict) -> None: ...

    r = Runner(server="http://127.0.0.1:4437", runner_id="r1", handler=handle)
    await r.run()   # until r.stop()
"""

from __future__ import annotations

from pullwake.runner.config import PROFILES, ConfigError, Profile, RunnerConfig, TcpKeepalive
from pullwake.runner.core import Runner
from pullwake.runner.dispatch import Handler, HandlerFailed
from pullwake.runner.errors import SessionEnded
from pullwake.runner.observe import NullObserver, RecordingObserver, RunnerObserver, RunnerSnapshot

__all__ = [
    "PROFILES",
    "ConfigError",
    "Handler",
    "HandlerFailed",
    "NullObserver",
    "Profile",
    "RecordingObserver",
    "Runner",
    "RunnerConfig",
    "RunnerObserver",
    "RunnerSnapshot",
    "SessionEnded",
    "TcpKeepalive",
]

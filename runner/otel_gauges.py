"""The runner's observable gauges, read from `Runner.snapshot()` at collection time.

Split from `runner.otel`: this side runs on a metric reader's thread or in
the `/metrics` handler, never per event.  One collection reads seven gauges
from one cached snapshot (`pullwake.instruments.CachedSnapshot`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from pullwake.core import catalog as c
from pullwake.core.catalog import RUNNER_ID
from pullwake.core.instruments import CachedSnapshot
from pullwake.core.protocol import RunnerState
from pullwake.runner.observe import RunnerSnapshot

Gauge = Iterable[tuple[float, Mapping[str, str]]]


class RunnerGauges:
    """Gauge callbacks for every runner gauge in the catalog, keyed by metric name."""

    def __init__(self, runner_id: str, snapshot: Callable[[], RunnerSnapshot] | None) -> None:
        self.runner_id = runner_id
        self._rid = {RUNNER_ID: runner_id}
        self._snapshot = CachedSnapshot(snapshot)

    def bind(self, snapshot: Callable[[], RunnerSnapshot]) -> None:
        self._snapshot.source = snapshot

    def callbacks(self) -> dict[str, Callable[[], Gauge]]:
        one = self._one
        return {
            c.STREAM_CONNECTED.name: lambda: one(lambda s: 1.0 if s.stream_connected else 0.0),
            c.STREAM_AGE.name: lambda: one(lambda s: s.stream_age_s),
            c.STREAM_IDLE.name: lambda: one(lambda s: s.stream_idle_s),
            c.STREAM_IDLE_TIMEOUT.name: lambda: one(lambda s: s.idle_timeout_s),
            c.HEARTBEAT_CONSECUTIVE_FAILURES.name: lambda: one(
                lambda s: float(s.consecutive_heartbeat_failures)
            ),
            c.HEARTBEAT_LAST_SUCCESS.name: lambda: one(
                lambda s: s.last_heartbeat_success_at or 0.0
            ),
            c.RUNNER_STATE.name: self._states,
        }

    def _one(self, value: Callable[[RunnerSnapshot], float]) -> Gauge:
        snap = self._snapshot.get()
        return [] if snap is None else [(float(value(snap)), self._rid)]

    def _states(self) -> Gauge:
        snap = self._snapshot.get()
        if snap is None:
            return []
        return [
            (1.0 if snap.state is st else 0.0, {RUNNER_ID: self.runner_id, "state": st.value})
            for st in RunnerState
        ]

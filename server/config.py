"""Server settings: one frozen object built by the CLI and read by every module."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 4437
    db: str = "./pullwake.db"
    keepalive_interval: float = 5.0  # an SSE comment at least this often
    long_poll_timeout: float = 20.0  # a long-poll with no data answers 204 after this
    sse_rotate_seconds: float = 60.0  # SSE responses end cleanly this often
    default_lease_ms: int = 30_000  # runner liveness lease when a heartbeat names none
    claim_lease_seconds: float = 30.0  # a claim not completed in time is re-announced
    retain: int = 0  # events kept per wake stream (0 = all); older offsets answer 410
    stream_grace_seconds: float = 2.0  # a long-poll client counts as open between polls
    dev: bool = False  # a missing electric-principal means system:dev-local
    auth_token: str | None = None  # PULLWAKE_AUTH_TOKEN: required bearer token
    shutdown_timeout: float = 1.0  # grace for in-flight requests on SIGINT/SIGTERM
    sweep_interval: float = 0.2  # how often expired claims are looked for

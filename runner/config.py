"""Runner configuration and the three profiles.

Profiles only switch parts of the same machinery on or off; they never swap
in different code:

* ``default``  every detector: idle watchdog, tail probe, heartbeat bridge,
  resume/stall detector, TCP keepalive, connect/header timeouts; read errors
  end the session and are reported.
* ``upstream`` the original's later mitigation alone: the legacy stream layer
  (hidden retries, no timeouts) plus the heartbeat bridge (K=2), which is its
  only detector.  No idle watchdog, no TCP keepalive.
* ``legacy``   the seed's runner: long-poll reads whose failures are retried
  inside the stream layer (100 ms x1.3, cap 60 s) and never reported; no
  watchdog, no bridge, no keepalive, no timeouts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from pullwake.core.addresses import parse_hostport
from pullwake.core.protocol import DEV_PRINCIPAL, PRINCIPAL_KINDS, RUNNER_ID_RE, LiveMode

# `kind` values the real agents-server accepts at registration (section 2.2)
RUNNER_KINDS = ("local", "cloud-worker", "sandbox", "ci", "server")
PRINCIPAL_URL_PREFIX = "/principal/"
CALLBACK_ORIGINS = ("claim", "server")


class ConfigError(ValueError):
    """A configuration value is wrong; the message is one line for the user."""


@dataclass(frozen=True)
class Profile:
    name: str
    idle_watchdog: bool
    heartbeat_bridge: bool
    tcp_keepalive: bool
    timeouts: bool  # connect and response-header timeouts
    hidden_retry: bool  # legacy: the stream layer swallows read failures and retries
    forced_live: LiveMode | None = None
    tail_probe: bool = False  # probe the stream's tail on a fresh connection while idle
    resume_detector: bool = False  # a sleep or freeze past the threshold: reconnect at once


PROFILES: dict[str, Profile] = {
    "default": Profile(
        "default", True, True, True, True, False, tail_probe=True, resume_detector=True
    ),
    "upstream": Profile("upstream", False, True, False, False, True, LiveMode.LONG_POLL),
    "legacy": Profile("legacy", False, False, False, False, True, LiveMode.LONG_POLL),
}


@dataclass(frozen=True)
class TcpKeepalive:
    """Keepalive probes on the stream socket: a dead peer is noticed in idle + intvl * cnt."""

    idle_s: int = 5
    interval_s: int = 1
    count: int = 3
    # = idle + interval x count: with TCP_USER_TIMEOUT set, Linux gives up on keepalive
    # only once this long passed without an ACK (it overrides `count`), so a larger
    # value would stretch the bound above
    user_timeout_ms: int = 8_000


@dataclass(frozen=True)
class RunnerConfig:
    server: str
    runner_id: str
    label: str = "pullwake runner"
    kind: str = "local"  # registration `kind`, one of RUNNER_KINDS
    live: LiveMode = LiveMode.SSE
    heartbeat_interval: float = 10.0
    heartbeat_timeout: float | None = None  # default: min(5, interval)
    heartbeat_failure_threshold: int = 2
    idle_timeout: float | None = None  # default: 3 x advertised keepalive, else 45 s
    tail_probe_interval: float = 10.0  # idle this long -> probe the tail; 0 = off
    tail_probe_grace: float = 2.0  # a tail seen ahead must be reached within this
    callback_heartbeat_interval: float = 10.0  # {epoch} to the claim's callback
    claim_lease: float = 30.0  # the claim lease the server does not tell (DS default)
    # where callbacks go: "claim" = the claim answer's absolute URL (as upstream);
    # "server" = its path on `server` (a runner reaching the server by another address)
    callback_origin: str = "claim"
    connect_timeout: float = 5.0
    long_poll_timeout: float = 35.0  # bound of one long-poll request when timeouts are on
    backoff_max: float = 30.0
    healthy_after: float = 5.0  # a session this old (and connected) resets the backoff
    offset_file: str | None = None
    handler_cmd: str | None = None
    handler_timeout: float = 300.0  # a handler still running then is killed; 0 = no limit
    concurrency: int = 4
    queue_size: int = 64
    status_listen: str | None = None
    status_token: str | None = None  # bearer token POST /reconnect needs (off loopback: required)
    resume_threshold: float | None = None  # resume/stall gap; None: heartbeat interval; 0: off
    principal: str = DEV_PRINCIPAL
    profile: Profile = field(default_factory=lambda: PROFILES["default"])
    keepalive: TcpKeepalive = field(default_factory=TcpKeepalive)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def base_url(self) -> str:
        return self.server.rstrip("/")

    @property
    def live_mode(self) -> LiveMode:
        return self.profile.forced_live or self.live

    @property
    def hb_timeout(self) -> float:
        return self.heartbeat_timeout or min(5.0, self.heartbeat_interval)

    @property
    def lease_ms(self) -> int:
        return int(self.heartbeat_interval * 3 * 1000)

    @property
    def bridge_threshold(self) -> int | None:
        return self.heartbeat_failure_threshold if self.profile.heartbeat_bridge else None


def profile_named(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown profile {name!r} (choose from {', '.join(PROFILES)})") from None


def validate(c: RunnerConfig) -> None:
    """Reject bad values with one line each; never a traceback at the user."""
    try:
        u = urlsplit(c.server)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise ConfigError(f"bad server URL {c.server!r} ({exc})") from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ConfigError(f"bad server URL {c.server!r} (want http://host:port)")
    try:
        _ = u.port
    except ValueError:
        raise ConfigError(f"bad port in server URL {c.server!r}") from None
    if not RUNNER_ID_RE.match(c.runner_id):
        raise ConfigError(f"bad runner id {c.runner_id!r}")
    if principal_key(c.principal) is None:
        raise ConfigError(
            f"bad principal {c.principal!r} (want kind:name or /principal/<kind%3Aname>)"
        )
    if c.kind not in RUNNER_KINDS:
        raise ConfigError(f"bad runner kind {c.kind!r} (choose from {', '.join(RUNNER_KINDS)})")
    positive = {
        "heartbeat interval": c.heartbeat_interval,
        "connect timeout": c.connect_timeout,
        "backoff max": c.backoff_max,
        "long-poll timeout": c.long_poll_timeout,
    }
    if c.heartbeat_timeout is not None:
        positive["heartbeat timeout"] = c.heartbeat_timeout
    if c.idle_timeout is not None:
        positive["idle timeout"] = c.idle_timeout
    if c.resume_threshold is not None and not (
        c.resume_threshold >= 0 and math.isfinite(c.resume_threshold)
    ):
        raise ConfigError(
            f"resume threshold must be a finite number of seconds >= 0 (0 = off),"
            f" got {c.resume_threshold}"
        )
    positive |= {
        "tail probe grace": c.tail_probe_grace,
        "callback heartbeat interval": c.callback_heartbeat_interval,
        "claim lease": c.claim_lease,
    }
    if c.callback_origin not in CALLBACK_ORIGINS:
        raise ConfigError(
            f"bad callback origin {c.callback_origin!r} (choose from {', '.join(CALLBACK_ORIGINS)})"
        )
    if c.callback_heartbeat_interval >= c.claim_lease:
        raise ConfigError(
            f"callback heartbeat interval ({c.callback_heartbeat_interval:g}s) must be shorter"
            f" than the claim lease ({c.claim_lease:g}s), or every claim is lost"
        )
    if not (c.tail_probe_interval >= 0 and math.isfinite(c.tail_probe_interval)):
        raise ConfigError(
            f"tail probe interval must be a finite number of seconds >= 0 (0 = off),"
            f" got {c.tail_probe_interval}"
        )
    for what, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{what} must be > 0, got {value}")
        if not math.isfinite(value):  # inf would overflow the lease or never time out
            raise ConfigError(f"{what} must be a finite number of seconds, got {value}")
    if not (c.handler_timeout >= 0 and math.isfinite(c.handler_timeout)):
        raise ConfigError(
            f"handler timeout must be a finite number of seconds >= 0 (0 = none),"
            f" got {c.handler_timeout}"
        )
    for what, n in {
        "heartbeat failure threshold": c.heartbeat_failure_threshold,
        "concurrency": c.concurrency,
        "queue size": c.queue_size,
    }.items():
        if n < 1:
            raise ConfigError(f"{what} must be >= 1, got {n}")


def principal_key(text: str) -> str | None:
    """`kind:id` for either header form the server accepts (key or URL), else None."""
    key = text
    if text.startswith(PRINCIPAL_URL_PREFIX):
        key = unquote(text[len(PRINCIPAL_URL_PREFIX) :])
    kind, _, name = key.partition(":")
    if kind not in PRINCIPAL_KINDS or not name or "/" in name:
        return None
    return key


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `PORT` (loopback) for the status listener."""
    try:
        return parse_hostport(text, default_host="127.0.0.1")
    except ValueError:
        raise ConfigError(f"bad listen address {text!r} (want 127.0.0.1:PORT)") from None

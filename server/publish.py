"""`pullwake publish`: wake a runner the way upstream does, through an entity.

pullwake's convenience, not an upstream command.  It speaks only the
agents-server entity API, so it works against the real server as well as
ours: spawn (`PUT /_electric/entities/<type>/<id>` with a dispatch policy
targeting the runner; the entity type is created on `UNKNOWN_ENTITY_TYPE`),
then `POST .../send`.  Synchronous (urllib): used by the CLI and by tests.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

H_PRINCIPAL = "electric-principal"
H_OFFSET = "x-pullwake-offset"  # ours: where the message ends in the entity stream


class PublishError(Exception):
    pass


def subscription_id(runner_id: str, entity_url: str) -> str:
    """The DS subscription that will announce this entity's wakes."""
    return f"runner:{runner_id}:{hashlib.sha256(entity_url.encode()).hexdigest()[:16]}"


def split_entity(url: str) -> tuple[str, str]:
    parts = url.split("/")
    if (
        len(parts) != 3
        or parts[0] != ""
        or not parts[1]
        or not parts[2]
        or parts[1].startswith("_")
    ):
        raise PublishError(f"--entity must look like /<type>/<id>, got {url!r}")
    return parts[1], parts[2]


class Publisher:
    def __init__(
        self,
        server: str,
        *,
        principal: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        try:
            parts = urllib.parse.urlsplit(server)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            ok = ok and (parts.port is None or parts.port > 0)
        except ValueError:
            ok = False
        if not ok:
            raise PublishError(
                f"--server must be an http(s) URL like http://127.0.0.1:4437, got {server!r}"
            )
        self.base = server.rstrip("/")
        self.headers = {"Content-Type": "application/json"}
        if principal:
            self.headers[H_PRINCIPAL] = principal
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout
        self._spawned: set[str] = set()

    def _request(self, method: str, path: str, body: Any) -> tuple[int, dict[str, str], Any]:
        req = urllib.request.Request(
            self.base + path, data=json.dumps(body).encode(), method=method, headers=self.headers
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                status, headers, raw = resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            status, headers, raw = err.code, dict(err.headers), err.read()
        except (urllib.error.URLError, OSError) as exc:
            raise PublishError(f"cannot reach {self.base}: {getattr(exc, 'reason', exc)}") from None
        try:
            decoded = json.loads(raw) if raw else None
        except ValueError:
            decoded = raw.decode("utf-8", "replace")
        return status, {k.lower(): v for k, v in headers.items()}, decoded

    @staticmethod
    def _fail(what: str, status: int, body: Any) -> PublishError:
        detail = body
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            detail = f"{body['error'].get('code')}: {body['error'].get('message')}"
        return PublishError(f"{what} failed: HTTP {status}: {detail}")

    def ensure_entity(self, runner_id: str, entity_url: str) -> None:
        """Spawn the entity targeting the runner unless it exists (type created as needed)."""
        if entity_url in self._spawned:
            return
        type_name, instance = split_entity(entity_url)
        path = f"/_electric/entities/{type_name}/{urllib.parse.quote(instance, safe='')}"
        spawn = {"dispatch_policy": {"targets": [{"type": "runner", "runnerId": runner_id}]}}
        for attempt in range(2):
            status, _, body = self._request("PUT", path, spawn)
            code = body.get("error", {}).get("code") if isinstance(body, dict) else None
            if status == 201 or (status == 409 and attempt == 0 and code == "DUPLICATE_URL"):
                self._spawned.add(entity_url)
                return
            if status == 404 and code == "UNKNOWN_ENTITY_TYPE" and attempt == 0:
                tstatus, _, tbody = self._request(
                    "POST",
                    "/_electric/entity-types",
                    {"name": type_name, "description": "pullwake publish"},
                )
                if tstatus not in (200, 201):
                    raise self._fail("creating entity type", tstatus, tbody)
                continue
            raise self._fail(f"spawning {entity_url}", status, body)

    def send(self, runner_id: str, entity_url: str, payload: Any) -> dict[str, Any]:
        """Send one message; what was acknowledged (durable once this returns)."""
        self.ensure_entity(runner_id, entity_url)
        type_name, instance = split_entity(entity_url)
        path = f"/_electric/entities/{type_name}/{urllib.parse.quote(instance, safe='')}/send"
        status, headers, body = self._request("POST", path, {"payload": payload})
        if status != 200 or not isinstance(body, dict):
            raise self._fail(f"sending to {entity_url}", status, body)
        return {
            "entity": entity_url,
            "stream": f"{entity_url}/main",
            "offset": headers.get(H_OFFSET),  # None against upstream
            "txid": body.get("txid"),
            "subscription_id": subscription_id(runner_id, entity_url),
        }

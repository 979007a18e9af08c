"""Ed25519 webhook signatures (RFC 8032), in pure Python: no crypto dependency.

Webhook deliveries carry `webhook-signature: t=<unix s>,kid=<kid>,ed25519=<b64url sig>`
over `<t>.<body>`, verifiable with the JWKS at `/v1/stream/__ds/jwks.json`,
as the reference server does.  The key pair is random per process (as upstream).
Signing costs a few milliseconds; webhooks are rare, so that is fine.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_I = pow(2, (_P - 1) // 4, _P)  # sqrt(-1)

Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T)


def _recover_x(y: int, sign: int) -> int:
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = x * _I % _P
    if x % 2 != sign:
        x = _P - x
    return x


_BY = 4 * pow(5, _P - 2, _P) % _P
_BX = _recover_x(_BY, 0)
_B: Point = (_BX, _BY, 1, _BX * _BY % _P)
_ZERO: Point = (0, 1, 1, 0)


def _add(p: Point, q: Point) -> Point:
    a = (p[1] - p[0]) * (q[1] - q[0]) % _P
    b = (p[1] + p[0]) * (q[1] + q[0]) % _P
    c = 2 * p[3] * q[3] * _D % _P
    d = 2 * p[2] * q[2] % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(s: int, p: Point) -> Point:
    q = _ZERO
    while s > 0:
        if s & 1:
            q = _add(q, p)
        p = _add(p, p)
        s >>= 1
    return q


def _encode(p: Point) -> bytes:
    zinv = pow(p[2], _P - 2, _P)
    x, y = p[0] * zinv % _P, p[1] * zinv % _P
    return int.to_bytes(y | ((x & 1) << 255), 32, "little")


def _h(data: bytes) -> int:
    return int.from_bytes(hashlib.sha512(data).digest(), "little")


def _secret(seed: bytes) -> tuple[int, bytes]:
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    return a, h[32:]


def public_key(seed: bytes) -> bytes:
    return _encode(_mul(_secret(seed)[0], _B))


def sign(seed: bytes, message: bytes) -> bytes:
    a, prefix = _secret(seed)
    pub = _encode(_mul(a, _B))
    r = _h(prefix + message) % _L
    rb = _encode(_mul(r, _B))
    k = _h(rb + pub + message) % _L
    return rb + int.to_bytes((r + k * a) % _L, 32, "little")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class WebhookKeys:
    seed: bytes
    x: str
    kid: str

    @staticmethod
    def generate() -> WebhookKeys:
        seed = os.urandom(32)
        x = b64url(public_key(seed))
        thumb = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
        kid = "ds_" + b64url(hashlib.sha256(thumb.encode()).digest())
        return WebhookKeys(seed, x, kid)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {
            "keys": [
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": self.x,
                    "kid": self.kid,
                    "use": "sig",
                    "alg": "EdDSA",
                }
            ]
        }

    def signature_header(self, body: str, now: float | None = None) -> str:
        ts = int(time.time() if now is None else now)
        sig = sign(self.seed, f"{ts}.{body}".encode())
        return f"t={ts},kid={self.kid},ed25519={b64url(sig)}"


WEBHOOK_KEYS = WebhookKeys.generate()

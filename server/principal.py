"""Principals exactly as the agents-server reads them (`electric-principal`).

A principal is `<kind>:<id>` (kind one of user, agent, service, system; id
non-empty, no `/`).  The header may carry it in key form (`system:dev-local`)
or URL form (`/principal/system%3Adev-local`, or the legacy unencoded
`/principal/system:dev-local`).  Anything else parses to None: upstream
treats an invalid header as absent, not as an error.  Owners are stored and
compared in the canonical URL form.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

KINDS = ("user", "agent", "service", "system")
URL_PREFIX = "/principal/"
DEV_KEY = "system:dev-local"
_JS_URI_COMPONENT_SAFE = "-_.!~*'()"  # what encodeURIComponent leaves alone


def encode_uri_component(text: str) -> str:
    """JavaScript's `encodeURIComponent`."""
    return urllib.parse.quote(text, safe=_JS_URI_COMPONENT_SAFE)


def decode_uri_component(text: str) -> str | None:
    """JavaScript's `decodeURIComponent`, None where it would throw."""
    i = 0
    raw = bytearray()
    try:
        while i < len(text):
            ch = text[i]
            if ch == "%":
                pair = text[i + 1 : i + 3]
                if len(pair) != 2 or not all(c in "0123456789abcdefABCDEF" for c in pair):
                    return None
                raw += bytes([int(pair, 16)])
                i += 3
            else:
                raw += ch.encode("utf-8", "surrogatepass")
                i += 1
        return raw.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None


@dataclass(frozen=True)
class Principal:
    kind: str
    id: str

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.id}"

    @property
    def url(self) -> str:
        return URL_PREFIX + encode_uri_component(self.key)

    def as_json(self) -> dict[str, Any]:
        return {"url": self.url, "key": self.key, "kind": self.kind, "id": self.id}


def parse_key(text: str) -> Principal | None:
    kind, sep, ident = text.partition(":")
    if not sep or not kind or kind not in KINDS or not ident or "/" in ident:
        return None
    try:
        ident.encode("utf-8")  # header bytes that were not UTF-8 arrive surrogate-escaped
    except UnicodeEncodeError:
        return None  # encodeURIComponent would throw on them: not a usable principal
    return Principal(kind, ident)


def parse_url(text: str) -> Principal | None:
    if not text.startswith(URL_PREFIX):
        return None
    segment = text[len(URL_PREFIX) :]
    if not segment or "/" in segment:
        return None
    decoded = decode_uri_component(segment)
    return None if decoded is None else parse_key(decoded)


def parse_input(text: str | None) -> Principal | None:
    """The header value in URL or key form; None for absent or invalid."""
    if not text:
        return None
    return parse_url(text) or parse_key(text)


DEV_PRINCIPAL = Principal("system", "dev-local")


def from_created_by(created_by: str | None) -> dict[str, Any] | None:
    """The claim notification's `principal` (upstream `principalFromCreatedBy`)."""
    if not created_by:
        return None
    p = parse_url(created_by)
    if p is None:
        return {"url": created_by, "key": None}
    return p.as_json()

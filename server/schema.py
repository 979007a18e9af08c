"""Request body schemas, checked the way the agents-server's Ajv does.

Upstream validates bodies with TypeBox schemas compiled by Ajv (`allErrors`,
no coercion) and answers 400 `Request body does not match API schema` with
`details: [{path, message}]`.  This module reproduces the subset of Ajv it
needs, with Ajv's messages and error order, so scripts see the same details:
`must have required property 'id'`, `must be string`, `must be equal to
constant` + `must match a schema in anyOf`, ...  Pure functions, no I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Detail = dict[str, str]


class Schema:
    """A node; `check(value, path, out)` appends Ajv-style errors to `out`."""

    def check(self, value: Any, path: str, out: list[Detail]) -> None:
        raise NotImplementedError


def _err(out: list[Detail], path: str, message: str) -> None:
    out.append({"path": path or "/", "message": message})


def _pointer(path: str, key: str | int) -> str:
    text = str(key).replace("~", "~0").replace("/", "~1")
    return f"{path}/{text}"


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


@dataclass(frozen=True)
class Str(Schema):
    min_length: int | None = None

    def check(self, value: Any, path: str, out: list[Detail]) -> None:
        if not isinstance(value, str):
            _err(out, path, "must be string")
        elif self.min_length is not None and len(value) < self.min_length:
            _err(out, path, f"must NOT have fewer than {self.min_length} characters")


@dataclass(frozen=True)
class Num(Schema):
    def check(self, value: Any, path: str, out: list[Detail]) -> None:
        if not _is_number(value):
            _err(out, path, "must be number")


@dataclass(frozen=True)
class Bool(Schema):
    def check(self, value: Any, path: str, out: list[Detail]) -> None:
        if not isinstance(value, bool):
            _err(out, path, "must be boolean")


@dataclass(frozen=True)
class Unknown(Schema):
    def check(self, value: Any, path: str, out: list[Detail]) -> None:
        return


@dataclass(frozen=True)
class Literal(Schema):
    value: str

    def check(self, value: Any, path: str, out: list[Detail]) -> None:
        if not isinstance(value, str):
            _err(out, path, "must be string")  # and Ajv (allErrors) checks the const too
        if value != self.value:
            _err(out, path, "must be equal to constant")


@dataclass(frozen=True)
class AnyOf(Schema):
    options: tuple[Schema, ...]

    def check(self, value: Any, path: str, out: list[Detail]) -> None:
        errors: list[Detail] = []
        for option in self.options:
            mine: list[Detail] = []
            option.check(value, path, mine)
            if not mine:
                return
            errors.extend(mine)
        out.extend(errors)
        _err(out, path, "must match a schema in anyOf")


def one_of_strings(*values: str) -> AnyOf:
    """TypeBox `Union([Literal(a), Literal(b), ...])`."""
    return AnyOf(tuple(Literal(v) for v in values))


@dataclass(frozen=True)
class Arr(Schema):
    items: Schema

    def check(self, value: Any, path: str, out: list[Detail]) -> None:
        if not isinstance(value, list):
            _err(out, path, "must be array")
            return
        for i, item in enumerate(value):
            self.items.check(item, _pointer(path, i), out)


@dataclass(frozen=True)
class Tuple1(Schema):
    """TypeBox `Tuple([x])`: an array of exactly one item."""

    item: Schema

    def check(self, value: Any, path: str, out: list[Detail]) -> None:
        if not isinstance(value, list):
            _err(out, path, "must be array")
            return
        if len(value) > 1:
            _err(out, path, "must NOT have more than 1 items")
        if len(value) < 1:
            _err(out, path, "must NOT have fewer than 1 items")
        if value:
            self.item.check(value[0], _pointer(path, 0), out)


@dataclass(frozen=True)
class Record(Schema):
    """TypeBox `Record(String(), values)`."""

    values: Schema = field(default_factory=Unknown)

    def check(self, value: Any, path: str, out: list[Detail]) -> None:
        if not isinstance(value, dict):
            _err(out, path, "must be object")
            return
        for key, item in value.items():
            self.values.check(item, _pointer(path, key), out)


@dataclass(frozen=True)
class Obj(Schema):
    properties: Mapping[str, Schema]
    required: Sequence[str] = ()
    additional: bool = True

    def check(self, value: Any, path: str, out: list[Detail]) -> None:
        if not isinstance(value, dict):
            _err(out, path, "must be object")
            return
        for name in self.required:
            if name not in value:
                _err(out, path, f"must have required property '{name}'")
        if not self.additional:
            for name in value:
                if name not in self.properties:
                    _err(out, path, "must NOT have additional properties")
        for name, sub in self.properties.items():
            if name in value:
                sub.check(value[name], _pointer(path, name), out)


def validate(schema: Schema, value: Any) -> list[Detail]:
    """All errors, in Ajv's order; [] when the value matches."""
    out: list[Detail] = []
    schema.check(value, "", out)
    return out


class InvalidJson(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise InvalidJson(name)  # NaN / Infinity: JSON.parse rejects them


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidJson(text)  # JSON.parse would give Infinity; we cannot store it
    return value


def _js_number(text: str) -> float | int:
    """A JSON number with a fraction or exponent, as a JS number: `7.0` is `7`."""
    value = _finite(text)
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def parse_json(raw: bytes) -> Any:
    """`JSON.parse(text)`; raises InvalidJson.

    Numbers come back as JavaScript has them: an integral float (`7.0`, `1e3`)
    is an int, so it is written back as upstream writes it (`7`, `1000`).
    """
    try:
        text = raw.decode("utf-8")
        if text.startswith("\ufeff"):
            text = text[1:]  # TextDecoder drops the BOM before JSON.parse sees it
        value = json.loads(text, parse_constant=_no_constant, parse_float=_js_number)
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # unpaired surrogates
        return value
    except (UnicodeError, ValueError, RecursionError) as exc:
        raise InvalidJson(str(exc)) from None


# --- the schemas of the routes we serve ---------------------------------------------
SANDBOX_PROFILE = Obj(
    {"name": Str(), "label": Str(), "description": Str(), "remote": Bool()},
    required=("name", "label"),
)
REGISTER = Obj(
    {
        "id": Str(),
        "owner_principal": Str(),
        "label": Str(),
        "kind": one_of_strings("local", "cloud-worker", "sandbox", "ci", "server"),
        "admin_status": one_of_strings("enabled", "disabled"),
        "wake_stream": Str(),
        "sandbox_profiles": Arr(SANDBOX_PROFILE),
    },
    required=("id", "label"),
)
HEARTBEAT = Obj(
    {
        "lease_ms": Num(),
        "wake_stream_offset": Str(),
        "wakeStreamOffset": Str(),
        "liveness_lease_expires_at": Str(),
        "diagnostics": Record(),
    }
)
CLAIM = Obj(
    {
        "subscription_id": Str(),
        "stream": Str(),
        "generation": Num(),
        "ts": AnyOf((Str(), Num())),
    }
)
CALLBACK = Obj(
    {
        "epoch": Num(),
        "generation": Num(),
        "wakeId": Str(),
        "wake_id": Str(),
        "acks": Arr(Record()),
        "done": Bool(),
    }
)
_RUNNER_TARGET = Obj(
    {"type": Literal("runner"), "runnerId": Str(1), "subscription_id": Str(1)},
    required=("type", "runnerId"),
    additional=False,
)
_WEBHOOK_TARGET = Obj(
    {"type": Literal("webhook"), "url": Str(1), "subscription_id": Str(1)},
    required=("type", "url"),
    additional=False,
)
DISPATCH_POLICY = Obj(
    {"targets": Tuple1(AnyOf((_WEBHOOK_TARGET, _RUNNER_TARGET)))},
    required=("targets",),
    additional=False,
)
ENTITY_TYPE = Obj(
    {
        "name": Str(),
        "description": Str(),
        "creation_schema": Record(),
        "inbox_schemas": Record(Record()),
        "state_schemas": Record(Record()),
        "serve_endpoint": Str(),
        "default_dispatch_policy": DISPATCH_POLICY,
    },
    additional=False,
)
SPAWN = Obj(
    {
        "args": Record(),
        "tags": Record(Str()),
        "parent": Str(),
        "dispatch_policy": DISPATCH_POLICY,
        "initialMessage": Unknown(),
        "initialMessageType": Str(),
    }
)
SEND = Obj(
    {
        "payload": Unknown(),
        "key": Str(),
        "type": Str(),
        "mode": one_of_strings("immediate", "queued", "paused", "steer"),
        "position": Str(),
        "afterMs": Num(),
        "from": Str(),
        "from_principal": Str(),
        "from_agent": Str(),
    }
)
SIGNAL = Obj(
    {
        "signal": one_of_strings(
            "SIGINT", "SIGHUP", "SIGTERM", "SIGKILL", "SIGSTOP", "SIGCONT", "SIGUSR"
        ),
        "reason": Str(),
        "payload": Unknown(),
    },
    required=("signal",),
)

Validator = Callable[[Any], list[Detail]]

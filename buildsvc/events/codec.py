"""Event types, their registry, and the JSON form every event is stored in.

An event is a frozen dataclass that subclasses :class:`Event` and is registered with
:func:`event_type`. Its stored form is a JSON object of its fields; the stored row also carries the
type name and the schema version, so old events stay readable: when a field is added or renamed the
type's ``schema_version`` goes up and an upcaster (registered with :func:`upcaster`) turns the old
payload into the new shape before it is decoded.

Payloads are validated on the way in *and* out: a field of the wrong type or an unknown or missing
field is an :class:`EventSchemaError` naming the event type and the field, never a half-decoded event.
Field types may be ``str``, ``int``, ``float``, ``bool``, ``bytes`` (stored as base64), ``None``
unions, ``tuple[T, ...]`` and ``dict[str, T]`` of those, or ``JsonValue`` for free-form data.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin

from buildsvc.errors import InvalidInput

__all__ = [
    "Event",
    "EventSchemaError",
    "JsonValue",
    "UnknownEventType",
    "canonical_json",
    "decode_payload",
    "encode_payload",
    "event_class",
    "event_type",
    "registered_types",
    "upcaster",
]

JsonValue = Any
"""Free-form JSON data (objects, lists, strings, numbers, booleans, null)."""


class UnknownEventType(InvalidInput):
    """A stored or submitted event names a type this version of buildsvc does not know."""

    def __init__(self, type_name: str) -> None:
        super().__init__(f"unknown event type {type_name!r}")
        self.type_name = type_name


class EventSchemaError(InvalidInput):
    """An event payload does not match its type's schema."""

    def __init__(self, type_name: str, problem: str) -> None:
        super().__init__(f"event {type_name}: {problem}")
        self.type_name = type_name
        self.problem = problem


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base class of all event types: a past-tense fact with a JSON-serialisable payload."""

    type_name: ClassVar[str] = ""
    schema_version: ClassVar[int] = 1


E = TypeVar("E", bound=type[Event])

_types: dict[str, type[Event]] = {}
_fields: dict[str, tuple[tuple[str, Any, bool], ...]] = {}
_upcasters: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}


def event_type(cls: E) -> E:
    """Register an event class under its class name (the stored type name)."""
    name = cls.__name__
    if name in _types and _types[name] is not cls:
        raise ValueError(f"event type {name} registered twice")
    cls.type_name = name
    hints = typing.get_type_hints(cls)
    spec = []
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        spec.append((f.name, hints[f.name], required))
    _types[name] = cls
    _fields[name] = tuple(spec)
    return cls


def upcaster(
    type_name: str, from_version: int
) -> Callable[[Callable[[dict[str, Any]], dict[str, Any]]], Any]:
    """Register a function that turns a ``from_version`` payload into a ``from_version + 1`` payload."""

    def register(
        fn: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> Callable[[dict[str, Any]], dict[str, Any]]:
        _upcasters[(type_name, from_version)] = fn
        return fn

    return register


def event_class(type_name: str) -> type[Event]:
    """The class registered for ``type_name``; :class:`UnknownEventType` if there is none."""
    try:
        return _types[type_name]
    except KeyError:
        raise UnknownEventType(type_name) from None


def registered_types() -> Mapping[str, type[Event]]:
    """All registered event classes by type name."""
    return dict(_types)


def canonical_json(value: Any) -> str:
    """The one JSON text of ``value`` that hashes and compares the same everywhere."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# --- encoding ---------------------------------------------------------------------------------------


def encode_payload(event: Event) -> dict[str, Any]:
    """The JSON object stored for ``event`` (checked against its schema)."""
    name = type(event).type_name
    if not name or _types.get(name) is not type(event):
        raise UnknownEventType(type(event).__name__)
    out: dict[str, Any] = {}
    for field_name, tp, _required in _fields[name]:
        out[field_name] = _encode(getattr(event, field_name), tp, name, field_name)
    return out


def _encode(value: Any, tp: Any, type_name: str, path: str) -> Any:
    if tp is Any:
        return value
    if tp is bytes:
        if not isinstance(value, bytes | bytearray):
            raise EventSchemaError(type_name, f"field {path}: expected bytes, got {type(value).__name__}")
        return base64.b64encode(value).decode("ascii")
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        inner = [a for a in get_args(tp) if a is not type(None)]
        return _encode(value, inner[0], type_name, path)
    if origin is tuple:
        item_tp = get_args(tp)[0]
        if not isinstance(value, tuple | list):
            raise EventSchemaError(type_name, f"field {path}: expected a list, got {type(value).__name__}")
        return [_encode(v, item_tp, type_name, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        item_tp = get_args(tp)[1]
        if not isinstance(value, Mapping):
            raise EventSchemaError(type_name, f"field {path}: expected an object, got {type(value).__name__}")
        return {str(k): _encode(v, item_tp, type_name, f"{path}.{k}") for k, v in value.items()}
    _check_scalar(value, tp, type_name, path)
    return value


# --- decoding ---------------------------------------------------------------------------------------


def decode_payload(type_name: str, schema_version: int, payload: Mapping[str, Any]) -> Event:
    """Decode a stored payload, upcasting it from ``schema_version`` to the current version first."""
    cls = event_class(type_name)
    data = dict(payload)
    version = schema_version
    if version > cls.schema_version:
        raise EventSchemaError(
            type_name, f"schema version {version} is newer than this buildsvc knows ({cls.schema_version})"
        )
    while version < cls.schema_version:
        step = _upcasters.get((type_name, version))
        if step is None:
            raise EventSchemaError(type_name, f"no upcaster from schema version {version}")
        data = step(data)
        version += 1
    kwargs: dict[str, Any] = {}
    spec = _fields[type_name]
    known = {name for name, _, _ in spec}
    unknown = sorted(set(data) - known)
    if unknown:
        raise EventSchemaError(type_name, f"unknown field(s) {', '.join(unknown)}")
    for field_name, tp, required in spec:
        if field_name not in data:
            if required:
                raise EventSchemaError(type_name, f"missing field {field_name}")
            continue
        kwargs[field_name] = _decode(data[field_name], tp, type_name, field_name)
    return cls(**kwargs)


def _decode(value: Any, tp: Any, type_name: str, path: str) -> Any:
    if tp is Any:
        return value
    if tp is bytes:
        if not isinstance(value, str):
            raise EventSchemaError(
                type_name, f"field {path}: expected base64 text, got {type(value).__name__}"
            )
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            raise EventSchemaError(type_name, f"field {path}: not valid base64") from None
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        inner = [a for a in get_args(tp) if a is not type(None)]
        return _decode(value, inner[0], type_name, path)
    if origin is tuple:
        item_tp = get_args(tp)[0]
        if not isinstance(value, list | tuple):
            raise EventSchemaError(type_name, f"field {path}: expected a list, got {type(value).__name__}")
        return tuple(_decode(v, item_tp, type_name, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        item_tp = get_args(tp)[1]
        if not isinstance(value, dict):
            raise EventSchemaError(type_name, f"field {path}: expected an object, got {type(value).__name__}")
        return {k: _decode(v, item_tp, type_name, f"{path}.{k}") for k, v in value.items()}
    _check_scalar(value, tp, type_name, path)
    return float(value) if tp is float else value


def _check_scalar(value: Any, tp: Any, type_name: str, path: str) -> None:
    # bool is an int in Python; a schema that says int must not take True, and one that says float
    # takes ints (JSON does not tell 1 from 1.0).
    ok = (
        (tp is str and isinstance(value, str))
        or (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, int | float) and not isinstance(value, bool))
        or (tp is type(None) and value is None)
    )
    if not ok:
        expected = getattr(tp, "__name__", str(tp))
        raise EventSchemaError(type_name, f"field {path}: expected {expected}, got {type(value).__name__}")

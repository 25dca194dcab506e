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
import importlib
import json
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
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
_fields: dict[str, tuple[tuple[str, Converter, Converter, bool], ...]] = {}
_names: dict[str, frozenset[str]] = {}
_builders: dict[str, Callable[[Mapping[str, Any], str], Event]] = {}
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
        enc, dec = _compile(hints[f.name])
        spec.append((f.name, enc, dec, required))
    _types[name] = cls
    _fields[name] = tuple(spec)
    _names[name] = frozenset(f.name for f in dataclasses.fields(cls))
    _builders.pop(name, None)  # made on first decode (see _builder): a process decodes a few types
    return cls


_MISSING = object()


def _make_builder(
    cls: type[Event], hints: Mapping[str, Any], spec: Sequence[tuple[str, Converter, Converter, bool]]
) -> Callable[[Mapping[str, Any], str], Event]:
    """Generate a function that checks a payload's fields and fills a new instance directly.

    Decoding is the hot loop of every projection rebuild; generated straight-line code with the
    common scalar checks inlined, setting the slots without going through the frozen ``__init__``,
    is about three times faster than a generic loop. The checks are the same converters.
    """
    ns: dict[str, Any] = {"_new": object.__new__, "cls": cls, "Err": EventSchemaError, "_MISSING": _MISSING}
    body = ["def build(data, type_name):", "    obj = _new(cls)"]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for i, (name, _enc, dec, required) in enumerate(spec):
        f = fields[name]
        ns[f"set{i}"] = cls.__dict__[name].__set__
        ns[f"dec{i}"] = dec
        body.append(f"    v = data.get({name!r}, _MISSING)")
        body.append("    if v is _MISSING:")
        if required:
            body.append(f"        raise Err(type_name, 'missing field {name}')")
        elif f.default_factory is not dataclasses.MISSING:
            ns[f"factory{i}"] = f.default_factory
            body.append(f"        v = factory{i}()")
        else:
            ns[f"default{i}"] = f.default
            body.append(f"        v = default{i}")
        scalar = hints[name]
        if scalar in (str, int, bool):
            # The converter raises the schema error; call it only when the fast check fails.
            body.append(f"    elif type(v) is not {scalar.__name__}:")
            body.append(f"        v = dec{i}(v, type_name, {name!r})")
        else:
            body.append("    else:")
            body.append(f"        v = dec{i}(v, type_name, {name!r})")
        body.append(f"    set{i}(obj, v)")
    body.append("    return obj")
    exec("\n".join(body), ns)
    builder: Callable[[Mapping[str, Any], str], Event] = ns["build"]
    return builder


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


def _registered(type_name: str) -> type[Event] | None:
    cls = _types.get(type_name)
    if cls is None and "buildsvc.events.catalog" not in sys.modules:
        # The catalog registers buildsvc's event types when it is imported, and it is imported on
        # first need: building its ~100 decoders cost every client command (that only names an
        # error or an envelope) about 0.05 s.
        importlib.import_module("buildsvc.events.catalog")
        cls = _types.get(type_name)
    return cls


def event_class(type_name: str) -> type[Event]:
    """The class registered for ``type_name``; :class:`UnknownEventType` if there is none."""
    cls = _registered(type_name)
    if cls is None:
        raise UnknownEventType(type_name)
    return cls


def registered_types() -> Mapping[str, type[Event]]:
    """All registered event classes by type name (the catalog's among them)."""
    importlib.import_module("buildsvc.events.catalog")
    return dict(_types)


def canonical_json(value: Any) -> str:
    """The one JSON text of ``value`` that hashes and compares the same everywhere."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# --- compiled field converters ----------------------------------------------------------------------
#
# Each field type is turned once, at registration, into a pair of functions (encode, decode) that
# check and convert one value; encoding and decoding an event is then a loop over its fields, with
# no typing introspection per value.

Converter = Callable[[Any, str, str], Any]
"""``(value, type_name, path) -> converted value``, raising EventSchemaError."""


def _scalar(tp: Any) -> Converter:
    expected = getattr(tp, "__name__", str(tp))

    def bad(value: Any, type_name: str, path: str) -> EventSchemaError:
        return EventSchemaError(type_name, f"field {path}: expected {expected}, got {type(value).__name__}")

    if tp is str:

        def conv_str(value: Any, type_name: str, path: str) -> Any:
            if type(value) is str:
                return value
            raise bad(value, type_name, path)

        return conv_str
    if tp is int:

        def conv_int(value: Any, type_name: str, path: str) -> Any:
            # bool is an int in Python; a schema that says int must not take True.
            if type(value) is int:
                return value
            raise bad(value, type_name, path)

        return conv_int
    if tp is bool:

        def conv_bool(value: Any, type_name: str, path: str) -> Any:
            if type(value) is bool:
                return value
            raise bad(value, type_name, path)

        return conv_bool
    if tp is float:

        def conv_float(value: Any, type_name: str, path: str) -> Any:
            # JSON does not tell 1 from 1.0: a float field takes ints.
            if type(value) in (float, int):
                return float(value)
            raise bad(value, type_name, path)

        return conv_float
    if tp is type(None):

        def conv_none(value: Any, type_name: str, path: str) -> Any:
            if value is None:
                return None
            raise bad(value, type_name, path)

        return conv_none
    raise TypeError(f"unsupported event field type {tp!r}")


def _any(value: Any, type_name: str, path: str) -> Any:
    return value


def _encode_bytes(value: Any, type_name: str, path: str) -> Any:
    if not isinstance(value, bytes | bytearray):
        raise EventSchemaError(type_name, f"field {path}: expected bytes, got {type(value).__name__}")
    return base64.b64encode(value).decode("ascii")


def _decode_bytes(value: Any, type_name: str, path: str) -> Any:
    if not isinstance(value, str):
        raise EventSchemaError(type_name, f"field {path}: expected base64 text, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise EventSchemaError(type_name, f"field {path}: not valid base64") from None


def _compile(tp: Any) -> tuple[Converter, Converter]:
    if tp is Any:
        return _any, _any
    if tp is bytes:
        return _encode_bytes, _decode_bytes
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        enc, dec = _compile(inner[0])
        nullable = type(None) in get_args(tp)

        def optional(fn: Converter) -> Converter:
            def conv(value: Any, type_name: str, path: str) -> Any:
                return None if value is None and nullable else fn(value, type_name, path)

            return conv

        return optional(enc), optional(dec)
    if origin is tuple:
        item_enc, item_dec = _compile(get_args(tp)[0])

        def seq(fn: Converter, make: Callable[[Any], Any]) -> Converter:
            def conv(value: Any, type_name: str, path: str) -> Any:
                if not isinstance(value, tuple | list):
                    raise EventSchemaError(
                        type_name, f"field {path}: expected a list, got {type(value).__name__}"
                    )
                return make(fn(v, type_name, f"{path}[{i}]") for i, v in enumerate(value))

            return conv

        return seq(item_enc, list), seq(item_dec, tuple)
    if origin is dict:
        val_enc, val_dec = _compile(get_args(tp)[1])

        def mapping(fn: Converter) -> Converter:
            def conv(value: Any, type_name: str, path: str) -> Any:
                if not isinstance(value, Mapping):
                    raise EventSchemaError(
                        type_name, f"field {path}: expected an object, got {type(value).__name__}"
                    )
                return {str(k): fn(v, type_name, f"{path}.{k}") for k, v in value.items()}

            return conv

        return mapping(val_enc), mapping(val_dec)
    conv = _scalar(tp)
    return conv, conv


# --- encoding ---------------------------------------------------------------------------------------


def encode_payload(event: Event) -> dict[str, Any]:
    """The JSON object stored for ``event`` (checked against its schema)."""
    name = type(event).type_name
    if not name or _types.get(name) is not type(event):
        raise UnknownEventType(type(event).__name__)
    return {
        field_name: enc(getattr(event, field_name), name, field_name)
        for field_name, enc, _, _ in _fields[name]
    }


# --- decoding ---------------------------------------------------------------------------------------


def decode_payload(type_name: str, schema_version: int, payload: Mapping[str, Any]) -> Event:
    """Decode a stored payload, upcasting it from ``schema_version`` to the current version first."""
    cls = _registered(type_name)
    if cls is None:
        raise UnknownEventType(type_name)
    data = payload
    if schema_version != cls.schema_version:
        data = _upcast(cls, type_name, schema_version, dict(payload))
    names = _names[type_name]
    if not data.keys() <= names:
        unknown = sorted(set(data) - names)
        raise EventSchemaError(type_name, f"unknown field(s) {', '.join(unknown)}")
    return _builder(type_name)(data, type_name)


def _builder(type_name: str) -> Callable[[Mapping[str, Any], str], Event]:
    built = _builders.get(type_name)
    if built is None:
        # Generating and compiling one costs ~0.3 ms: for every type at import, a start-up cost
        # of every process (most decode a handful of types, if any).
        cls = _types[type_name]
        built = _builders[type_name] = _make_builder(cls, typing.get_type_hints(cls), _fields[type_name])
    return built


def _upcast(cls: type[Event], type_name: str, version: int, data: dict[str, Any]) -> dict[str, Any]:
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
    return data

"""Event encoding, validation and upcasting (no database)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest

from buildsvc.events import catalog
from buildsvc.events.codec import (
    Event,
    EventSchemaError,
    UnknownEventType,
    decode_payload,
    encode_payload,
    event_type,
    registered_types,
    upcaster,
)


@event_type
@dataclass(frozen=True, slots=True, kw_only=True)
class WidgetPainted(Event):
    """A test-only event at schema version 3: ``colour`` was ``color`` (v1), ``coats`` was added (v3)."""

    schema_version = 3
    widget: str
    colour: str
    coats: int = 1


@upcaster("WidgetPainted", 1)
def _rename_color(payload: dict[str, Any]) -> dict[str, Any]:
    payload = dict(payload)
    payload["colour"] = payload.pop("color")
    return payload


@upcaster("WidgetPainted", 2)
def _add_coats(payload: dict[str, Any]) -> dict[str, Any]:
    return payload | {"coats": 2}


def test_the_catalog_names_every_event_the_service_records() -> None:
    expected = {
        "SolveRequested", "SolveStarted", "SolveCompleted", "SolveFailed", "SolveCancelled",
        "VertexStarted", "VertexCached", "VertexCompleted", "VertexFailed", "VertexInterrupted",
        "VertexLogChunk", "RefAcquired", "RefReleased", "SnapshotCreated", "SnapshotCommitted",
        "SnapshotRemoved", "CacheRecordAdded", "CacheRecordRemoved", "CacheExportStarted",
        "CacheExportCompleted", "CacheExportFailed", "CacheImported", "ExportCompleted",
        "WorkerRegistered", "DaemonStarted", "DaemonStopped", "BuildHistoryPinned",
        "BuildHistoryDeleted",
        "LocalContextReceived", "LocalContextsPruned",
        "SolveResumed", "VertexResultMissing",
        "GatewaySolveRequested", "GatewaySolveCompleted", "GatewaySolveFailed", "GatewayWarning",
        "GatewayReturned", "FrontendInputReceived",
        "OutputFetched", "OutputDiscarded",
        "CacheImportMiss",
    }  # fmt: skip
    assert expected <= set(registered_types())
    assert set(catalog.__all__) == expected


def test_round_trip_of_every_field_kind() -> None:
    event = catalog.SolveRequested(
        build_ref="r",
        frontend_attrs={"target": "prod"},
        definition={"ops": [1, 2, {"x": None}]},
        exporters=({"type": "local", "dest": "/out"},),
    )
    payload = encode_payload(event)
    assert payload["exporters"] == [{"type": "local", "dest": "/out"}]
    assert decode_payload("SolveRequested", 1, payload) == event
    chunk = catalog.VertexLogChunk(build_ref="r", vertex="v", data=b"\x00\xffhi")
    assert decode_payload("VertexLogChunk", 1, encode_payload(chunk)) == chunk


def test_old_payloads_are_upcast_step_by_step() -> None:
    old = decode_payload("WidgetPainted", 1, {"widget": "w", "color": "red"})
    assert old == WidgetPainted(widget="w", colour="red", coats=2)
    assert decode_payload("WidgetPainted", 3, {"widget": "w", "colour": "blue"}) == WidgetPainted(
        widget="w", colour="blue"
    )


def test_a_version_newer_than_the_code_is_refused() -> None:
    with pytest.raises(EventSchemaError, match="schema version 4 is newer"):
        decode_payload("WidgetPainted", 4, {"widget": "w", "colour": "red"})


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ({"build_ref": "r", "vertex_count": "3"}, "field vertex_count: expected int, got str"),
        ({"build_ref": "r", "vertex_count": True}, "field vertex_count: expected int, got bool"),
        ({"vertex_count": 3}, "missing field build_ref"),
        ({"build_ref": "r", "bogus": 1}, "unknown field(s) bogus"),
    ],
)
def test_payloads_that_do_not_match_the_schema_are_named(payload: dict[str, Any], problem: str) -> None:
    with pytest.raises(EventSchemaError) as info:
        decode_payload("SolveStarted", 1, payload)
    assert str(info.value) == f"event SolveStarted: {problem}"


def test_unknown_types_are_named() -> None:
    with pytest.raises(UnknownEventType, match="'NoSuchThing'"):
        decode_payload("NoSuchThing", 1, {})


def test_bad_base64_and_wrong_container_types() -> None:
    with pytest.raises(EventSchemaError, match="not valid base64"):
        decode_payload("VertexLogChunk", 1, {"build_ref": "r", "vertex": "v", "data": "!!!"})
    with pytest.raises(EventSchemaError, match="labels: expected an object"):
        decode_payload("WorkerRegistered", 1, {"worker": "w", "labels": ["a"]})
    with pytest.raises(EventSchemaError, match=r"labels\.os: expected str"):
        encode_payload(catalog.WorkerRegistered(worker="w", labels={"os": 1}))  # type: ignore[dict-item]


def test_decoding_loads_the_catalog_it_was_not_imported_with() -> None:
    # The catalog loads on first need (a client that only names errors never builds its decoders):
    # decoding a stored event in a fresh interpreter must still find its class.
    script = (
        "import sys\n"
        "from buildsvc.events.codec import decode_payload, event_class\n"
        "assert 'buildsvc.events.catalog' not in sys.modules\n"
        "event = decode_payload('SolveCancelled', 1, {'build_ref': 'r', 'reason': 'stop'})\n"
        "assert type(event).__name__ == 'SolveCancelled' and event.reason == 'stop'\n"
        "assert event_class('VertexCached').type_name == 'VertexCached'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    fresh = (
        "import buildsvc.events as e\n"
        "assert 'SolveRequested' in e.registered_types()\n"
        "assert e.catalog.SolveRequested\n"
    )
    subprocess.run([sys.executable, "-c", fresh], check=True)


def test_a_status_stream_ends_on_the_catalog_events_that_end_a_build() -> None:
    # The API model names them as text (the client never loads the catalog): keep the two the same.
    from buildsvc.api.model import FINAL_EVENT_TYPES

    ends: tuple[type[Event], ...] = (catalog.SolveCompleted, catalog.SolveFailed, catalog.SolveCancelled)
    assert {cls.type_name for cls in ends} == FINAL_EVENT_TYPES

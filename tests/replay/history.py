"""Recorded event histories (JSON files under ``histories/``) and the read models they must produce.

A history file holds ``description``, ``events`` (each ``stream``, ``type``, ``payload``, ``actor``,
``trace_id``, in log order) and ``expected``: the rows of each projection table (every column,
keyed by name, in any order), and the leak report (ids of leaked refs and unreferenced snapshots, in
report order). The expected rows are written by hand from the projections' documented semantics.
Times depend on when the test ran, so a time column is written as ``"<set>"`` (not null) or ``null``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from buildsvc.events.codec import decode_payload
from buildsvc.events.envelope import NewEvent
from buildsvc.events.schema import UtcDateTime
from buildsvc.projections.leak_records import LeakReport
from buildsvc.projections.schema import build_vertices, builds, refs, snapshots

__all__ = [
    "HISTORY_DIR",
    "SET",
    "TABLES",
    "ExpectedLeaks",
    "History",
    "HistoryFormatError",
    "RecordedEvent",
    "history_paths",
    "leak_ids",
    "load_history",
    "sort_rows",
    "stable_rows",
]

HISTORY_DIR = Path(__file__).parent / "histories"

SET = "<set>"
"""Stands for any non-null time."""

TABLES: Mapping[str, sa.Table] = {t.name: t for t in (builds, build_vertices, refs, snapshots)}
"""The read-model tables a history states in full."""

Row = dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedEvent:
    """One event as the engine wrote it."""

    stream: str
    type: str
    payload: Mapping[str, Any]
    actor: str
    trace_id: str

    def to_new_event(self) -> NewEvent:
        """The event to append; a payload that does not match the catalog raises here."""
        return NewEvent(event=decode_payload(self.type, 1, self.payload))


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpectedLeaks:
    """Ids in the order :func:`find_leaks` reports them."""

    refs: tuple[str, ...]
    snapshots: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class History:
    """A recorded history and the read models it must produce."""

    name: str
    description: str
    events: tuple[RecordedEvent, ...]
    tables: Mapping[str, tuple[Row, ...]]
    """Table name -> every row (in any order)."""
    leaks: ExpectedLeaks


class HistoryFormatError(ValueError):
    """A history file that does not follow the format (so the test would not check what it claims)."""


def history_paths() -> list[Path]:
    """Every history file, by name."""
    return sorted(HISTORY_DIR.glob("*.json"))


def load_history(path: Path) -> History:
    """Read and check one history file."""
    data = json.loads(path.read_text(encoding="utf-8"))
    _keys(path.name, data, {"description", "events", "expected"})
    events = []
    for i, raw in enumerate(data["events"], start=1):
        _keys(f"{path.name} event {i}", raw, {"stream", "type", "payload", "actor", "trace_id"})
        events.append(
            RecordedEvent(
                stream=raw["stream"],
                type=raw["type"],
                payload=raw["payload"],
                actor=raw["actor"],
                trace_id=raw["trace_id"],
            )
        )
    expected = data["expected"]
    _keys(f"{path.name} expected", expected, {*TABLES, "leaks"})
    tables: dict[str, tuple[Row, ...]] = {}
    for name, table in TABLES.items():
        columns = {c.name for c in table.columns}
        for j, row in enumerate(expected[name]):
            _keys(f"{path.name} expected {name}[{j}]", row, columns)
            for c in table.columns:
                if isinstance(c.type, UtcDateTime) and row[c.name] not in (SET, None):
                    raise HistoryFormatError(f"{path.name} {name}[{j}].{c.name}: a time is {SET!r} or null")
        tables[name] = tuple(expected[name])
    leaks = expected["leaks"]
    _keys(f"{path.name} expected leaks", leaks, {"refs", "snapshots"})
    return History(
        name=path.stem,
        description=data["description"],
        events=tuple(events),
        tables=tables,
        leaks=ExpectedLeaks(refs=tuple(leaks["refs"]), snapshots=tuple(leaks["snapshots"])),
    )


def _keys(where: str, value: Any, wanted: set[str]) -> None:
    if not isinstance(value, dict):
        raise HistoryFormatError(f"{where}: expected an object")
    if set(value) != wanted:
        missing, extra = sorted(wanted - set(value)), sorted(set(value) - wanted)
        raise HistoryFormatError(f"{where}: missing {missing}, unexpected {extra}")


def stable_rows(conn: sa.Connection, table: sa.Table) -> list[Row]:
    """Every row of ``table`` in primary-key order, with times written as :data:`SET`."""
    rows = [
        {k: SET if isinstance(v, datetime) else v for k, v in r.items()}
        for r in conn.execute(sa.select(table)).mappings()
    ]
    return sort_rows(table, rows)


def sort_rows(table: sa.Table, rows: Sequence[Row]) -> list[Row]:
    """``rows`` in primary-key order, compared in Python (database collations differ)."""
    keys = [c.name for c in table.primary_key.columns]
    return sorted(rows, key=lambda r: tuple(r[k] for k in keys))


def leak_ids(report: LeakReport) -> ExpectedLeaks:
    """The ids of a leak report, in its order."""
    return ExpectedLeaks(
        refs=tuple(r.ref_id for r in report.refs), snapshots=tuple(s.snapshot_id for s in report.snapshots)
    )

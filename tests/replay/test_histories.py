"""Replay recorded histories into every backend and compare the read models with hand-written ones.

Each history is appended event by event with the projections attached, so the inline ones (ref
state) apply inside the appends and the runner catches up the rest, as in the daemon. Then the
projections are rebuilt from the log, which must give the same rows and digests (invariant 1).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from buildsvc.events.sql_store import SqlEventStore
from buildsvc.projections import ProjectionRunner, attach_projections, default_projections, find_leaks
from tests.replay.history import (
    TABLES,
    History,
    history_paths,
    leak_ids,
    load_history,
    sort_rows,
    stable_rows,
)

PATHS = history_paths()

# Histories whose hand-written read models the projections do not produce yet (reported to the
# lead; buildsvc/projections is not ours to change). Strict: once fixed, the XPASS fails and the
# entry must go.
KNOWN_PROJECTION_BUGS: dict[str, str] = {}


def _by_name(paths: list[Path], *, known_bugs: bool = False) -> list[pytest.ParameterSet]:
    params = []
    for p in paths:
        reason = KNOWN_PROJECTION_BUGS.get(p.stem) if known_bugs else None
        marks = [pytest.mark.xfail(reason=reason, strict=True, raises=AssertionError)] if reason else []
        params.append(pytest.param(p, id=p.stem, marks=marks))
    return params


def _append(store: SqlEventStore, history: History) -> None:
    for recorded in history.events:
        store.append(
            recorded.stream, [recorded.to_new_event()], actor=recorded.actor, trace_id=recorded.trace_id
        )


def _replayed(store: SqlEventStore, history: History) -> ProjectionRunner:
    runner = attach_projections(store)
    _append(store, history)
    head = store.head()
    assert head == len(history.events)
    # The ref state is inline: the appends themselves brought it to the head, before any runner ran.
    assert runner.status("refs").position == head
    runner.run_once()
    assert all(s.position == head and s.status == "live" for s in runner.statuses())
    for name in runner.projections:
        runner.release_lease(name)
    return runner


def _assert_read_models(store: SqlEventStore, history: History) -> None:
    with store.db.read() as conn:
        for name, table in TABLES.items():
            assert stable_rows(conn, table) == sort_rows(table, history.tables[name]), name
        assert leak_ids(find_leaks(conn)) == history.leaks


def test_there_are_histories_to_replay() -> None:
    # A glob that matches nothing would make the parametrized tests vanish instead of fail.
    assert len(PATHS) >= 7
    assert set(KNOWN_PROJECTION_BUGS) <= {p.stem for p in PATHS}


@pytest.mark.parametrize("path", _by_name(PATHS))
def test_history_file_is_well_formed(path: Path) -> None:
    history = load_history(path)
    assert history.events and history.description
    for recorded in history.events:
        recorded.to_new_event()  # the payload matches the catalog


@pytest.mark.parametrize("path", _by_name(PATHS, known_bugs=True))
def test_replay_gives_the_expected_read_models(path: Path, store: SqlEventStore) -> None:
    history = load_history(path)
    _replayed(store, history)
    _assert_read_models(store, history)


@pytest.mark.parametrize("path", _by_name(PATHS, known_bugs=True))
def test_rebuild_gives_the_same_rows_and_digests(path: Path, store: SqlEventStore) -> None:
    history = load_history(path)
    runner = _replayed(store, history)
    before = {name: runner.digest(name) for name in runner.projections}
    for name in runner.projections:
        runner.rebuild(name)
    assert {name: runner.digest(name) for name in runner.projections} == before
    _assert_read_models(store, history)


@pytest.mark.parametrize("path", _by_name(PATHS))
def test_batch_size_does_not_change_the_read_models(path: Path, store: SqlEventStore) -> None:
    history = load_history(path)
    live = _replayed(store, history)
    names = list(live.projections)
    digests = {}
    for batch_size in (1, 1000):
        runner = ProjectionRunner(store, default_projections(), batch_size=batch_size)
        for name in names:
            runner.rebuild(name)
        digests[batch_size] = {name: runner.digest(name) for name in names}
    assert digests[1] == digests[1000]
    assert digests[1] == {name: live.digest(name) for name in names}

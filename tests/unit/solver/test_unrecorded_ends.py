"""``UnrecordedEnds``: a build's end kept on disk while the store is away, appended once after."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from buildsvc.daemon.state import open_state
from buildsvc.errors import StoreUnavailable
from buildsvc.events import catalog as ev
from buildsvc.events.envelope import NewEvent
from buildsvc.events.store import EventStore
from buildsvc.solver.unrecorded import UnrecordedEnds


class _Away:
    """A store whose database does not answer."""

    def append(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("database x did not answer within 1s")


def _end(ref: str) -> list[NewEvent]:
    return [
        NewEvent(event=ev.RefReleased(ref_id=f"r-{ref}", snapshot_id="s1", reason="solve ended")),
        NewEvent(event=ev.SolveFailed(build_ref=ref, error="database did not answer")),
    ]


def _wait_written(ends: UnrecordedEnds) -> None:
    deadline = time.monotonic() + 30
    while ends.pending():
        assert time.monotonic() < deadline, "the kept end was never written"
        time.sleep(0.05)


def test_a_kept_end_is_appended_by_the_background_writer_once_with_its_ids(tmp_path: Path) -> None:
    state = open_state(tmp_path / "root", None)
    try:
        store = state.store
        store.append("build-b1", [ev.SolveRequested(build_ref="b1")])
        end = _end("b1")
        # The first batch's try went through but its answer was lost: its ids are stored already.
        store.append("build-b1", end[:1])
        ends = UnrecordedEnds(tmp_path / "unrecorded", store, retry_every=0.05)
        ends.keep("b1", [end[:1], end[1:]], actor="alice", trace_id="t")
        _wait_written(ends)
        ends.close()
        stored = store.read_stream("build-b1")
        assert [s.type for s in stored] == ["SolveRequested", "RefReleased", "SolveFailed"]
        assert [s.event_id for s in stored[1:]] == [e.event_id for e in end]
        assert stored[2].actor == "alice"
    finally:
        state.close()


def test_what_a_process_could_not_write_is_written_by_the_next_start(tmp_path: Path) -> None:
    away: Any = _Away()
    dead = UnrecordedEnds(tmp_path / "unrecorded", away, retry_every=0.05)
    dead.keep("b2", [_end("b2")], actor="bob", trace_id="")
    dead.close()
    assert dead.pending() == ["b2"]
    state = open_state(tmp_path / "root", None)
    try:
        store: EventStore = state.store
        next_start = UnrecordedEnds(tmp_path / "unrecorded", store)
        assert next_start.write_pending() == ["b2"]
        assert next_start.pending() == [] and next_start.write_pending() == []
        assert [s.type for s in store.read_stream("build-b2")] == ["RefReleased", "SolveFailed"]
    finally:
        state.close()

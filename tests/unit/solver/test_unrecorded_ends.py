"""``UnrecordedEnds``: a build's end kept on disk while the store is away, appended once after."""

from __future__ import annotations

from pathlib import Path

from buildsvc.daemon.state import open_state
from buildsvc.events import catalog as ev
from buildsvc.events.envelope import NewEvent
from buildsvc.solver.unrecorded import UnrecordedEnds


def test_a_kept_end_is_appended_once_with_its_ids(tmp_path: Path) -> None:
    state = open_state(tmp_path / "root", None)
    try:
        store = state.store
        store.append("build-b1", [ev.SolveRequested(build_ref="b1")])
        end = [
            NewEvent(event=ev.RefReleased(ref_id="r1", snapshot_id="s1", reason="solve ended")),
            NewEvent(event=ev.SolveFailed(build_ref="b1", error="database did not answer")),
        ]
        # The first batch's try went through but its answer was lost: its ids are stored already.
        store.append("build-b1", end[:1])
        ends = UnrecordedEnds(tmp_path / "unrecorded", store)
        ends.keep("b1", [end[:1], end[1:]], actor="alice", trace_id="t")
        assert ends.pending() == ["b1"]
        ends.close()  # the next start writes what this process could not
        again = UnrecordedEnds(tmp_path / "unrecorded", store)
        assert again.write_pending() == ["b1"]
        assert again.pending() == [] and again.write_pending() == []
        stored = store.read_stream("build-b1")
        assert [s.type for s in stored] == ["SolveRequested", "RefReleased", "SolveFailed"]
        assert [s.event_id for s in stored[1:]] == [e.event_id for e in end]
        assert stored[2].actor == "alice"
    finally:
        state.close()

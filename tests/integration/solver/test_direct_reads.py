"""Inputs a snapshotter holds as a plain directory are read in place, with no view (run as root).

A merge of file-op results on scratch then makes no view snapshot (none of their events, mounts or
directories), and its layer is hard links to their files; an input that is a stack of overlay layers
is still read through a view.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from buildsvc.daemon.engine import open_engine
from buildsvc.daemon.state import open_state
from buildsvc.events import catalog as ev
from buildsvc.projections.refs import find_leaks
from buildsvc.solver import llb
from buildsvc.solver.engine import SolveRequest

pytestmark = pytest.mark.root


@pytest.mark.parametrize("worker", ["runc-overlay", "runc-native"])
def test_a_merge_reads_unstacked_inputs_in_place(db_url: str, tmp_path: Path, worker: str) -> None:
    state = open_state(tmp_path / "root", db_url)
    engine = open_engine(state, worker_names=[worker])
    try:

        def solve(definition: llb.State, build_ref: str) -> list[ev.SnapshotCreated]:
            result = engine.solver.solve(SolveRequest(definition=definition.marshal(), build_ref=build_ref))
            out = tmp_path / build_ref
            engine.export_local(result.output, out, build_ref=build_ref)
            events = [e.decode() for e in state.store.read_stream(f"build-{build_ref}")]
            solved = next(i for i, e in enumerate(events) if isinstance(e, ev.SolveCompleted))
            return [e for e in events[:solved] if isinstance(e, ev.SnapshotCreated) and e.kind == "view"]

        files = [llb.scratch().file(llb.mkfile(f"/f{i}", f"{i}\n")) for i in range(3)]
        merged = llb.merge(files)
        assert solve(merged, "flat") == []
        assert sorted(p.name for p in (tmp_path / "flat").iterdir()) == ["f0", "f1", "f2"]

        # Its files are its inputs' own (hard links), and a step on top changes only its own copy.
        changed = merged.file(llb.mkfile("/f1", "changed\n"))
        assert solve(changed, "changed") == []
        assert (tmp_path / "changed" / "f1").read_text() == "changed\n"
        assert solve(merged, "again") == []
        assert (tmp_path / "again" / "f1").read_text() == "1\n"
        assert solve(files[1], "leaf") == []
        assert (tmp_path / "leaf" / "f1").read_text() == "1\n"
        snapshots = tmp_path / "root" / "workers" / worker
        kept = {f.stat().st_ino for f in snapshots.rglob("f1") if f.read_text() == "1\n"}
        assert len(kept) == 1  # the leaf's file, and the merges' links to it
        assert next(f for f in snapshots.rglob("f1") if f.read_text() == "1\n").stat().st_nlink >= 2

        # A layer on f0's: on overlay only a view shows its whole tree.
        stacked = files[0].file(llb.mkfile("/h", "h\n"))
        extra = llb.scratch().file(llb.mkfile("/g", "g\n"))
        views = solve(llb.merge([extra, stacked, merged]), "stacked")
        assert len(views) == (1 if worker == "runc-overlay" else 0)
        assert sorted(p.name for p in (tmp_path / "stacked").iterdir()) == ["f0", "f1", "f2", "g", "h"]
        assert (tmp_path / "stacked" / "f1").read_text() == "1\n"
        with state.db.read() as conn:
            report = find_leaks(conn)
        assert report.refs == () and report.snapshots == ()
    finally:
        engine.close()
        state.close()

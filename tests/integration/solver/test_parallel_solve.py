"""A daemon's default parallelism on PostgreSQL: its vertex threads run at once on kept connections.

Small steps wait mostly for the append that announces them, and appends asked for while one is in
flight go together: many steps in flight mean few appends. Each thread also looks the cache up, so
the connection pool keeps a connection for each; past the pool, every use would open a PostgreSQL
backend and close it again.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import event as sa_event

from buildsvc.daemon.engine import open_engine
from buildsvc.daemon.state import open_state
from buildsvc.events import catalog as ev
from buildsvc.solver import llb
from buildsvc.solver.engine import DEFAULT_MAX_PARALLEL, SolveRequest
from tests.support.databases import PostgresTemplates

pytestmark = [pytest.mark.root, pytest.mark.postgres]


def test_a_wide_solve_groups_its_steps_and_keeps_its_connections(
    pg_templates: PostgresTemplates, tmp_path: Path
) -> None:
    assert DEFAULT_MAX_PARALLEL >= 16
    with pg_templates.fresh() as url:
        state = open_state(tmp_path / "root", url)
        engine = open_engine(state, worker_names=["runc-overlay"])
        opened: list[object] = []
        closed: list[object] = []
        sa_event.listen(state.db.engine, "connect", lambda *_: opened.append(1))
        sa_event.listen(state.db.engine, "close", lambda *_: closed.append(1))
        try:
            files = [llb.scratch().file(llb.mkfile(f"/f{i}", f"{i}\n")) for i in range(200)]
            engine.solver.solve(SolveRequest(definition=llb.merge(files).marshal(), build_ref="wide"))
            churned = len(closed)  # before the pool's own close at the end
            events = list(state.store.read_stream("build-wide"))
            started = sum(1 for e in events if e.type == ev.VertexStarted.type_name)
            appends = len({e.recorded_at for e in events})  # one time per append (its transaction)
        finally:
            engine.close()
            state.close()
    assert started == 201
    assert churned == 0  # no connection opened for one use and closed again
    assert len(opened) <= DEFAULT_MAX_PARALLEL + 4
    # With four steps in flight there was about one append for every two steps.
    assert appends < started / 3

"""A local cache import's hits (real runc, overlayfs, SQLite and PostgreSQL): lazy (no layer moved until
something reads the result), held back and written with the build's next append, and their layers
unpacked ahead of the unpack that takes them.

An all-hit rebuild's hits cost one append, not one each; the log has them before anything the build
records on their snapshots; layers unpacked ahead hold the bytes the build wrote; a blob found corrupt
while it is unpacked ahead is still a recorded miss (the step runs), with neither its snapshot nor a
staged directory left behind. After every test each engine releases everything (leak report empty,
prune leaves nothing).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy.engine import Connection

from buildsvc.cache.imports import ImportLayer
from buildsvc.cache.local import LocalSource
from buildsvc.cache.options import parse_export, parse_import
from buildsvc.daemon.cache_exports import LazyImports, export_caches, import_caches
from buildsvc.daemon.engine import Engine, open_engine
from buildsvc.daemon.state import open_state
from buildsvc.errors import NotFound
from buildsvc.events import catalog as ev
from buildsvc.events.envelope import StoredEvent
from buildsvc.executors import make_busybox_rootfs
from buildsvc.executors.mounts import mounts_under, unmount
from buildsvc.projections.refs import find_leaks
from buildsvc.solver import llb
from buildsvc.solver.definition import Definition
from buildsvc.solver.engine import ResultRef, SolveRequest
from buildsvc.solver.worker import SnapshotKind
from tests.support.databases import PostgresTemplates, open_test_database, sqlite_url
from tests.support.releasable import check_engine_releasable

pytestmark = pytest.mark.root

STEPS = ("one", "two", "three")


def chain(steps: Sequence[str] = STEPS) -> Definition:
    state = llb.local("rootfs")
    for name in steps:
        state = state.run(f"head -c 20000 /dev/urandom > /{name}", name=name).root()
    return state.marshal()


@pytest.fixture
def engines(request: pytest.FixtureRequest, db_url: str, tmp_path: Path) -> Iterator[Callable[[str], Engine]]:
    """Opens an engine on a fresh state per call (root under ``tmp_path``, database of ``db_url``'s
    backend); each is checked releasable and closed after the test.
    """
    opened: list[Engine] = []
    with contextlib.ExitStack() as stack:

        def make(name: str) -> Engine:
            url = db_url
            if opened and url.startswith("sqlite"):
                (tmp_path / f"db-{name}").mkdir()
                url = sqlite_url(tmp_path / f"db-{name}")
                open_test_database(url).dispose()
            elif opened:
                templates: PostgresTemplates = request.getfixturevalue("pg_templates")
                url = stack.enter_context(templates.fresh())
            state = open_state(tmp_path / name, url)
            stack.callback(state.close)
            engine = open_engine(state)
            stack.callback(engine.close)
            opened.append(engine)
            return engine

        try:
            yield make
            for engine in opened:
                check_engine_releasable(engine)
        finally:
            stack.close()
            for point in sorted(mounts_under(str(tmp_path)), key=len, reverse=True):
                unmount(point)


def solve(
    engine: Engine,
    tmp_path: Path,
    ref: str,
    definition: Definition,
    export: Path | None = None,
    *,
    read_result: bool = True,
) -> None:
    """Solve ``definition``; its result is read (an export callback, as an output's) unless
    ``read_result`` is false; ``export``: also a local cache export (mode=max) there.
    """
    rootfs = tmp_path / "rootfs"
    if not rootfs.exists():
        make_busybox_rootfs(str(rootfs))

    def run_export(result: ResultRef | None) -> dict[str, str]:
        if export is None:
            return {}
        spec = {"type": "local", "dest": str(export), "mode": "max", "compression": "uncompressed"}
        return export_caches(engine, result, ref, definition, [parse_export(spec)], actor="test")

    engine.solver.solve(
        SolveRequest(definition=definition, build_ref=ref, local_dirs={"rootfs": rootfs}),
        export=run_export if read_result else None,
    )


def imported_into(engines: Callable[[str], Engine], tmp_path: Path, ref: str) -> tuple[Engine, Engine, Path]:
    """The chain built and exported by a first engine, then imported (lazily) into a second one."""
    store = tmp_path / "cache"
    first = engines("first")
    solve(first, tmp_path, "first", chain(), store)
    engine = engines("second")
    import_caches(engine, ref, [parse_import({"type": "local", "src": str(store)})], actor="test")
    return first, engine, store


def decoded(engine: Engine) -> list[tuple[int, object]]:
    return [(s.position, s.decode()) for s in engine.state.store.read_all()]


def ran(engine: Engine, ref: str) -> list[str]:
    return [
        e.name
        for s in engine.state.store.read_stream(f"build-{ref}")
        if isinstance(e := s.decode(), ev.VertexStarted)
    ]


def no_leaks(engine: Engine) -> None:
    engine.state.runner.run_once()
    with engine.state.db.read() as conn:
        report = find_leaks(conn)
    assert report.empty, report


def staged_dirs(engine: Engine) -> list[Path]:
    base = engine.state.root / "cache" / "unpack-ahead"
    return [d for p in base.iterdir() for d in p.iterdir()] if base.exists() else []


def corrupt_step_two(store: Path) -> ImportLayer:
    """Flip a byte in the middle of step two's layer blob in the layout ``store``; returns the layer."""
    [record] = [r for r in LocalSource(str(store)).records if len(r.layers) == 3]
    victim = record.layers[-1]
    path = store / "blobs" / "sha256" / victim.blob.split(":")[1]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return victim


def file_in_layers(engine: Engine, name: str) -> bytes:
    snapshotter = engine.workers[0].snapshotter
    upper = getattr(snapshotter, "upper_dir")  # noqa: B009 (the overlay snapshotter's)
    for info in snapshotter.list():
        candidate = Path(upper(info.key)) / name
        if info.kind is SnapshotKind.COMMITTED and candidate.is_file():
            return candidate.read_bytes()
    raise AssertionError(f"no layer holds /{name}")


def test_hits_are_held_back_and_written_in_one_append(
    engines: Callable[[str], Engine], tmp_path: Path
) -> None:
    _, engine, _ = imported_into(engines, tmp_path, "again")
    lazy = engine.solver.remote_cache
    assert isinstance(lazy, LazyImports)
    [imported] = [e for _, e in decoded(engine) if isinstance(e, ev.CacheImported)]
    keys = [offered.rpartition("#")[0] for offered in imported.offered]
    assert len(keys) == len(STEPS) + 1
    transactions: list[list[str]] = []

    def hook(conn: Connection, appended: Sequence[StoredEvent], head_before: int) -> None:
        transactions.append([s.type for s in appended])

    engine.state.store.add_hook(hook)
    held: list[Callable[[], None]] = []
    worker = engine.workers[0]
    for key in keys:
        assert lazy.materialize(key, worker, "again", held.append)
    # Unpacked, nothing written yet: the build writes them before its next append.
    assert transactions == []
    assert not [e for _, e in decoded(engine) if isinstance(e, ev.CacheRecordAdded)]
    assert len(set(held)) == 1
    held[0]()
    assert len(transactions) == 1
    assert transactions[0].count(ev.CacheRecordAdded.type_name) == len(keys)
    # Once written, the cache index answers: the rebuild hits every step, nothing runs.
    solve(engine, tmp_path, "again", chain())
    assert ran(engine, "again") == []
    no_leaks(engine)


def test_a_step_on_an_imported_hit_is_recorded_after_the_hit(
    engines: Callable[[str], Engine], tmp_path: Path
) -> None:
    _, engine, _ = imported_into(engines, tmp_path, "more")
    solve(engine, tmp_path, "more", chain((*STEPS, "four")))
    assert ran(engine, "more") == ["four"]
    stored = decoded(engine)
    created = {e.snapshot_id: at for at, e in stored if isinstance(e, ev.SnapshotCreated)}
    added = [e for _, e in stored if isinstance(e, ev.CacheRecordAdded) and e.source.startswith("import:")]
    assert sorted(e.source for e in added) == ["import:local"] * (len(STEPS) + 1)
    # The step's ref on the imported top snapshot comes after that snapshot's record in the log.
    on_imported = [
        (at, e.snapshot_id)
        for at, e in stored
        if isinstance(e, ev.RefAcquired)
        and e.holder_kind == "solve"
        and e.snapshot_id in {a.snapshot_id for a in added}
    ]
    assert on_imported
    assert all(top in created and created[top] < at for at, top in on_imported)
    no_leaks(engine)


def test_layers_unpacked_ahead_are_taken_by_the_hits(
    engines: Callable[[str], Engine], tmp_path: Path
) -> None:
    first, engine, _ = imported_into(engines, tmp_path, "again")
    solve(engine, tmp_path, "again", chain())
    assert ran(engine, "again") == []
    lazy = engine.solver.remote_cache
    assert isinstance(lazy, LazyImports) and lazy._ahead is not None
    assert lazy._ahead.taken == len(STEPS)  # every step's layer; the chain's first (rootfs) went inline
    assert {n: file_in_layers(engine, n) for n in STEPS} == {n: file_in_layers(first, n) for n in STEPS}
    assert staged_dirs(engine) == []
    no_leaks(engine)


def test_a_blob_found_corrupt_while_unpacked_ahead_is_a_miss_leaving_nothing(
    engines: Callable[[str], Engine], tmp_path: Path
) -> None:
    _, engine, store = imported_into(engines, tmp_path, "again")
    # Staged ahead while the layers under it are unpacked, found corrupt there.
    victim = corrupt_step_two(store)
    solve(engine, tmp_path, "again", chain())
    assert ran(engine, "again")[0] == "two"
    misses = [e for _, e in decoded(engine) if isinstance(e, ev.CacheImportMiss)]
    assert misses and all(victim.blob in e.error and "corrupt" in e.error for e in misses)
    lazy = engine.solver.remote_cache
    assert isinstance(lazy, LazyImports) and lazy._ahead is not None
    assert lazy._ahead.failed >= 1 and lazy._ahead.taken == 1  # step one's layer only
    with pytest.raises(NotFound):
        engine.workers[0].snapshotter.stat(victim.key)
    assert staged_dirs(engine) == []
    no_leaks(engine)


def import_layers_on_worker(engine: Engine, store: Path) -> list[str]:
    snapshotter = engine.workers[0].snapshotter
    on_worker = []
    for record in LocalSource(str(store)).records:
        for layer in record.layers:
            with contextlib.suppress(NotFound):
                snapshotter.stat(layer.key)
                on_worker.append(layer.key)
    return sorted(set(on_worker))


def test_an_all_hit_rebuild_nothing_reads_moves_nothing_until_an_output_reads_it(
    engines: Callable[[str], Engine], tmp_path: Path
) -> None:
    first, engine, store = imported_into(engines, tmp_path, "again")
    solve(engine, tmp_path, "again", chain(), read_result=False)
    assert ran(engine, "again") == []
    cached = [e for _, e in decoded(engine) if isinstance(e, ev.VertexCached)]
    assert {e.name for e in cached} >= set(STEPS)
    # As BuildKit's lazy refs: no layer fetched, nothing unpacked or recorded for the import.
    assert import_layers_on_worker(engine, store) == []
    assert not [e for _, e in decoded(engine) if isinstance(e, ev.CacheRecordAdded | ev.SnapshotCreated)]
    assert staged_dirs(engine) == []
    no_leaks(engine)

    # The same build with its result read (an output): fetched, checked and unpacked now, every
    # record of the chain recorded, the bytes the first build wrote.
    solve(engine, tmp_path, "read", chain())
    assert ran(engine, "read") == []
    assert {n: file_in_layers(engine, n) for n in STEPS} == {n: file_in_layers(first, n) for n in STEPS}
    added = [e for _, e in decoded(engine) if isinstance(e, ev.CacheRecordAdded)]
    assert sorted(e.source for e in added if e.source.startswith("import:")) == ["import:local"] * (
        len(STEPS) + 1
    )
    assert staged_dirs(engine) == []
    no_leaks(engine)


def test_a_corrupt_blob_is_not_read_until_something_reads_it_then_its_steps_run(
    engines: Callable[[str], Engine], tmp_path: Path
) -> None:
    _, engine, store = imported_into(engines, tmp_path, "again")
    victim = corrupt_step_two(store)
    solve(engine, tmp_path, "unread", chain(), read_result=False)
    assert ran(engine, "unread") == []  # nothing read it: never fetched, never checked
    assert not [e for _, e in decoded(engine) if isinstance(e, ev.CacheImportMiss)]

    # Read: the top record's chain fails its check at step two's layer, so three and two run after
    # all (on step one's record, which is sound); never a hit on the corrupt blob.
    solve(engine, tmp_path, "read", chain())
    assert ran(engine, "read") == ["two", "three"]
    misses = [e for _, e in decoded(engine) if isinstance(e, ev.CacheImportMiss)]
    assert misses and all(victim.blob in e.error and "corrupt" in e.error for e in misses)
    with pytest.raises(NotFound):
        engine.workers[0].snapshotter.stat(victim.key)
    assert staged_dirs(engine) == []
    no_leaks(engine)

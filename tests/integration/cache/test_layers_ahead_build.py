"""A solve that asks for a cache export has its layers made as its steps commit (real runc, overlay).

The export then links those blobs (no layer is written at its end); a snapshot that changed since
its blob was made gets a new one; a solve without a cache export makes nothing in the background.
"""

from __future__ import annotations

import tarfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from buildsvc.cache.layer_store import LayerFormat
from buildsvc.cache.layers import LayerBlob
from buildsvc.cache.options import parse_export
from buildsvc.daemon import cache_exports
from buildsvc.daemon.cache_exports import export_caches, watch_cache_exports
from buildsvc.daemon.engine import Engine, open_engine
from buildsvc.daemon.state import open_state
from buildsvc.executors import make_busybox_rootfs
from buildsvc.executors.mounts import mounts_under, unmount
from buildsvc.solver import llb
from buildsvc.solver.engine import ResultRef, SolveRequest
from buildsvc.solver.worker import Change
from tests.integration.cache.test_cache_roundtrip import layout_config
from tests.support.releasable import check_engine_releasable

pytestmark = pytest.mark.root

AHEAD = "cache-layers-ahead"
SNAPSHOTS = 3  # the local source and two exec steps


@pytest.fixture
def engine(db_url: str, tmp_path: Path) -> Iterator[Engine]:
    state = open_state(tmp_path / "root", db_url)
    engine = open_engine(state)
    try:
        yield engine
        check_engine_releasable(engine)
    finally:
        engine.close()
        state.close()
        for point in sorted(mounts_under(str(tmp_path)), key=len, reverse=True):
            unmount(point)


@pytest.fixture
def writers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The thread that wrote each layer blob (the background one, or the export's)."""
    names: list[str] = []
    real = cache_exports._write

    def spy(root: Path | None, changes: list[Change], dest: Path, fmt: LayerFormat) -> LayerBlob:
        names.append(threading.current_thread().name)
        return real(root, changes, dest, fmt)

    monkeypatch.setattr(cache_exports, "_write", spy)
    return names


def wait_for(done: Callable[[], bool]) -> None:
    for _ in range(6000):  # a bound on the wait, not a timing
        if done():
            return
        threading.Event().wait(0.01)
    raise AssertionError("the layers made ahead never finished")


def build(
    engine: Engine,
    tmp_path: Path,
    ref: str,
    export: Mapping[str, str] | None,
    before_export: Callable[[ResultRef], None] = lambda result: None,
) -> None:
    rootfs = Path(make_busybox_rootfs(str(tmp_path / f"rootfs-{ref}")))
    state = llb.local("rootfs").run("head -c 5000 /dev/urandom > /r1", name="one").root()
    definition = state.run("head -c 5000 /dev/urandom > /r2", name="two").root().marshal()
    watch_cache_exports(engine)  # as a daemon does when it starts, an embedded build that exports

    def run_export(result: ResultRef | None) -> dict[str, str]:
        if export is None:
            return {}
        assert result is not None
        before_export(result)
        return export_caches(engine, result, ref, definition, [parse_export(export)], actor="test")

    request = SolveRequest(
        definition=definition,
        build_ref=ref,
        local_dirs={"rootfs": rootfs},
        cache_exports=(dict(export),) if export is not None else (),
    )
    engine.solver.solve(request, export=run_export)


def test_the_export_links_the_layers_made_while_the_build_ran(
    engine: Engine, tmp_path: Path, writers: list[str]
) -> None:
    dest = tmp_path / "cache"
    ahead = watch_cache_exports(engine)

    def all_made(result: ResultRef) -> None:
        # The last step's record is written just before the export: let its layer be made too.
        wait_for(lambda: len(writers) == SNAPSHOTS and not ahead._running)

    build(engine, tmp_path, "b1", {"type": "local", "dest": str(dest), "mode": "max"}, all_made)
    assert writers == [AHEAD] * SNAPSHOTS  # the export wrote no layer
    _, config = layout_config(dest)
    assert len(config.layers) == SNAPSHOTS
    made = {p.stat().st_ino for p in (engine.state.root / "cache" / "layers").glob("*.blob")}
    linked = {(dest / "blobs" / "sha256" / layer.blob.split(":")[1]).stat().st_ino for layer in config.layers}
    assert linked == made  # hard links to the blobs made ahead


def test_a_layer_whose_snapshot_changed_after_it_was_made_is_made_again(
    engine: Engine, tmp_path: Path, writers: list[str]
) -> None:
    dest = tmp_path / "cache"
    ahead = watch_cache_exports(engine)
    overlay = engine.workers[0].snapshotter
    upper_dir = getattr(overlay, "upper_dir", None)
    if upper_dir is None:
        pytest.skip("layers are made ahead on overlay only")

    def change_the_top(result: ResultRef) -> None:
        wait_for(lambda: len(writers) == SNAPSHOTS and not ahead._running)
        assert result.snapshot_id is not None
        (Path(upper_dir(result.snapshot_id)) / "added-later").write_bytes(b"x")

    spec = {"type": "local", "dest": str(dest), "mode": "max", "compression": "uncompressed"}
    build(engine, tmp_path, "b2", spec, change_the_top)
    assert writers.count(AHEAD) == SNAPSHOTS and len(writers) == SNAPSHOTS + 1
    _, config = layout_config(dest)
    names: set[str] = set()
    for layer in config.layers:
        with tarfile.open(dest / "blobs" / "sha256" / layer.blob.split(":")[1]) as tar:
            names.update(tar.getnames())
    assert "added-later" in names  # the export made the changed snapshot's layer again


def test_a_solve_without_a_cache_export_makes_no_layer(
    engine: Engine, tmp_path: Path, writers: list[str]
) -> None:
    ahead = watch_cache_exports(engine)
    build(engine, tmp_path, "b3", None)
    assert writers == [] and not ahead._queue and not ahead._running and not ahead._builds
    assert not list((engine.state.root / "cache" / "layers").glob("*.blob"))

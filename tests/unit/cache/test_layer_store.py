"""The layer store under ``<root>/cache/layers``: a blob is trusted only while its note still holds.

A blob made for one snapshot is not handed out for another under the same key (its identity
differs), nor after a restart of the machine (it was never fsynced), nor with a torn note; a maker
that fails leaves nothing behind, and two callers of one blob make it once.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from buildsvc.cache import layer_store
from buildsvc.cache.layer_store import LayerFormat, LayerStore
from buildsvc.cache.layers import LayerBlob, write_layer
from buildsvc.errors import Conflict
from buildsvc.solver.worker import Change, ChangeKind

FMT = LayerFormat("uncompressed", None, True)


class Maker:
    """Writes the layer of the files in ``root``; counts its calls."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls = 0

    def __call__(self, dest: Path) -> LayerBlob:
        self.calls += 1
        changes = [Change(kind=ChangeKind.ADDED, path=f"/{p.name}") for p in sorted(self.root.iterdir())]
        return write_layer(self.root, changes, dest, compression="uncompressed")


def tree(tmp_path: Path, content: bytes) -> Path:
    root = tmp_path / "tree"
    root.mkdir(exist_ok=True)
    (root / "f").write_bytes(content)
    return root


def test_a_blob_is_reused_for_the_same_snapshot_and_made_again_for_another(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "layers")
    make = Maker(tree(tmp_path, b"one"))
    first = store.get("snap-1", FMT, lambda: ("a", 1), make)
    assert store.get("snap-1", FMT, lambda: ("a", 1), make) == first
    assert make.calls == 1
    # The same key, another snapshot (removed and made again, or written to): not that blob.
    assert store.ready("snap-1", FMT, ("a", 2)) is None
    (make.root / "f").write_bytes(b"two")
    second = store.get("snap-1", FMT, lambda: ("a", 2), make)
    assert make.calls == 2 and second.digest != first.digest


def test_a_snapshot_that_changes_while_its_blob_is_made_gets_no_blob(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "layers")
    make = Maker(tree(tmp_path, b"one"))
    seen = iter([("a", 1), ("a", 2)])
    with pytest.raises(Conflict, match="changed while its layer was written"):
        store.get("snap-1", FMT, lambda: next(seen), make)
    assert sorted(p.name for p in store.dir.iterdir()) == []
    assert store.ready("snap-1", FMT, ("a", 1)) is None and store.ready("snap-1", FMT, ("a", 2)) is None


def test_a_maker_that_fails_leaves_no_blob_and_no_half_file(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "layers")

    def broken(dest: Path) -> LayerBlob:
        dest.write_bytes(b"half a tar")
        raise OSError("the disk went away")

    with pytest.raises(OSError, match="the disk went away"):
        store.get("snap-1", FMT, lambda: ("a",), broken)
    assert list(store.dir.iterdir()) == []


def test_a_note_from_another_boot_or_torn_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LayerStore(tmp_path / "layers")
    make = Maker(tree(tmp_path, b"one"))
    store.get("snap-1", FMT, lambda: ("a",), make)
    assert store.ready("snap-1", FMT, ("a",)) is not None
    # Not fsynced: after the machine restarts, the blob may be torn under a note that survived.
    monkeypatch.setattr(layer_store, "_BOOT_ID", "another boot")
    assert store.ready("snap-1", FMT, ("a",)) is None
    store.get("snap-1", FMT, lambda: ("a",), make)
    assert make.calls == 2
    note = store.dir / f"{FMT.name('snap-1')}.json"
    note.write_text(note.read_text()[:20])  # torn by a crash
    assert store.ready("snap-1", FMT, ("a",)) is None
    store.get("snap-1", FMT, lambda: ("a",), make)
    assert make.calls == 3 and json.loads(note.read_text())["boot"] == "another boot"


def test_a_blob_written_to_after_its_note_is_not_trusted(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "layers")
    blob = store.get("snap-1", FMT, lambda: ("a",), Maker(tree(tmp_path, b"one")))
    blob.path.write_bytes(blob.path.read_bytes())  # e.g. through a layout it is hard-linked into
    assert store.ready("snap-1", FMT, ("a",)) is None


def test_two_callers_of_one_blob_make_it_once(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "layers")
    inner = Maker(tree(tmp_path, b"one"))
    started, release = threading.Event(), threading.Event()

    def slow(dest: Path) -> LayerBlob:
        started.set()
        release.wait(30)
        return inner(dest)

    results: list[LayerBlob] = []
    first = threading.Thread(target=lambda: results.append(store.get("s", FMT, lambda: ("a",), slow)))
    first.start()
    started.wait(30)
    second = threading.Thread(target=lambda: results.append(store.get("s", FMT, lambda: ("a",), slow)))
    second.start()
    release.set()
    first.join(30)
    second.join(30)
    assert inner.calls == 1 and len(results) == 2 and results[0] == results[1]
    assert len(layer_store._makers) == 0  # no lock is kept per blob name once its makers are done

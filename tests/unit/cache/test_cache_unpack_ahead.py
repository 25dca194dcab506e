"""Layers unpacked ahead (buildsvc.daemon.cache_unpack_ahead), on real files: a staged layer holds what
the unpack at the hit would have made (whiteouts and an opaque root included) and moves into an upper
directory; a blob that fails its check, is compressed, or changes is not staged, and leaves nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildsvc.cache.imports import ImportLayer
from buildsvc.daemon.cache_unpack_ahead import UnpackAhead, move_staged
from buildsvc.sources import apply_layer
from buildsvc.sources.unpack import OVERLAY_OPAQUE_XATTR, WhiteoutMode

pytestmark = pytest.mark.root  # overlay whiteouts: a 0/0 device and a trusted.* xattr


def tar_of(entries: list[tuple[str, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def blob(tmp_path: Path, data: bytes, *, parent: str | None = "sha256:below") -> tuple[ImportLayer, Path]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = tmp_path / digest.split(":")[1]
    path.write_bytes(data)
    layer = ImportLayer(
        blob=digest, size=len(data), media_type="", diff_id=digest, key=f"key-{digest[7:19]}", parent=parent
    )
    return layer, path


@pytest.fixture
def ahead(tmp_path: Path) -> Iterator[UnpackAhead]:
    unpacker = UnpackAhead(tmp_path / "root")
    yield unpacker
    unpacker.close()
    assert not unpacker.dir.exists()


LAYER = [
    (".wh..wh..opq", b""),
    ("etc", None),
    ("etc/conf", b"x" * 5000),
    (".wh.gone", b""),
]


def test_a_staged_layer_moves_into_an_upper_dir_as_the_unpack_would_have_made_it(
    ahead: UnpackAhead, tmp_path: Path
) -> None:
    layer, path = blob(tmp_path, tar_of(LAYER))
    ahead.stage([layer], lambda _: path)
    staged = ahead.take(layer)
    assert staged is not None and ahead.taken == 1
    upper = tmp_path / "upper"
    upper.mkdir()
    move_staged(staged)(str(upper), WhiteoutMode.OVERLAY)
    assert not staged.exists()
    assert (upper / "etc" / "conf").read_bytes() == b"x" * 5000
    gone = os.lstat(upper / "gone")
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert os.getxattr(upper, OVERLAY_OPAQUE_XATTR) == b"y"
    assert ahead.take(layer) is None  # taken once


def test_a_bottom_layer_carries_its_whiteouts_out(ahead: UnpackAhead, tmp_path: Path) -> None:
    layer, path = blob(tmp_path, tar_of([("a", b"1"), (".wh.a", b""), ("b", b"2")]), parent=None)
    ahead.stage([layer], lambda _: path)
    staged = ahead.take(layer)
    assert staged is not None
    assert sorted(os.listdir(staged)) == ["b"]


@pytest.mark.parametrize("damage", ["corrupt", "compressed", "short"])
def test_a_blob_that_fails_is_not_staged_and_leaves_nothing(
    ahead: UnpackAhead, tmp_path: Path, damage: str
) -> None:
    data = tar_of(LAYER)
    layer, path = blob(tmp_path, data)
    if damage == "corrupt":
        broken = bytearray(data)
        broken[600] ^= 0xFF  # inside etc/conf's bytes: a readable tar, the wrong digest
        path.write_bytes(bytes(broken))
    elif damage == "compressed":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data[:-1024])
    ahead.stage([layer], lambda _: path)
    assert ahead.take(layer) is None
    assert ahead.failed == 1 and ahead.taken == 0
    assert list(ahead.dir.iterdir()) == []


def test_a_blob_changed_while_it_is_unpacked_is_not_staged(
    ahead: UnpackAhead, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer, path = blob(tmp_path, tar_of(LAYER))
    real = apply_layer

    def touching(*args: object, **kwargs: object) -> object:
        result = real(*args, **kwargs)  # type: ignore[arg-type]
        os.utime(path, ns=(1, 1))  # written to meanwhile: its mtime (and ctime) move
        return result

    monkeypatch.setattr("buildsvc.daemon.cache_unpack_ahead.apply_layer", touching)
    ahead.stage([layer], lambda _: path)
    assert ahead.take(layer) is None
    assert list(ahead.dir.iterdir()) == []


def test_dropped_and_unstageable_layers_leave_nothing(ahead: UnpackAhead, tmp_path: Path) -> None:
    layer, path = blob(tmp_path, tar_of(LAYER))
    other, _ = blob(tmp_path, tar_of([("f", b"2")]))
    ahead.stage([layer, other], lambda staged: path if staged is layer else None)
    assert ahead.staging(layer.key) and not ahead.staging(other.key)
    unpacking = ahead._staged[layer.key].future
    ahead.drop([layer.key])
    assert not ahead.staging(layer.key) and ahead.take(layer) is None
    assert unpacking.result(60).parent == ahead.dir
    for _ in range(6000):  # the removal runs right after the unpack ends: a bound, not a timing
        if not any(ahead.dir.iterdir()):
            break
        threading.Event().wait(0.01)
    assert list(ahead.dir.iterdir()) == []


def test_a_staged_layer_nobody_takes_is_removed_once_stale(
    ahead: UnpackAhead, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("buildsvc.daemon.cache_unpack_ahead.STALE_AFTER", 0.05)
    layer, path = blob(tmp_path, tar_of(LAYER))
    ahead.stage([layer], lambda _: path)  # and no hit ever takes it (the solve stopped hitting)
    for _ in range(6000):  # the sweep runs on its own: a bound on the wait, not a timing
        if not ahead.staging(layer.key) and not any(ahead.dir.iterdir()):
            break
        threading.Event().wait(0.01)
    assert not ahead.staging(layer.key)
    assert list(ahead.dir.iterdir()) == []

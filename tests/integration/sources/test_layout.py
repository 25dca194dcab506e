"""``oci-layout://`` sources: pulling from an OCI image layout directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from buildsvc.sources import DigestMismatch, ImageNotFound, ImageStore, InvalidImage, OciLayout
from tests.integration.sources.conftest import make_snapshotter
from tests.integration.sources.test_pull import assert_busybox_with_whiteouts, mounted
from tests.support.images import build_image, make_layer, write_layout

pytestmark = pytest.mark.root


def test_pull_from_layout_by_digest_and_by_tag(
    store: ImageStore, busybox_tars: list[bytes], tmp_path: Path
) -> None:
    image = build_image([make_layer(busybox_tars[0], "zstd"), make_layer(busybox_tars[1], "none")])
    layout_dir = tmp_path / "layout"
    write_layout(layout_dir, image, ref_name="v1")
    snapshotter = make_snapshotter("overlay", tmp_path / "overlay")

    by_digest = store.pull(f"oci-layout://{layout_dir}@{image.digest}", snapshotter)
    by_tag = store.pull(f"oci-layout://{layout_dir}:v1", snapshotter)

    assert by_digest.manifest_digest == by_tag.manifest_digest == image.digest
    assert by_tag.downloaded == ()
    assert by_digest.top_snapshot is not None
    with mounted(snapshotter, by_digest.top_snapshot) as root:
        assert_busybox_with_whiteouts(root)
    with pytest.raises(ImageNotFound):
        store.pull(f"oci-layout://{layout_dir}:v2", snapshotter)


def test_layout_written_has_the_standard_files(busybox_tars: list[bytes], tmp_path: Path) -> None:
    image = build_image([make_layer(busybox_tars[1], "gzip")])
    layout = write_layout(tmp_path / "layout", image, ref_name="latest")
    assert (tmp_path / "layout" / "oci-layout").read_text() == '{"imageLayoutVersion": "1.0.0"}'
    assert [d.digest for d in OciLayout(layout.path).index().manifests] == [image.digest]
    blobs = sorted(os.listdir(tmp_path / "layout" / "blobs" / "sha256"))
    assert len(blobs) == 3  # layer, config, manifest


def test_corrupt_layout_blob_is_refused(store: ImageStore, busybox_tars: list[bytes], tmp_path: Path) -> None:
    layer = make_layer(busybox_tars[1], "gzip")
    image = build_image([layer])
    layout_dir = tmp_path / "layout"
    write_layout(layout_dir, image)
    blob = layout_dir / "blobs" / "sha256" / layer.descriptor.digest.removeprefix("sha256:")
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    snapshotter = make_snapshotter("native", tmp_path / "native")

    with pytest.raises(DigestMismatch):
        store.pull(f"oci-layout://{layout_dir}@{image.digest}", snapshotter)
    assert snapshotter.list() == []


def test_not_a_layout_is_invalid(store: ImageStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidImage) as info:
        store.pull(f"oci-layout://{tmp_path}@sha256:{'a' * 64}", make_snapshotter("native", tmp_path / "n"))
    assert "not an OCI layout" in str(info.value)

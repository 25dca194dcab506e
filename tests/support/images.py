"""Test images built offline: a busybox root filesystem as OCI layers, pushed or laid out.

The busybox image has two layers so that the second exercises whiteouts against the first:

- layer 1: the busybox rootfs, ``/etc/motd`` ("base"), ``/doomed.txt``, ``/opq/old.txt`` and
  ``/opq/sub/deep.txt``;
- layer 2: ``.wh.doomed.txt`` (deletes it), ``opq/.wh..wh..opq`` (hides the old ``/opq``) with
  ``/opq/new.txt``, ``/etc/motd`` ("top"), and ``/hello.txt`` with a hard link ``/hello-link``.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import zstandard

from buildsvc.executors.rootfs import make_busybox_rootfs
from buildsvc.sources.layout import OciLayout
from buildsvc.sources.manifests import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    Index,
    Manifest,
    index_json,
    manifest_json,
    sha256_digest,
)
from buildsvc.sources.platforms import ImagePlatform
from buildsvc.sources.reference import Reference
from buildsvc.sources.registry import RegistryClient

AMD64 = ImagePlatform(os="linux", architecture="amd64")
ARM64 = ImagePlatform(os="linux", architecture="arm64", variant="v8")
MTIME = 1_700_000_000


@dataclass(frozen=True, kw_only=True)
class Layer:
    blob: bytes
    """The layer as stored (compressed or not)."""
    diff_id: str
    descriptor: Descriptor


@dataclass(frozen=True, kw_only=True)
class TestImage:
    __test__ = False

    manifest: Manifest
    manifest_bytes: bytes
    config_bytes: bytes
    layers: tuple[Layer, ...]
    platform: ImagePlatform

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest_bytes)

    def descriptor(self) -> Descriptor:
        return Descriptor(
            media_type=self.manifest.media_type,
            digest=self.digest,
            size=len(self.manifest_bytes),
            platform=self.platform,
        )


def tar_entries(entries: Sequence[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """An uncompressed tar of hand-made entries (file data given for regular files)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def entry(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    *,
    data: bytes | None = None,
    linkname: str = "",
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = MTIME
    info.linkname = linkname
    info.uid, info.gid = uid, gid
    return info, (data if kind == tarfile.REGTYPE else None)


def tar_tree(root: Path) -> bytes:
    """An uncompressed tar of the tree under ``root`` (names relative, no root entry)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for child in sorted(root.iterdir()):
            tar.add(str(child), arcname=child.name, recursive=True)
    return out.getvalue()


def busybox_layer_tars(workdir: Path) -> list[bytes]:
    """The two uncompressed layer tars of the busybox test image."""
    rootfs = Path(make_busybox_rootfs(str(workdir / "busybox-rootfs")))
    (rootfs / "etc" / "motd").write_text("base\n")
    (rootfs / "doomed.txt").write_text("delete me\n")
    (rootfs / "opq" / "sub").mkdir(parents=True)
    (rootfs / "opq" / "old.txt").write_text("old\n")
    (rootfs / "opq" / "sub" / "deep.txt").write_text("deep\n")
    first = tar_tree(rootfs)
    second = tar_entries(
        [
            entry(".wh.doomed.txt", data=b""),
            entry("etc", tarfile.DIRTYPE, mode=0o755),
            entry("etc/motd", data=b"top\n"),
            entry("hello.txt", data=b"hello from layer 2\n", mode=0o755, uid=1000, gid=1000),
            entry("hello-link", tarfile.LNKTYPE, linkname="hello.txt"),
            entry("opq", tarfile.DIRTYPE, mode=0o755),
            entry("opq/.wh..wh..opq", data=b""),
            entry("opq/new.txt", data=b"new\n"),
        ]
    )
    return [first, second]


def make_layer(tar: bytes, compression: str, *, docker: bool = False) -> Layer:
    """Compress ``tar`` (``gzip``, ``zstd`` or ``none``) and describe it."""
    if compression == "gzip":
        blob = gzip.compress(tar, mtime=0)
        media_type = DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP
    elif compression == "zstd":
        blob = zstandard.ZstdCompressor().compress(tar)
        media_type = OCI_LAYER_ZSTD
    else:
        blob, media_type = tar, OCI_LAYER
    return Layer(
        blob=blob,
        diff_id=sha256_digest(tar),
        descriptor=Descriptor(media_type=media_type, digest=sha256_digest(blob), size=len(blob)),
    )


def build_image(
    layers: Sequence[Layer],
    *,
    docker: bool = False,
    platform: ImagePlatform = AMD64,
    env: Sequence[str] = ("PATH=/bin:/usr/bin", "GREETING=hi"),
    cmd: Sequence[str] = ("/bin/sh",),
    working_dir: str = "/",
    user: str = "",
) -> TestImage:
    config = {
        "architecture": platform.architecture,
        "os": platform.os,
        **({"variant": platform.variant} if platform.variant else {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(MTIME)),
        "config": {"Env": list(env), "Cmd": list(cmd), "WorkingDir": working_dir, "User": user},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = Manifest(
        media_type=DOCKER_MANIFEST if docker else OCI_MANIFEST,
        config=Descriptor(
            media_type=DOCKER_CONFIG if docker else OCI_CONFIG,
            digest=sha256_digest(config_bytes),
            size=len(config_bytes),
        ),
        layers=tuple(layer.descriptor for layer in layers),
    )
    return TestImage(
        manifest=manifest,
        manifest_bytes=manifest_json(manifest),
        config_bytes=config_bytes,
        layers=tuple(layers),
        platform=platform,
    )


def push_image(client: RegistryClient, ref: Reference, image: TestImage, *, tag: str | None = None) -> str:
    """Push the blobs and manifest of ``image`` to ``ref``'s repository; returns the digest."""
    for layer in image.layers:
        client.push_blob_bytes(ref, layer.blob)
    client.push_blob_bytes(ref, image.config_bytes)
    return client.push_manifest(ref, image.manifest_bytes, image.manifest.media_type, tag=tag)


def make_index(images: Sequence[TestImage], *, docker: bool = False) -> bytes:
    return index_json(
        Index(
            media_type=DOCKER_MANIFEST_LIST if docker else OCI_INDEX,
            manifests=tuple(image.descriptor() for image in images),
        )
    )


def push_index(client: RegistryClient, ref: Reference, images: Sequence[TestImage], *, tag: str) -> str:
    """Push every image by digest, then an index of them under ``tag``; returns its digest."""
    for image in images:
        push_image(client, ref, image, tag=image.digest)
    data = make_index(images)
    return client.push_manifest(ref, data, OCI_INDEX, tag=tag)


def write_layout(path: Path, image: TestImage, *, ref_name: str | None = None) -> OciLayout:
    """Write ``image`` into the OCI layout at ``path`` (created if missing)."""
    layout = OciLayout(str(path), create=True)
    for layer in image.layers:
        layout.add_blob(layer.blob)
    layout.add_blob(image.config_bytes)
    layout.add_blob(image.manifest_bytes)
    layout.add_manifest(image.descriptor(), ref_name=ref_name)
    return layout

"""OCI and Docker schema2 manifests, indexes and image configs: media types and parsing.

Both families are read alike (Docker schema2 is the OCI format under other media types);
schema1 and anything else is refused with ``UnsupportedMediaType``. Parsing checks what the
pull relies on (digests, sizes, one diff id per layer) so a malformed document fails here, early,
with the reference named.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from buildsvc.sources.errors import InvalidImage, InvalidReference, NoMatchingPlatform, UnsupportedMediaType
from buildsvc.sources.platforms import ImagePlatform
from buildsvc.sources.reference import validate_digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
LAYER_TYPES = (
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    DOCKER_LAYER_GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
)
ACCEPT = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))
"""The ``Accept`` header for manifest requests: both families, images and indexes."""


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Descriptor:
    """Points at content by digest: what OCI calls a content descriptor."""

    media_type: str
    digest: str
    size: int
    platform: ImagePlatform | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The descriptor as it appears in a manifest or index."""
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform is not None:
            p: dict[str, str] = {"architecture": self.platform.architecture, "os": self.platform.os}
            if self.platform.variant:
                p["variant"] = self.platform.variant
            out["platform"] = p
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """An image manifest: one config and its layers, bottom first."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Index:
    """An image index (manifest list): one manifest per platform."""

    media_type: str
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageConfig:
    """What a build needs from an image config: how to run it and its layers' diff ids."""

    platform: ImagePlatform
    diff_ids: tuple[str, ...]
    """Digests of the uncompressed layers, bottom first (the basis of chain ids)."""
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)


def parse_manifest_or_index(ref: str, data: bytes, content_type: str | None) -> Manifest | Index:
    """Parse a manifest or index; its media type from the body, else ``content_type``."""
    doc = _load(ref, data, "manifest")
    media_type = doc.get("mediaType") or content_type or ""
    if not media_type:
        # OCI allows leaving mediaType out; tell the two apart by shape, as containerd does.
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    media_type = media_type.split(";")[0].strip()
    if media_type in INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise InvalidImage(ref, "index has no manifests list")
        return Index(media_type=media_type, manifests=tuple(_descriptor(ref, e) for e in entries))
    if media_type in MANIFEST_TYPES:
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise InvalidImage(ref, "manifest has no layers list")
        parsed = tuple(_descriptor(ref, e) for e in layers)
        for layer in parsed:
            if layer.media_type not in LAYER_TYPES:
                raise UnsupportedMediaType(ref, layer.media_type)
        return Manifest(media_type=media_type, config=_descriptor(ref, doc.get("config")), layers=parsed)
    raise UnsupportedMediaType(ref, media_type)


def select_manifest(ref: str, index: Index, wanted: ImagePlatform) -> Descriptor:
    """The first entry of ``index`` for ``wanted``; ``NoMatchingPlatform`` lists the others."""
    for entry in index.manifests:
        if entry.platform is not None and wanted.matches(entry.platform):
            return entry
    available = [str(e.platform) for e in index.manifests if e.platform is not None]
    raise NoMatchingPlatform(ref, str(wanted), available)


def parse_image_config(ref: str, data: bytes) -> ImageConfig:
    """Parse an image config blob (OCI or Docker)."""
    doc = _load(ref, data, "image config")
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise InvalidImage(ref, "image config has no rootfs.diff_ids")
    diff_ids = tuple(_digest(ref, d) for d in rootfs["diff_ids"])
    run = doc.get("config") or {}
    if not isinstance(run, dict):
        raise InvalidImage(ref, "image config 'config' is not an object")
    return ImageConfig(
        platform=ImagePlatform(
            os=str(doc.get("os", "")),
            architecture=str(doc.get("architecture", "")),
            variant=str(doc.get("variant", "")),
        ),
        diff_ids=diff_ids,
        env=_strings(ref, run, "Env"),
        working_dir=str(run.get("WorkingDir") or ""),
        user=str(run.get("User") or ""),
        entrypoint=_strings(ref, run, "Entrypoint"),
        cmd=_strings(ref, run, "Cmd"),
        labels={str(k): str(v) for k, v in (run.get("Labels") or {}).items()},
    )


def _load(ref: str, data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidImage(ref, f"{what} is not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise InvalidImage(ref, f"{what} is not a JSON object")
    if doc.get("schemaVersion", 2) != 2:
        raise UnsupportedMediaType(ref, f"schemaVersion {doc.get('schemaVersion')}")
    return doc


def _descriptor(ref: str, raw: object) -> Descriptor:
    if not isinstance(raw, dict):
        raise InvalidImage(ref, "descriptor is not an object")
    size = raw.get("size")
    if not isinstance(size, int) or size < 0:
        raise InvalidImage(ref, f"descriptor {raw.get('digest')} has no valid size")
    plat = raw.get("platform")
    platform = None
    if isinstance(plat, dict):
        platform = ImagePlatform(
            os=str(plat.get("os", "")),
            architecture=str(plat.get("architecture", "")),
            variant=str(plat.get("variant", "")),
        )
    annotations = raw.get("annotations") or {}
    return Descriptor(
        media_type=str(raw.get("mediaType", "")),
        digest=_digest(ref, raw.get("digest")),
        size=size,
        platform=platform,
        annotations={str(k): str(v) for k, v in annotations.items()},
    )


def _digest(ref: str, raw: object) -> str:
    if not isinstance(raw, str):
        raise InvalidImage(ref, f"missing or non-string digest {raw!r}")
    try:
        return validate_digest(raw, context=ref)
    except InvalidReference as e:
        raise InvalidImage(ref, e.reason) from e


def _strings(ref: str, run: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = run.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidImage(ref, f"image config {key} is not a list of strings")
    return tuple(value)


def manifest_json(manifest: Manifest) -> bytes:
    """Serialize ``manifest`` (for pushing or writing a layout)."""
    doc = {
        "schemaVersion": 2,
        "mediaType": manifest.media_type,
        "config": manifest.config.to_json(),
        "layers": [layer.to_json() for layer in manifest.layers],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def index_json(index: Index) -> bytes:
    """Serialize ``index``."""
    doc = {
        "schemaVersion": 2,
        "mediaType": index.media_type,
        "manifests": [m.to_json() for m in index.manifests],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def platforms_of(index: Index) -> Sequence[ImagePlatform]:
    """The platforms an index serves."""
    return [m.platform for m in index.manifests if m.platform is not None]


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolvedImage:
    """A reference resolved to one platform's image manifest."""

    name: str
    """The reference (or layout path) it was resolved from, for messages."""
    digest: str
    """The digest of the image manifest (not of the index it was picked from)."""
    manifest: Manifest
    manifest_bytes: bytes
    index_digest: str | None = None
    """The digest of the index the manifest was picked from, if any."""


MAX_INDEX_DEPTH = 4
"""Indexes may nest (an index pointing at an index); bound it so a cycle cannot loop forever."""


def resolve_from(
    name: str,
    root: tuple[bytes, str | None],
    fetch: Callable[[Descriptor], bytes],
    platform: ImagePlatform,
) -> ResolvedImage:
    """Resolve the manifest or index ``root`` (body, content type) down to ``platform``'s manifest.

    ``fetch(descriptor) -> bytes`` returns a child manifest's verified bytes.
    """
    data, content_type = root
    digest = sha256_digest(data)
    index_digest: str | None = None
    doc = parse_manifest_or_index(name, data, content_type)
    for _ in range(MAX_INDEX_DEPTH):
        if isinstance(doc, Manifest):
            return ResolvedImage(
                name=name, digest=digest, manifest=doc, manifest_bytes=data, index_digest=index_digest
            )
        entry = select_manifest(name, doc, platform)
        index_digest = index_digest or digest
        data = fetch(entry)
        digest = entry.digest
        doc = parse_manifest_or_index(name, data, entry.media_type)
    raise InvalidImage(name, f"indexes nested deeper than {MAX_INDEX_DEPTH}")

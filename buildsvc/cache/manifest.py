"""The root document of an exported cache: an index (BuildKit's default) or an image manifest.

Index form: ``manifests`` lists every layer blob (annotated with its diff id,
``containerd.io/uncompressed``) and the cache config (media type ``cacheconfig.v0``). Image-manifest
form (``image-manifest=true``, for registries that only take image manifests): the config is the
manifest's ``config`` and the blobs are its ``layers``. Either is read back by :func:`parse_root`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from buildsvc.cache.config import CACHE_CONFIG_MEDIA_TYPE, CacheConfigError, CacheLayer

__all__ = [
    "DOCKER_MANIFEST_LIST",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "BlobRef",
    "CacheRoot",
    "build_root",
    "parse_descriptor",
    "parse_root",
]

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
UNCOMPRESSED_ANNOTATION = "containerd.io/uncompressed"
CREATED_ANNOTATION = "buildkit/createdat"


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobRef:
    """A blob the root names."""

    digest: str
    size: int
    media_type: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheRoot:
    """What a root document says: the config blob and the layer blobs."""

    config: BlobRef
    layers: Mapping[str, BlobRef]


def build_root(
    config: bytes, config_digest: str, layers: Sequence[CacheLayer], *, oci: bool, image_manifest: bool
) -> tuple[bytes, str]:
    """The root document (bytes, media type) for a config and its layers."""
    seen: set[str] = set()
    blobs: list[dict[str, Any]] = []
    for layer in layers:
        if layer.blob in seen:
            continue
        seen.add(layer.blob)
        annotations = {UNCOMPRESSED_ANNOTATION: layer.annotations.diff_id}
        if layer.annotations.created_at:
            annotations[CREATED_ANNOTATION] = layer.annotations.created_at
        blobs.append(
            {
                "mediaType": layer.annotations.media_type,
                "digest": layer.blob,
                "size": layer.annotations.size,
                "annotations": annotations,
            }
        )
    config_desc = {"mediaType": CACHE_CONFIG_MEDIA_TYPE, "digest": config_digest, "size": len(config)}
    if image_manifest:
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_desc,
            "layers": blobs,
        }
        media_type = OCI_MANIFEST
    else:
        media_type = OCI_INDEX if oci else DOCKER_MANIFEST_LIST
        doc = {"schemaVersion": 2, "mediaType": media_type, "manifests": [*blobs, config_desc]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode(), media_type


def parse_root(data: bytes, where: str) -> CacheRoot:
    """Read a root document back (``CacheConfigError`` when it names no cache config)."""
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise CacheConfigError(where, f"cache manifest is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise CacheConfigError(where, "cache manifest is not a JSON object")
    if isinstance(doc.get("config"), dict):
        config = parse_descriptor(doc["config"], where)
        if config.media_type != CACHE_CONFIG_MEDIA_TYPE:
            raise CacheConfigError(where, f"manifest config is {config.media_type!r}, not a cache config")
        entries = doc.get("layers", [])
    else:
        entries = doc.get("manifests", [])
        if not isinstance(entries, list):
            raise CacheConfigError(where, "cache index has no manifests list")
        configs = [
            e for e in entries if isinstance(e, dict) and e.get("mediaType") == CACHE_CONFIG_MEDIA_TYPE
        ]
        if len(configs) != 1:
            raise CacheConfigError(where, f"cache index names {len(configs)} cache configs, not one")
        config = parse_descriptor(configs[0], where)
        entries = [e for e in entries if e is not configs[0]]
    if not isinstance(entries, list):
        raise CacheConfigError(where, "cache manifest layers are not a list")
    layers = {b.digest: b for b in (parse_descriptor(e, where) for e in entries)}
    return CacheRoot(config=config, layers=layers)


def parse_descriptor(raw: object, where: str) -> BlobRef:
    """One descriptor (digest, size, media type), checked."""
    if not isinstance(raw, dict):
        raise CacheConfigError(where, "a descriptor is not an object")
    digest, size = raw.get("digest"), raw.get("size", 0)
    if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
        raise CacheConfigError(where, f"descriptor digest is not sha256: {digest!r}")
    if not isinstance(size, int) or size < 0:
        raise CacheConfigError(where, f"descriptor size is not a size: {size!r}")
    return BlobRef(digest=digest, size=size, media_type=str(raw.get("mediaType", "")))

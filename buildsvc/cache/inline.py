"""``type=inline``: the cache travels in the image config of an image output, as BuildKit's does.

The image config gets the key ``moby.buildkit.cache.v0`` whose value is the JSON list of cache
records, base64-encoded (BuildKit's Go struct holds it as ``[]byte``). The records name no layer
list of their own: a result's ``layer`` is an index into the image's layers, each layer's parent
is the one below it, and the diff ids come from the config's ``rootfs.diff_ids``. Only the result's
own record is written (``mode=min``; BuildKit refuses ``mode=max`` for inline too): its layer chain
is the whole image.

Import (``--import-cache type=registry,ref=IMAGE``) reads the image manifest and its config and
rebuilds a :class:`CacheConfig` and :class:`CacheRoot` from them, so the ordinary import path
(verify, unpack, record) takes it from there.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from buildsvc.cache.config import (
    CACHE_CONFIG_MEDIA_TYPE,
    CacheConfig,
    CacheConfigError,
    parse_config,
    record_digest,
)
from buildsvc.cache.manifest import BlobRef, CacheRoot, parse_descriptor

__all__ = ["INLINE_CACHE_KEY", "InlineCache", "image_manifest_parts", "parse_inline"]

INLINE_CACHE_KEY = "moby.buildkit.cache.v0"


@dataclass(frozen=True, slots=True, kw_only=True)
class InlineCache:
    """The record an image output carries: the result's cache key, output and vertex."""

    key: str
    output: int = 0
    vertex: str = ""

    def value(self, layer_count: int) -> str:
        """The config value for an image of ``layer_count`` layers (the result is the top one)."""
        if layer_count < 1:
            raise ValueError("an image with inline cache needs at least one layer")
        record: dict[str, Any] = {
            "digest": record_digest(self.key, self.output),
            "layers": [{"layer": layer_count - 1}],
        }
        if self.vertex:
            record["buildsvc.vertex"] = self.vertex
        if self.output:
            record["buildsvc.key"] = self.key
            record["buildsvc.output"] = self.output
        text = json.dumps([record], sort_keys=True, separators=(",", ":"))
        return base64.b64encode(text.encode()).decode()


def image_manifest_parts(manifest: bytes, where: str) -> tuple[BlobRef, list[BlobRef]] | None:
    """An image manifest's config and layers; ``None`` when ``manifest`` is a cache root instead."""
    try:
        doc = json.loads(manifest)
    except ValueError as e:
        raise CacheConfigError(where, f"manifest is not JSON: {e}") from None
    config = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(config, dict) or config.get("mediaType") == CACHE_CONFIG_MEDIA_TYPE:
        return None
    layers = doc.get("layers", [])
    if not isinstance(layers, list):
        raise CacheConfigError(where, "image manifest layers are not a list")
    return parse_descriptor(config, where), [parse_descriptor(layer, where) for layer in layers]


def parse_inline(
    image_config: bytes, config_blob: BlobRef, layers: list[BlobRef], where: str
) -> tuple[CacheConfig, CacheRoot]:
    """The cache an image config carries, with the image's layers as its layers (checked)."""
    try:
        doc = json.loads(image_config)
    except ValueError as e:
        raise CacheConfigError(where, f"image config is not JSON: {e}") from None
    if not isinstance(doc, dict) or INLINE_CACHE_KEY not in doc:
        raise CacheConfigError(
            where,
            f"the image config has no inline cache ({INLINE_CACHE_KEY}); "
            "build it with --export-cache type=inline",
        )
    raw = doc[INLINE_CACHE_KEY]
    try:
        records = json.loads(base64.b64decode(raw, validate=True)) if isinstance(raw, str) else raw
    except (binascii.Error, ValueError) as e:
        raise CacheConfigError(where, f"{INLINE_CACHE_KEY} is not base64 JSON: {e}") from None
    rootfs = doc.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
        raise CacheConfigError(where, "the image config's rootfs.diff_ids do not match the manifest's layers")
    cache_doc = {
        "layers": [
            {
                "blob": layer.digest,
                "parent": n - 1,
                "annotations": {"mediaType": layer.media_type, "diffID": diff_id, "size": layer.size},
            }
            for n, (layer, diff_id) in enumerate(zip(layers, diff_ids, strict=True))
        ],
        "records": records,
    }
    config = parse_config(json.dumps(cache_doc).encode(), where)
    root = CacheRoot(config=config_blob, layers={layer.digest: layer for layer in layers})
    return config, root

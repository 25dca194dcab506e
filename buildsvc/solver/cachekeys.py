"""Cache keys: what a vertex's result depends on, so equal keys mean interchangeable results.

A key chains the vertex digest (the op and which outputs of which inputs it reads) with, for each
input, the key of the result it reads — or, where the op only reads *some files* of an input (the
source of a copy), a checksum of those files' content instead. Sources add what they resolve to:
the content checksum of a local context's selected files, the manifest digest of an image, the
checksum of a downloaded file. So editing a file that no step reads invalidates nothing, and an
image tag that moves invalidates everything built on it.

``key = "sha256:" + sha256(canonical JSON of {"v": 1, "digest", "inputs", "content"})``
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

__all__ = ["cache_key"]


def cache_key(digest: str, inputs: Sequence[str | None], content: str = "") -> str:
    """The cache key of a vertex with ``digest`` whose inputs resolve to ``inputs``.

    Each entry of ``inputs`` is the input's cache key or a content checksum (``None`` for scratch);
    ``content`` is what a source resolved to.
    """
    doc = {"v": 1, "digest": digest, "inputs": list(inputs), "content": content}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()

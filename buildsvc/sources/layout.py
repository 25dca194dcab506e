"""OCI image layout directories (``oci-layout``, ``index.json``, ``blobs/sha256/``): read and write.

Read for ``oci-layout://PATH[:TAG][@sha256:DIGEST]`` sources; written by the ``type=oci``
exporter and the local cache exporter. The blob directory is a ``ContentStore``, so blobs are
written only after their digest checks out, and reads of manifests are re-verified.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

from buildsvc.sources.content import ContentStore
from buildsvc.sources.errors import ImageNotFound, InvalidImage, InvalidReference
from buildsvc.sources.manifests import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    Descriptor,
    Index,
    ResolvedImage,
    index_json,
    parse_manifest_or_index,
    resolve_from,
)
from buildsvc.sources.platforms import ImagePlatform
from buildsvc.sources.reference import validate_digest

SCHEME = "oci-layout://"
LAYOUT_FILE = "oci-layout"
LAYOUT_VERSION = "1.0.0"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"


@dataclass(frozen=True, slots=True, kw_only=True)
class LayoutRef:
    """``oci-layout://PATH[:TAG][@DIGEST]``, split."""

    path: str
    tag: str | None = None
    """Matched against the ``org.opencontainers.image.ref.name`` annotation in ``index.json``."""
    digest: str | None = None
    """A manifest or index stored in the layout."""

    def __str__(self) -> str:
        """The source string."""
        return (
            SCHEME
            + self.path
            + (f":{self.tag}" if self.tag else "")
            + (f"@{self.digest}" if self.digest else "")
        )


def parse_layout_ref(source: str) -> LayoutRef:
    """Parse ``oci-layout://PATH[:TAG][@sha256:DIGEST]`` (the scheme is optional)."""
    rest = source.removeprefix(SCHEME)
    rest, at, digest = rest.partition("@")
    tag: str | None = None
    colon, slash = rest.rfind(":"), rest.rfind("/")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not tag:
            raise InvalidReference(source, "empty tag after ':'")
    if not rest:
        raise InvalidReference(source, "missing layout path")
    return LayoutRef(path=rest, tag=tag, digest=validate_digest(digest, context=source) if at else None)


class OciLayout:
    """One OCI image layout directory."""

    def __init__(self, path: str, *, create: bool = False) -> None:
        """Open the layout at ``path``; with ``create``, make an empty one if it is missing."""
        self.path = os.path.abspath(path)
        marker = os.path.join(self.path, LAYOUT_FILE)
        if create and not os.path.exists(marker):
            os.makedirs(self.path, exist_ok=True)
            _write_atomic(marker, json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())
            if not os.path.exists(os.path.join(self.path, "index.json")):
                self._write_index(Index(media_type=OCI_INDEX, manifests=()))
        try:
            with open(marker, "rb") as f:
                version = json.load(f).get("imageLayoutVersion")
        except (OSError, ValueError, AttributeError) as e:
            raise InvalidImage(self.path, f"not an OCI layout (no readable {LAYOUT_FILE}): {e}") from e
        if version != LAYOUT_VERSION:
            raise InvalidImage(self.path, f"unsupported imageLayoutVersion {version!r}")
        self.blobs = ContentStore(self.path)

    def index(self) -> Index:
        """The top-level ``index.json``."""
        try:
            with open(os.path.join(self.path, "index.json"), "rb") as f:
                data = f.read()
        except OSError as e:
            raise InvalidImage(self.path, f"cannot read index.json: {e}") from e
        doc = parse_manifest_or_index(self.path, data, OCI_INDEX)
        if not isinstance(doc, Index):
            raise InvalidImage(self.path, "index.json is not an image index")
        return doc

    def read_blob(self, digest: str) -> bytes:
        """A (small) blob, verified against its digest."""
        if not self.blobs.has(digest):
            raise ImageNotFound(self.path, f"blob {digest}")
        return self.blobs.read(digest)

    def resolve(self, ref: LayoutRef, platform: ImagePlatform) -> ResolvedImage:
        """Find the image ``ref`` names, down to ``platform``'s manifest."""
        index = self.index()
        name = str(ref)
        root: tuple[bytes, str | None]
        if ref.digest is not None:
            listed = {d.digest: d for d in index.manifests}
            media_type = listed[ref.digest].media_type if ref.digest in listed else None
            root = (self.read_blob(ref.digest), media_type)
        elif ref.tag is not None:
            tagged = [d for d in index.manifests if d.annotations.get(REF_NAME_ANNOTATION) == ref.tag]
            if not tagged:
                raise ImageNotFound(name, f"tag {ref.tag!r}")
            root = (self.read_blob(tagged[0].digest), tagged[0].media_type)
        elif len(index.manifests) == 1:
            only = index.manifests[0]
            root = (self.read_blob(only.digest), only.media_type)
        else:
            # Several images, no selector: treat index.json itself as the index to pick from.
            root = (index_json(index), OCI_INDEX)
        return resolve_from(name, root, lambda d: self.read_blob(d.digest), platform)

    # Writing

    def add_blob(self, data: bytes) -> str:
        """Store ``data``; return its digest."""
        return self.blobs.put(data)

    def add_blob_chunks(self, digest: str, chunks: Iterable[bytes], size: int | None = None) -> str:
        """Store a (large) blob from ``chunks``, verified against ``digest``."""
        if not self.blobs.has(digest):
            self.blobs.ingest(digest, chunks, size=size)
        return digest

    def add_manifest(self, descriptor: Descriptor, *, ref_name: str | None = None) -> None:
        """List a stored manifest or index in ``index.json`` (replacing one with the same
        ``ref_name``, or the same digest when unnamed).
        """
        if descriptor.media_type not in (*MANIFEST_TYPES, *INDEX_TYPES):
            raise InvalidImage(self.path, f"cannot list {descriptor.media_type!r} in index.json")
        if not self.blobs.has(descriptor.digest):
            raise ImageNotFound(self.path, f"blob {descriptor.digest}")
        annotations = dict(descriptor.annotations)
        if ref_name is not None:
            annotations[REF_NAME_ANNOTATION] = ref_name
        entry = Descriptor(
            media_type=descriptor.media_type,
            digest=descriptor.digest,
            size=descriptor.size,
            platform=descriptor.platform,
            annotations=annotations,
        )
        kept = [
            d
            for d in self.index().manifests
            if not (
                (ref_name is not None and d.annotations.get(REF_NAME_ANNOTATION) == ref_name)
                or (ref_name is None and d.digest == entry.digest)
            )
        ]
        self._write_index(Index(media_type=OCI_INDEX, manifests=(*kept, entry)))

    def _write_index(self, index: Index) -> None:
        _write_atomic(os.path.join(self.path, "index.json"), index_json(index))


def _write_atomic(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

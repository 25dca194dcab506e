"""Errors of image sources (references, registries, OCI layouts, layer unpacking).

The leaves this module adds to the tree in ``buildsvc.errors``::

    InvalidInput
    ├── InvalidReference          an image or layout reference that does not parse
    ├── NoMatchingPlatform        an index has no manifest for the wanted platform
    ├── UnsupportedMediaType      a manifest or layer of a kind we do not read (schema1, foreign)
    ├── InvalidImage              a manifest, index, config or layout that is malformed
    └── UnsafeLayer               a layer tar entry that would write outside its snapshot
    NotFound
    └── ImageNotFound             the registry or layout has no such manifest or blob
    ExecutionError
    ├── RegistryError             the registry failed or could not be reached (after retries)
    │   └── AuthenticationFailed  the registry refused our (or no) credentials
    └── DigestMismatch            downloaded or stored content is not what its digest says
"""

from __future__ import annotations

from collections.abc import Sequence

from buildsvc.errors import ExecutionError, InvalidInput, NotFound


class InvalidReference(InvalidInput):
    """An image reference (``busybox``, ``host:5000/a/b:tag@sha256:...``) is malformed."""

    def __init__(self, ref: str, reason: str) -> None:
        super().__init__(f"invalid image reference {ref!r}: {reason}")
        self.ref = ref
        self.reason = reason


class NoMatchingPlatform(InvalidInput):
    """An image index lists no manifest for the requested platform."""

    def __init__(self, ref: str, wanted: str, available: Sequence[str]) -> None:
        listed = ", ".join(available) if available else "none"
        super().__init__(f"image {ref}: no manifest for platform {wanted} (available: {listed})")
        self.ref = ref
        self.wanted = wanted
        self.available = tuple(available)


class UnsupportedMediaType(InvalidInput):
    """A manifest or layer has a media type this client does not handle."""

    def __init__(self, ref: str, media_type: str) -> None:
        super().__init__(f"image {ref}: unsupported media type {media_type!r}")
        self.ref = ref
        self.media_type = media_type


class InvalidImage(InvalidInput):
    """A manifest, index, image config or OCI layout is malformed."""

    def __init__(self, ref: str, reason: str) -> None:
        super().__init__(f"image {ref}: {reason}")
        self.ref = ref
        self.reason = reason


class UnsafeLayer(InvalidInput):
    """A layer entry would write outside the snapshot (``..``, absolute path, through a symlink)."""

    def __init__(self, layer: str, member: str, reason: str) -> None:
        super().__init__(f"layer {layer}: refusing entry {member!r}: {reason}")
        self.layer = layer
        self.member = member
        self.reason = reason


class ImageNotFound(NotFound):
    """The registry or layout has no manifest (or blob) under that name."""

    def __init__(self, ref: str, what: str) -> None:
        super().__init__(f"image {ref}: {what} not found")
        self.ref = ref
        self.what = what


class RegistryError(ExecutionError):
    """The registry answered with an error, or could not be reached within the retry bound."""

    def __init__(self, url: str, status: int | None, message: str) -> None:
        code = f"HTTP {status}" if status is not None else "no answer"
        super().__init__(f"registry request {url} failed ({code}): {message}")
        self.url = url
        self.status = status
        self.message = message


class AuthenticationFailed(RegistryError):
    """The registry (or its token service) refused the credentials, or anonymous access."""


class DigestMismatch(ExecutionError):
    """Content does not hash to the digest that names it; it is discarded, never used."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: digest mismatch (expected {expected}, got {actual})")
        self.what = what
        self.expected = expected
        self.actual = actual

"""What sending one directory to a context store amounted to (both sides report it)."""

from __future__ import annotations

from dataclasses import dataclass

from buildsvc.contexts.manifest import Manifest

__all__ = ["ContextTransfer"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ContextTransfer:
    """What one sent directory amounted to, and how much of it had to travel."""

    manifest_digest: str
    files: int
    bytes_total: int
    files_uploaded: int = 0
    """Distinct file contents that were sent (two files with the same bytes travel once)."""
    bytes_uploaded: int = 0
    files_reused: int = 0
    """Files whose bytes the store already had."""

    @classmethod
    def of(cls, manifest: Manifest, uploaded: set[str]) -> ContextTransfer:
        """The figures for ``manifest`` when the blobs ``uploaded`` had to be sent."""
        blobs = manifest.blobs()
        return cls(
            manifest_digest=manifest.digest,
            files=len(manifest.files),
            bytes_total=manifest.total_bytes,
            files_uploaded=sum(1 for d in blobs if d in uploaded),
            bytes_uploaded=sum(e.size for d, e in blobs.items() if d in uploaded),
            files_reused=sum(1 for e in manifest.files if e.digest not in uploaded),
        )

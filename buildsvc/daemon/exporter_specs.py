"""The exporter specs a build names (``--output type=...``), checked before anything runs.

Apart from :mod:`buildsvc.daemon.exporters` (image layers, registry pushes) so that a client checks
its ``--output`` options without importing those.
"""

from __future__ import annotations

from collections.abc import Mapping

from buildsvc.daemon.outputs import is_client_output
from buildsvc.errors import InvalidInput

__all__ = ["EXPORTER_TYPES", "check_exporter", "is_true"]

EXPORTER_TYPES = ("local", "tar", "oci", "image")
_TRUE = ("1", "true", "yes")


def check_exporter(attrs: Mapping[str, str]) -> None:
    """Refuse an exporter spec that cannot work (``InvalidInput`` saying what is wrong)."""
    kind = attrs.get("type", "")
    if kind not in EXPORTER_TYPES:
        raise InvalidInput(f"type must be one of {', '.join(EXPORTER_TYPES)}, got {kind!r}")
    if kind in ("local", "tar", "oci") and not attrs.get("dest") and not is_client_output(attrs):
        raise InvalidInput(f"type={kind}: dest= is required")
    if kind == "image" and is_client_output(attrs):
        raise InvalidInput("type=image pushes from the daemon: client-dest= is for local, tar and oci")
    name = attrs.get("name", "")
    if kind == "image":
        if not name:
            raise InvalidInput("type=image: name= is required")
        if not is_true(attrs.get("push", "")):
            raise InvalidInput("type=image: push=true is required (there is no local image store)")
    if name:
        # Here, not at the top: importing buildsvc.sources loads httpx, which a client checking
        # ``-o type=local`` does not need.
        from buildsvc.sources import parse_reference

        ref = parse_reference(name)  # InvalidReference is InvalidInput
        if kind == "image" and ref.tag is None and ref.digest is not None:
            raise InvalidInput(f"type=image: name= needs a tag to push to, got {name!r}")


def is_true(value: str) -> bool:
    """Whether an exporter attribute says yes (``true``, ``1``, ``yes``)."""
    return value.lower() in _TRUE

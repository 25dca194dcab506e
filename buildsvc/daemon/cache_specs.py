"""A solve's cache options, checked: what ``--export-cache``/``--import-cache`` and the frontend's
``cache-imports`` option ask for. Apart from :mod:`buildsvc.daemon.cache_exports` (which imports the
solver and SQLAlchemy) so that a client checks its options without paying for those.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from buildsvc.cache.options import CacheExportSpec, CacheImportSpec, parse_export, parse_import
from buildsvc.errors import InvalidInput

__all__ = [
    "CACHE_IMPORTS_OPTION",
    "IMAGE_OUTPUTS",
    "CacheOptions",
    "check_cache_options",
    "frontend_attrs_with_imports",
]

CACHE_IMPORTS_OPTION = "cache-imports"
"""The frontend option that carries the imports (JSON list of ``{"type", "attrs"}``), as BuildKit's."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheOptions:
    """A solve's checked cache exports and imports."""

    exports: tuple[CacheExportSpec, ...] = ()
    imports: tuple[CacheImportSpec, ...] = ()


def check_cache_options(
    exports: Sequence[Mapping[str, str]],
    imports: Sequence[Mapping[str, str]],
    frontend_attrs: Mapping[str, str] | None = None,
    *,
    absolute_paths: bool = False,
    outputs: Sequence[Mapping[str, str]] | None = None,
) -> CacheOptions:
    """Check the specs (``InvalidInput`` naming the bad one); imports a frontend option names are added.

    ``absolute_paths`` (the daemon): local dirs must be absolute, the daemon's cwd means nothing.
    ``outputs`` (when known): an inline export needs an image output to carry it.
    """
    attrs = dict(frontend_attrs or {})
    wanted = [dict(i) for i in imports] + _frontend_imports(attrs.get(CACHE_IMPORTS_OPTION, ""))
    checked_exports = tuple(parse_export(e) for e in exports)
    checked_imports = tuple(parse_import(i) for i in wanted)
    if absolute_paths:
        for e in checked_exports:
            if e.type == "local" and not os.path.isabs(e.dest):
                raise InvalidInput(f"export-cache type=local: dest= must be an absolute path, got {e.dest!r}")
        for i in checked_imports:
            if i.type == "local" and not os.path.isabs(i.src):
                raise InvalidInput(f"import-cache type=local: src= must be an absolute path, got {i.src!r}")
    inline = any(e.type == "inline" for e in checked_exports)
    if inline and outputs is not None and not any(o.get("type") in IMAGE_OUTPUTS for o in outputs):
        raise InvalidInput(
            "export-cache type=inline: the cache goes in an image's config, and this build has "
            "no image output (add --output type=image,... or type=oci,...)"
        )
    return CacheOptions(exports=checked_exports, imports=checked_imports)


IMAGE_OUTPUTS = ("image", "oci")
"""The outputs whose image config carries an inline cache."""


def frontend_attrs_with_imports(
    attrs: Mapping[str, str], imports: Sequence[CacheImportSpec]
) -> dict[str, str]:
    """The frontend options with ``cache-imports`` naming ``imports`` (how a frontend learns them)."""
    out = dict(attrs)
    if imports:
        out[CACHE_IMPORTS_OPTION] = json.dumps(
            [{"type": i.type, "attrs": {k: v for k, v in i.attrs.items() if k != "type"}} for i in imports],
            sort_keys=True,
        )
    return out


def _frontend_imports(text: str) -> list[dict[str, str]]:
    if not text:
        return []
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise InvalidInput(f"frontend option {CACHE_IMPORTS_OPTION} is not JSON: {e}") from None
    if not isinstance(doc, list):
        raise InvalidInput(f"frontend option {CACHE_IMPORTS_OPTION} must be a JSON list of {{type, attrs}}")
    out: list[dict[str, str]] = []
    for item in doc:
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise InvalidInput(f"frontend option {CACHE_IMPORTS_OPTION}: each entry needs a string type")
        attrs = item.get("attrs", {}) or {}
        if not isinstance(attrs, dict) or not all(isinstance(v, str) for v in attrs.values()):
            raise InvalidInput(f"frontend option {CACHE_IMPORTS_OPTION}: attrs must map strings to strings")
        out.append({**attrs, "type": item["type"]})
    return out

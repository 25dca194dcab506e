"""``--export-cache`` and ``--import-cache`` attributes, checked, and the deprecated forms.

Export: ``type=local,dest=DIR`` (``store=DIR`` is the original name), ``type=registry,ref=REF``,
``type=inline``; each with ``mode=min|max`` (min: only the result's own record; max: every step),
``ignore-error=true``, ``compression=gzip|zstd|uncompressed`` (``compression-level=N``),
``oci-mediatypes=true|false``, ``image-manifest=true|false``, ``registry.insecure=true``, ``tag=``.
Import: ``type=local,src=DIR`` (or ``store=DIR``) with ``tag=`` or ``digest=``, ``type=registry,ref=REF``.

Deprecated (BuildKit's buildctl took them before ``type=`` existed): a bare ``REF`` is
``type=registry,ref=REF``; ``--export-cache-opt K=V`` adds options to the one export. The functions
here return the translated attrs and a warning for the caller to show.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from buildsvc.attrs import parse_kv
from buildsvc.errors import InvalidInput

__all__ = [
    "EXPORT_TYPES",
    "IMPORT_TYPES",
    "CacheExportSpec",
    "CacheImportSpec",
    "is_true",
    "legacy_export",
    "legacy_import",
    "parse_export",
    "parse_import",
]

EXPORT_TYPES = ("local", "registry", "inline")
IMPORT_TYPES = ("local", "registry")
COMPRESSIONS = ("gzip", "zstd", "uncompressed")
_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no", "")


def is_true(value: str) -> bool:
    """Whether an attribute says yes."""
    return value.lower() in _TRUE


def _bool(attrs: Mapping[str, str], key: str, default: bool, what: str) -> bool:
    if key not in attrs:
        return default
    value = attrs[key].lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidInput(f"{what}: {key}= must be true or false, got {attrs[key]!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheExportSpec:
    """One cache export, checked."""

    type: str
    attrs: Mapping[str, str]
    """As given (recorded with the export's events)."""
    mode: str = "min"
    ignore_error: bool = False
    dest: str = ""
    """``local``: the layout directory."""
    ref: str = ""
    """``registry``: where to push (``HOST/REPO:TAG``)."""
    tag: str = "latest"
    compression: str = "gzip"
    compression_level: int | None = None
    oci_mediatypes: bool = True
    image_manifest: bool = False
    insecure: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheImportSpec:
    """One cache import, checked."""

    type: str
    attrs: Mapping[str, str]
    src: str = ""
    ref: str = ""
    tag: str = "latest"
    digest: str = ""
    insecure: bool = False
    ignore_error: bool = False


def parse_export(attrs: Mapping[str, str]) -> CacheExportSpec:
    """Check one export's attributes (``InvalidInput`` naming what is wrong)."""
    kind = attrs.get("type", "")
    what = f"export-cache type={kind}"
    if kind not in EXPORT_TYPES:
        raise InvalidInput(f"export-cache: type must be one of {', '.join(EXPORT_TYPES)}, got {kind!r}")
    mode = attrs.get("mode", "min")
    if mode not in ("min", "max"):
        raise InvalidInput(f"{what}: mode must be min or max, got {mode!r}")
    if kind == "inline" and mode == "max":
        raise InvalidInput(f"{what}: inline cache holds the result only, mode=max is not supported")
    compression = attrs.get("compression", "gzip")
    if compression not in COMPRESSIONS:
        raise InvalidInput(
            f"{what}: compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}"
        )
    level: int | None = None
    if attrs.get("compression-level"):
        try:
            level = int(attrs["compression-level"])
        except ValueError:
            raise InvalidInput(f"{what}: compression-level must be a number") from None
        top = 22 if compression == "zstd" else 9
        if not 0 <= level <= top:
            raise InvalidInput(f"{what}: compression-level must be 0..{top} for {compression}")
    oci = _bool(attrs, "oci-mediatypes", True, what)
    image_manifest = _bool(attrs, "image-manifest", False, what)
    if image_manifest and not oci:
        raise InvalidInput(f"{what}: image-manifest=true needs oci-mediatypes=true")
    if compression == "zstd" and not oci:
        raise InvalidInput(f"{what}: compression=zstd needs oci-mediatypes=true")
    dest = attrs.get("dest", "") or attrs.get("store", "")
    if kind == "local" and not dest:
        raise InvalidInput(f"{what}: dest= is required (or store=)")
    ref = attrs.get("ref", "")
    if kind == "registry" and not ref:
        raise InvalidInput(f"{what}: ref= is required")
    return CacheExportSpec(
        type=kind,
        attrs=dict(attrs),
        mode=mode,
        ignore_error=_bool(attrs, "ignore-error", False, what),
        dest=dest,
        ref=ref,
        tag=attrs.get("tag", "") or "latest",
        compression=compression,
        compression_level=level,
        oci_mediatypes=oci,
        image_manifest=image_manifest,
        insecure=_bool(attrs, "registry.insecure", False, what),
    )


def parse_import(attrs: Mapping[str, str]) -> CacheImportSpec:
    """Check one import's attributes (``InvalidInput`` naming what is wrong)."""
    kind = attrs.get("type", "")
    what = f"import-cache type={kind}"
    if kind not in IMPORT_TYPES:
        raise InvalidInput(f"import-cache: type must be one of {', '.join(IMPORT_TYPES)}, got {kind!r}")
    src = attrs.get("src", "") or attrs.get("store", "")
    if kind == "local" and not src:
        raise InvalidInput(f"{what}: src= is required (or store=)")
    ref = attrs.get("ref", "")
    if kind == "registry" and not ref:
        raise InvalidInput(f"{what}: ref= is required")
    digest = attrs.get("digest", "")
    if digest and not (digest.startswith("sha256:") and len(digest) == 71):
        raise InvalidInput(f"{what}: digest= must be sha256:<64 hex>, got {digest!r}")
    return CacheImportSpec(
        type=kind,
        attrs=dict(attrs),
        src=src,
        ref=ref,
        tag=attrs.get("tag", "") or "latest",
        digest=digest,
        insecure=_bool(attrs, "registry.insecure", False, what),
        ignore_error=_bool(attrs, "ignore-error", False, what),
    )


def legacy_export(specs: Sequence[str], opts: Sequence[str]) -> tuple[list[dict[str, str]], list[str]]:
    """``--export-cache`` values (new or deprecated) and ``--export-cache-opt`` pairs, as attrs.

    Returns the attrs of each export and the deprecation warnings to print.
    """
    warnings: list[str] = []
    exports: list[dict[str, str]] = []
    for text in specs:
        if "=" not in text:
            warnings.append(
                f"--export-cache {text} is deprecated: use --export-cache type=registry,ref={text}"
            )
            exports.append({"type": "registry", "ref": text})
        else:
            exports.append(parse_kv(text, "--export-cache"))
    if opts:
        warnings.append(
            "--export-cache-opt is deprecated: put the options in --export-cache type=...,KEY=VALUE"
        )
        if len(exports) != 1:
            raise InvalidInput("--export-cache-opt needs exactly one --export-cache to apply to")
        for text in opts:
            exports[0].update(parse_kv(text, "--export-cache-opt"))
    return exports, warnings


def legacy_import(specs: Sequence[str]) -> tuple[list[dict[str, str]], list[str]]:
    """``--import-cache`` values (new or deprecated) as attrs, and the deprecation warnings."""
    warnings: list[str] = []
    imports: list[dict[str, str]] = []
    for text in specs:
        if "=" not in text:
            warnings.append(
                f"--import-cache {text} is deprecated: use --import-cache type=registry,ref={text}"
            )
            imports.append({"type": "registry", "ref": text})
        else:
            imports.append(parse_kv(text, "--import-cache"))
    return imports, warnings

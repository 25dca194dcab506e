"""buildsvc.sources: image sources (registries and OCI layouts) unpacked into snapshots.

Public API; everything else in the package is private to it.
"""

from __future__ import annotations

from buildsvc.sources.content import ContentStore
from buildsvc.sources.errors import (
    AuthenticationFailed,
    DigestMismatch,
    ImageNotFound,
    InvalidImage,
    InvalidReference,
    NoMatchingPlatform,
    RegistryError,
    UnsafeLayer,
    UnsupportedMediaType,
)
from buildsvc.sources.images import ImageStore, PulledImage, chain_ids, pull_image
from buildsvc.sources.layout import LayoutRef, OciLayout, parse_layout_ref
from buildsvc.sources.manifests import Descriptor, ImageConfig, Index, Manifest, ResolvedImage
from buildsvc.sources.platforms import ImagePlatform, host_platform, parse_platform
from buildsvc.sources.reference import Reference, parse_reference
from buildsvc.sources.registry import Credentials, RegistryClient, RegistryOptions
from buildsvc.sources.unpack import UnpackResult, WhiteoutMode, apply_layer

__all__ = [
    "AuthenticationFailed",
    "ContentStore",
    "Credentials",
    "Descriptor",
    "DigestMismatch",
    "ImageConfig",
    "ImageNotFound",
    "ImagePlatform",
    "ImageStore",
    "Index",
    "InvalidImage",
    "InvalidReference",
    "LayoutRef",
    "Manifest",
    "NoMatchingPlatform",
    "OciLayout",
    "PulledImage",
    "Reference",
    "RegistryClient",
    "RegistryError",
    "RegistryOptions",
    "ResolvedImage",
    "UnpackResult",
    "UnsafeLayer",
    "UnsupportedMediaType",
    "WhiteoutMode",
    "apply_layer",
    "chain_ids",
    "host_platform",
    "parse_layout_ref",
    "parse_platform",
    "parse_reference",
    "pull_image",
]

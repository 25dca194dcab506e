"""OCI platforms (``os/arch[/variant]``): parsing, normalizing and matching, as containerd's.

An image index lists one manifest per platform; the host's platform (or a requested one) picks
which to pull. Architecture aliases are normalized (``x86_64`` -> ``amd64``, ``aarch64`` ->
``arm64``) so ``uname`` output and image metadata compare equal.
"""

from __future__ import annotations

import platform as _host
from dataclasses import dataclass

from buildsvc.sources.errors import InvalidReference

_ARCH_ALIASES = {
    "x86_64": "amd64",
    "x86-64": "amd64",
    "aarch64": "arm64",
    "armhf": "arm",
    "armel": "arm",
    "i386": "386",
    "i686": "386",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ImagePlatform:
    """The platform an image (or an index entry) is built for."""

    os: str
    architecture: str
    variant: str = ""
    """CPU variant (``v7`` for arm, ``v8`` for arm64); empty when unspecified."""

    def __str__(self) -> str:
        """``os/arch[/variant]``."""
        parts = [self.os, self.architecture] + ([self.variant] if self.variant else [])
        return "/".join(parts)

    def matches(self, other: ImagePlatform) -> bool:
        """Whether an index entry for ``other`` can serve a request for ``self``."""
        a, b = normalize_platform(self), normalize_platform(other)
        if (a.os, a.architecture) != (b.os, b.architecture):
            return False
        # An unspecified variant on either side matches any (arm64 is v8 unless said otherwise).
        return not a.variant or not b.variant or a.variant == b.variant


def normalize_platform(p: ImagePlatform) -> ImagePlatform:
    """Lowercase, resolve architecture aliases, and drop arm64's default ``v8`` variant."""
    arch = _ARCH_ALIASES.get(p.architecture.lower(), p.architecture.lower())
    variant = p.variant.lower()
    if arch == "arm64" and variant == "v8":
        variant = ""
    return ImagePlatform(os=p.os.lower(), architecture=arch, variant=variant)


def parse_platform(text: str) -> ImagePlatform:
    """Parse ``os/arch[/variant]`` (``linux/amd64``, ``linux/arm/v7``)."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidReference(text, "a platform is os/arch[/variant], e.g. linux/amd64")
    return normalize_platform(
        ImagePlatform(os=parts[0], architecture=parts[1], variant=parts[2] if len(parts) == 3 else "")
    )


def host_platform() -> ImagePlatform:
    """The platform of this machine (``linux/amd64`` on x86-64 Linux)."""
    return normalize_platform(ImagePlatform(os=_host.system().lower(), architecture=_host.machine()))

"""Image references, parsed and normalized as distribution's ``reference.ParseNormalizedNamed``.

``busybox`` -> ``docker.io/library/busybox:latest``; ``host:5000/a/b:tag``; ``name@sha256:...``
(a digest pins the content, so no ``latest`` tag is added). The grammar follows
distribution/reference's ``regexp.go``; every error names the reference it refuses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from buildsvc.sources.errors import InvalidReference

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = re.compile(rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN = re.compile(rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})(?::[0-9]+)?")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_SHA256_HEX = re.compile(r"[a-f0-9]{64}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Reference:
    """A normalized image reference: ``domain/path[:tag][@digest]``."""

    domain: str
    """The registry host (``docker.io`` for Docker Hub), with ``:port`` when given."""
    path: str
    """The repository inside the registry (``library/busybox``)."""
    tag: str | None = None
    """The tag; ``latest`` when neither tag nor digest was given."""
    digest: str | None = None
    """``algorithm:hex`` when the reference pins a manifest."""

    @property
    def name(self) -> str:
        """``domain/path``: the repository, without tag or digest."""
        return f"{self.domain}/{self.path}"

    @property
    def reference(self) -> str:
        """What to ask the registry's manifest endpoint for: the digest if pinned, else the tag."""
        if self.digest is not None:
            return self.digest
        assert self.tag is not None
        return self.tag

    def with_digest(self, digest: str) -> Reference:
        """The same repository and tag, pinned to ``digest``."""
        return Reference(domain=self.domain, path=self.path, tag=self.tag, digest=digest)

    def __str__(self) -> str:
        """The canonical form (``docker.io/library/busybox:latest``)."""
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_reference(ref: str) -> Reference:
    """Parse and normalize ``ref``; raise ``InvalidReference`` naming it when malformed."""
    if not ref:
        raise InvalidReference(ref, "empty reference")
    if ref != ref.strip():
        raise InvalidReference(ref, "leading or trailing whitespace")
    remainder, digest = _split_digest(ref)
    remainder, tag = _split_tag(ref, remainder)
    domain, path = _split_domain(ref, remainder)
    if len(f"{domain}/{path}") > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(ref, f"repository name longer than {NAME_TOTAL_LENGTH_MAX} characters")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(domain=domain, path=path, tag=tag, digest=digest)


def validate_digest(digest: str, *, context: str) -> str:
    """Return ``digest`` if it is ``algorithm:hex`` (sha256 checked strictly), else raise."""
    if not _DIGEST.fullmatch(digest):
        raise InvalidReference(context, f"invalid digest {digest!r}")
    algorithm, _, hex_part = digest.partition(":")
    if algorithm == "sha256" and not _SHA256_HEX.fullmatch(hex_part):
        raise InvalidReference(context, f"invalid sha256 digest {digest!r} (need 64 lowercase hex)")
    if algorithm != "sha256":
        # Content verification only knows sha256 (as every registry in practice serves).
        raise InvalidReference(context, f"unsupported digest algorithm {algorithm!r}")
    return digest


def _split_digest(ref: str) -> tuple[str, str | None]:
    name, at, digest = ref.partition("@")
    if not at:
        return ref, None
    if not name:
        raise InvalidReference(ref, "missing repository name before '@'")
    return name, validate_digest(digest, context=ref)


def _split_tag(ref: str, remainder: str) -> tuple[str, str | None]:
    # A ':' after the last '/' is a tag; one before it is a registry port.
    slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon <= slash:
        return remainder, None
    name, tag = remainder[:colon], remainder[colon + 1 :]
    if not _TAG.fullmatch(tag):
        raise InvalidReference(ref, f"invalid tag {tag!r}")
    return name, tag


def _split_domain(ref: str, name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    # As distribution: the first component is a registry host only if it looks like one.
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        domain, path = first, rest
        if not _DOMAIN.fullmatch(domain):
            raise InvalidReference(ref, f"invalid registry host {domain!r}")
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    if not path:
        raise InvalidReference(ref, "missing repository name")
    for component in path.split("/"):
        if component != component.lower() and _PATH_COMPONENT.fullmatch(component.lower()):
            raise InvalidReference(ref, "repository name must be lowercase")
        if not _PATH_COMPONENT.fullmatch(component):
            raise InvalidReference(ref, f"invalid repository path component {component!r}")
    return domain, path

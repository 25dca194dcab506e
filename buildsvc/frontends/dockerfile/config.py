"""Image metadata: what the frontend reads from base images and the config it produces.

The frontend does no network I/O: base image metadata comes through an :class:`ImageConfigResolver`
the caller passes (the daemon's is :class:`~buildsvc.frontends.dockerfile.resolver.RegistryImageResolver`,
tests use a fake). The result's image config is the OCI image config JSON of the target stage,
without ``history``. Its ``rootfs.diff_ids`` are the base image's layers (when the resolver tells
them): the exporter reuses those layers' blobs and packs only what the build changed above them.
"""

from __future__ import annotations

import copy
import platform as _host
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["ImageConfigLike", "ImageConfigResolver", "ImageSpec", "Platform", "host_platform"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Platform:
    """An OCI platform (``linux/amd64``, ``linux/arm/v7``)."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        """``os/arch[/variant]``."""
        return "/".join([self.os, self.architecture] + ([self.variant] if self.variant else []))


# The same aliases as buildsvc.sources.platforms; repeated because the frontend must not depend on
# the image store to know which platform the host is.
_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "i386": "386", "i686": "386"}


def normalize_platform(p: Platform) -> Platform:
    """Lowercase, resolve architecture aliases, drop arm64's default ``v8``."""
    arch = _ARCH_ALIASES.get(p.architecture.lower(), p.architecture.lower())
    variant = p.variant.lower()
    if arch == "arm64" and variant == "v8":
        variant = ""
    return Platform(os=p.os.lower(), architecture=arch, variant=variant)


def parse_platform(text: str) -> Platform:
    """Parse ``os/arch[/variant]``; ``ValueError`` names what is wrong."""
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"invalid platform {text!r}: expected os/arch[/variant], e.g. linux/amd64")
    return normalize_platform(Platform(os=parts[0], architecture=parts[1], variant="/".join(parts[2:])))


def host_platform() -> Platform:
    """The platform of this machine."""
    return normalize_platform(Platform(os=_host.system().lower(), architecture=_host.machine()))


class ImageConfigLike(Protocol):
    """What the frontend reads from a base image's config (``buildsvc.sources.ImageConfig`` is one)."""

    @property
    def env(self) -> Sequence[str]: ...
    @property
    def working_dir(self) -> str: ...
    @property
    def user(self) -> str: ...
    @property
    def entrypoint(self) -> Sequence[str]: ...
    @property
    def cmd(self) -> Sequence[str]: ...
    @property
    def labels(self) -> Mapping[str, str]: ...


class ImageConfigResolver(Protocol):
    """Looks up a base image: its manifest (or index) digest and its config."""

    def resolve(self, ref: str, platform: Platform) -> tuple[str, ImageConfigLike]:
        """``ref`` is fully qualified (``docker.io/library/busybox:latest``). Return the digest to pin
        it by (``sha256:...``) and its config. Raise a :class:`buildsvc.errors.BuildsvcError` (for
        example ``NotFound``) when the image cannot be resolved.
        """
        ...


@dataclass(slots=True, kw_only=True)
class ImageSpec:
    """The image config a stage builds up, instruction by instruction (mutable, cloned per stage)."""

    platform: Platform
    env: list[str] = field(default_factory=list)
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    working_dir: str = ""
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    exposed_ports: dict[str, None] = field(default_factory=dict)
    """Ordered set of ``port/proto``."""
    volumes: dict[str, None] = field(default_factory=dict)
    stop_signal: str = ""
    healthcheck: dict[str, Any] | None = None
    shell: list[str] | None = None
    onbuild: list[str] = field(default_factory=list)
    author: str = ""
    base_diff_ids: list[str] = field(default_factory=list)
    """The base image's layers (uncompressed digests, bottom first); empty for scratch."""

    @classmethod
    def from_base(cls, platform: Platform, base: ImageConfigLike | None) -> ImageSpec:
        """A stage's starting config: empty (scratch) or copied from its base image."""
        spec = cls(platform=platform)
        if base is not None:
            spec.env = list(base.env)
            spec.working_dir = base.working_dir
            spec.user = base.user
            spec.entrypoint = list(base.entrypoint) or None
            spec.cmd = list(base.cmd) or None
            spec.labels = dict(base.labels)
            # Not in the protocol: a resolver that cannot tell (a test's fake) gives no base layers,
            # and the exporter then packs the whole tree as one layer.
            spec.base_diff_ids = list(getattr(base, "diff_ids", ()))
        return spec

    def clone(self) -> ImageSpec:
        """A deep copy, for a stage built ``FROM`` another stage."""
        return copy.deepcopy(self)

    def set_env(self, key: str, value: str) -> None:
        """Set ``key`` in ``env``, replacing an earlier entry in place (Go's ``addEnv``)."""
        for i, entry in enumerate(self.env):
            if entry.partition("=")[0] == key:
                self.env[i] = f"{key}={value}"
                return
        self.env.append(f"{key}={value}")

    def to_json(self) -> dict[str, Any]:
        """The OCI image config (``architecture``, ``os``, ``config``), empty fields left out."""
        cfg: dict[str, Any] = {}
        if self.user:
            cfg["User"] = self.user
        if self.exposed_ports:
            cfg["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        if self.env:
            cfg["Env"] = list(self.env)
        if self.entrypoint is not None:
            cfg["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            cfg["Cmd"] = list(self.cmd)
        if self.volumes:
            cfg["Volumes"] = {v: {} for v in self.volumes}
        if self.working_dir:
            cfg["WorkingDir"] = self.working_dir
        if self.labels:
            cfg["Labels"] = dict(self.labels)
        if self.stop_signal:
            cfg["StopSignal"] = self.stop_signal
        if self.healthcheck is not None:
            cfg["Healthcheck"] = dict(self.healthcheck)
        if self.shell is not None:
            cfg["Shell"] = list(self.shell)
        if self.onbuild:
            cfg["OnBuild"] = list(self.onbuild)
        out: dict[str, Any] = {"architecture": self.platform.architecture, "os": self.platform.os}
        if self.author:
            out["author"] = self.author
        if self.platform.variant:
            out["variant"] = self.platform.variant
        out["config"] = cfg
        if self.base_diff_ids:
            out["rootfs"] = {"type": "layers", "diff_ids": list(self.base_diff_ids)}
        return out
